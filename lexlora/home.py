"""``LEXLORA_HOME`` (default ``~/.cache/lexlora``): converted base models, the adapter store,
replay pairs and teacher caches live under it."""

from __future__ import annotations

import os
from pathlib import Path


def lexlora_home() -> Path:
    return Path(os.environ.get("LEXLORA_HOME", "~/.cache/lexlora")).expanduser()
