"""Typed artefacts: every file one stage writes and another stage reads, with its load and save.

Stages (``data``, ``train``, ``export``, ``eval``, ``serve``) hand each other these models, never
a dict read by string keys, and never import each other's internals to understand a file.

- :mod:`lexlora.artifacts.pairs`: a training row (``data/RECIPE/*.jsonl``), written by ``data``,
  read by ``train`` and ``eval``;
- :mod:`lexlora.artifacts.manifest`: the dataset's ``manifest.json`` and its integrity check;
- :mod:`lexlora.artifacts.adapter`: a PEFT adapter folder (method, validation, serving limits,
  base hash) and the LoRA maths of strength and composition;
- :mod:`lexlora.artifacts.gate`: the no-regression verdict (``RUN_DIR/eval_gate.json``);
- :mod:`lexlora.artifacts.metrics`: an evaluation's ``metrics.json``.
"""
