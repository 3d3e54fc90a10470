"""A built dataset's ``manifest.json`` as its readers check it: the build is whole and untouched.

``lexlora data`` records the sha256 of every file it writes (``files``); ``train`` and ``eval``
compare them with the files on disk before using any, so a mixed or edited dataset is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lexlora.data.split import SPLITS
from lexlora.errors import LexloraError
from lexlora.io import sha256_file

MANIFEST = "manifest.json"
REQUIRED_FILES = (*(f"{split}.jsonl" for split in SPLITS), "documents.jsonl")


def dataset_problem(folder: Path, data_hash: str | None = None) -> str | None:
    """What is wrong with the dataset in ``folder`` (missing, damaged, a file changed since the
    build, built from another data section when ``data_hash`` is given), or None if nothing."""
    try:
        manifest = _read(folder)
    except _Problem as problem:
        return str(problem)
    if data_hash is not None and manifest.get("data_hash") != data_hash:
        return f"{folder} was built from another data section"
    return None


def verify_dataset(folder: Path, recipe_name: str) -> dict[str, Any]:
    """The manifest of the complete, untouched dataset in ``folder``; otherwise a one-line
    LexloraError naming what differs and how to rebuild."""
    try:
        return _read(folder)
    except _Problem as problem:
        raise LexloraError(f"{problem}; rebuild it with `lexlora data {recipe_name}`") from None


class _Problem(Exception):
    """Internal: why a dataset folder cannot be used."""


def _read(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise _Problem(f"{folder}: no dataset (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _Problem(f"{path}: unreadable ({type(exc).__name__})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not set(REQUIRED_FILES) <= set(files):
        raise _Problem(f"{path}: no file hashes (written by an older lexlora, or damaged)")
    for name, digest in sorted(files.items()):
        file = folder / str(name)
        if Path(str(name)).name != name or not file.is_file():
            raise _Problem(f"{file}: missing (listed in {MANIFEST})")
        if sha256_file(file) != digest:
            raise _Problem(f"{file}: does not match its sha256 in {MANIFEST} (changed since)")
    return manifest
