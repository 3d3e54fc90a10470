"""lexlora: adapt open LLMs to a professional domain with LoRA.

Stages, one package each: ``corpora`` (documents) → ``data`` (instruction pairs) → ``train``
(adapters) → ``export`` (published adapters) → ``serve`` (OpenAI-compatible endpoint) → ``eval``.
"""

__version__ = "0.1.0"
