"""lexlora: adapt open LLMs to a professional domain with LoRA.

Stages, one package each: ``corpora`` (documents) → ``data`` (instruction pairs) → ``train``
(adapters) → ``export`` (published adapters) → ``serve`` (OpenAI-compatible endpoint) → ``eval``.
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes warns on import that an optional CPU kernel package is missing; it is not needed.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
