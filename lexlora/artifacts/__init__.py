"""Typed artefacts: every file one stage writes and another stage reads, with its load and save.

Stages (``data``, ``train``, ``export``, ``eval``, ``serve``) hand each other these models, never
a dict read by string keys, and never import each other's internals to understand a file.

- :mod:`lexlora.artifacts.gate`: the no-regression verdict (``RUN_DIR/eval_gate.json``).
"""
