"""Reading the YAML files lexlora takes from users (recipes, taxonomies, evaluation specs, corpus
manifests, serve configs): one reader, so every such file fails the same way, on one line that
names the file (and the line, for a syntax error) instead of a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lexlora.errors import LexloraError


def read_yaml(path: Path, what: str = "file") -> Any:
    """The parsed content of ``path``; an unreadable file, one that is not UTF-8 text, or invalid
    YAML is a one-line :class:`LexloraError` (``what`` names the kind of file in it)."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise LexloraError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            f"save the {what} as UTF-8"
        ) from None
    except OSError as exc:
        raise LexloraError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LexloraError(f"{path}{where}: invalid YAML ({problem})") from None
