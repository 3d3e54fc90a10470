"""Evaluation on held-out documents: base vs adapter, strength sweep, report (``lexlora eval``)."""
