"""A built dataset's ``manifest.json``: what ``lexlora data`` wrote, and the check its readers
(``train``, ``eval``) make before using any file: the build is whole and untouched.

``lexlora data`` records the sha256 of every file it writes (``files``); :meth:`DataManifest.load`
compares them with the files on disk, so a mixed or edited dataset is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from lexlora.errors import LexloraError
from lexlora.io import sha256_file, write_json

MANIFEST = "manifest.json"
SPLITS = ("train", "validation", "test")
REQUIRED_FILES = (*(f"{split}.jsonl" for split in SPLITS), "documents.jsonl")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CorpusInfo(_Model):
    name: str
    package: str | None = None
    version: str | None = None
    licence: str | None = None
    path: str | None = None  # a folder corpus
    sources_sha256: str


class DocumentCounts(_Model):
    read: int
    skipped: dict[str, int]  # reason → documents
    duplicates: dict[str, int]  # exact / near → documents
    kept: int
    warnings: list[str]
    duplicate_of: dict[str, str]  # dropped document → the one it duplicates


class ScrubSummary(_Model):
    enabled: bool
    replacements: dict[str, int]  # personal-data kind → replacements


class SplitSummary(_Model):
    seed: int
    stratify_by: str | None
    fractions: dict[str, float]
    documents: dict[str, int]  # split → documents
    by_stratum: dict[str, dict[str, int]]
    doc_ids: dict[str, list[str]]  # split → its documents' ids


class PairCounts(_Model):
    total: dict[str, int]  # split → pairs
    by_builder: dict[str, dict[str, int]]
    by_task: dict[str, dict[str, int]]
    dropped_to_balance: dict[str, int]  # split → pairs balancing dropped


class LeakageSummary(_Model):
    ngram: int
    scored: int
    too_short: int
    mean_overlap: float
    p90_overlap: float
    fully_contained: int
    max_overlap: float
    passed: bool


class TeacherSummary(_Model):
    base_url: str
    model: str
    prompt: str
    prompt_version: int
    chunks: int
    requests: int
    cache_hits: int
    tokens: int
    retried: int
    budget_exhausted: bool
    accepted: int
    rejected: dict[str, int]  # reason → pairs


class PresenceSummary(_Model):
    """The clause-presence detector: what it found per category, and its scores on gold labels."""

    taxonomy: str
    taxonomy_path: str
    detected: dict[str, dict[str, Any]]  # category → yes/no/ambiguous counts and reasons
    ambiguous_dropped: int
    gold: dict[str, dict[str, Any]]  # gold file → precision, recall, … (data.gold)


class DataManifest(_Model):
    recipe: str
    recipe_hash: str
    data_hash: str
    lexlora_version: str
    corpus: CorpusInfo
    documents: DocumentCounts
    scrub: ScrubSummary
    split: SplitSummary
    pairs: PairCounts
    leakage: LeakageSummary
    teacher: TeacherSummary | None = None
    clause_presence: PresenceSummary | None = None
    files: dict[str, str] = {}  # file name → sha256 of what the build wrote

    def training_documents(self) -> set[str]:
        return set(self.split.doc_ids["train"])

    def save(self, folder: Path) -> None:
        write_json(folder / MANIFEST, self.model_dump())

    @classmethod
    def read(cls, folder: Path) -> DataManifest:
        """The manifest in ``folder``, parsed but not checked against the files (see
        :meth:`load`); a one-line LexloraError when it is missing or not a manifest."""
        try:
            return _parse(folder)
        except _Problem as problem:
            raise LexloraError(str(problem)) from None

    @classmethod
    def load(cls, folder: Path, recipe_name: str) -> DataManifest:
        """The manifest of the complete, untouched dataset in ``folder``; otherwise a one-line
        LexloraError naming what differs and how to rebuild."""
        try:
            return _read(folder)
        except _Problem as problem:
            raise LexloraError(f"{problem}; rebuild it with `lexlora data {recipe_name}`") from None


def dataset_problem(folder: Path, data_hash: str | None = None) -> str | None:
    """What is wrong with the dataset in ``folder`` (missing, damaged, a file changed since the
    build, built from another data section when ``data_hash`` is given), or None if nothing."""
    try:
        manifest = _read(folder)
    except _Problem as problem:
        return str(problem)
    if data_hash is not None and manifest.data_hash != data_hash:
        return f"{folder} was built from another data section"
    return None


class _Problem(Exception):
    """Internal: why a dataset folder cannot be used."""


def _parse(folder: Path) -> DataManifest:
    path = folder / MANIFEST
    if not path.is_file():
        raise _Problem(f"{folder}: no dataset (no {MANIFEST})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _Problem(f"{path}: unreadable ({type(exc).__name__})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not set(REQUIRED_FILES) <= set(files):
        raise _Problem(f"{path}: no file hashes (written by an older lexlora, or damaged)")
    try:
        return DataManifest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise _Problem(f"{path}: {where}: {error['msg']} (written by an older lexlora?)") from None


def _read(folder: Path) -> DataManifest:
    manifest = _parse(folder)
    for name, digest in sorted(manifest.files.items()):
        file = folder / str(name)
        if Path(str(name)).name != name or not file.is_file():
            raise _Problem(f"{file}: missing (listed in {MANIFEST})")
        if sha256_file(file) != digest:
            raise _Problem(f"{file}: does not match its sha256 in {MANIFEST} (changed since)")
    return manifest
