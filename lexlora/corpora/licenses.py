"""The ``licenses`` corpus: licence texts of the ``licensedcode-data`` package (ScanCode
LicenseDB)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import yaml

from lexlora.corpora.document import Document
from lexlora.errors import LexloraError

SOURCE = "licensedcode-data 32.1.0 (ScanCode LicenseDB)"
LICENCE = "CC-BY-4.0"
METADATA_FIELDS = ("key", "short_name", "category", "owner", "spdx_license_key", "notes")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def find_licenses_dir() -> Path:
    """The folder of ``*.LICENSE`` files inside the installed ``licensedcode-data`` package."""
    spec = importlib.util.find_spec("licensedcode")
    if spec is None or not spec.submodule_search_locations:
        raise LexloraError(
            "corpus 'licenses' is not installed; run `lexlora corpora fetch licenses`"
        )
    for location in spec.submodule_search_locations:
        folder = Path(location) / "data" / "licenses"
        if folder.is_dir():
            return folder
    raise LexloraError("package licensedcode has no data/licenses folder; reinstall it")


def parse_license_file(path: Path) -> Document:
    """One ``.LICENSE`` file → Document (text may be empty: the cleaning stage counts those)."""
    raw = path.read_text(encoding="utf-8")
    header, text = _split_front_matter(raw)
    meta = yaml.load(header, Loader=_Loader) or {}
    text = text.strip("\n")
    key = str(meta.get("key", path.stem))
    metadata = {field: meta[field] for field in METADATA_FIELDS if meta.get(field) is not None}
    metadata["category"] = str(meta.get("category", "Unstated License"))
    for flag in ("is_exception", "is_deprecated", "is_generic", "is_unknown"):
        metadata[flag] = bool(meta.get(flag, False))
    return Document(
        id=f"licenses:{key}",
        title=str(meta.get("name") or meta.get("short_name") or key),
        text=text,
        metadata=metadata,
        source=SOURCE,
        licence=LICENCE,
    )


def read_license_documents(folder: Path | None = None) -> Iterator[Document]:
    """Yield one Document per licence file, sorted by file name."""
    folder = folder or find_licenses_dir()
    for path in sorted(folder.glob("*.LICENSE")):
        yield parse_license_file(path)


def _split_front_matter(raw: str) -> tuple[str, str]:
    if not raw.startswith("---"):
        return "", raw
    end = raw.find("\n---", 3)
    if end < 0:
        return "", raw
    after = raw.find("\n", end + 4)
    return raw[3:end], raw[after + 1 :] if after >= 0 else ""
