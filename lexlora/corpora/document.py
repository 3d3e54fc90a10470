"""The record every corpus produces and every dataset builder consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field


class Document(BaseModel):
    """One domain document, normalised.

    ``id`` is stable across runs (derived from the source, not from order); ``metadata`` holds the
    source's own labels (licence category, SPDX key, ICD chapter, ...), used for stratified splits
    and for builders that ask about them.
    """

    id: str
    title: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    source: str
    licence: str


@dataclass
class CorpusReadReport:
    """What reading a corpus produced: documents read, files skipped (reason → count), warnings."""

    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # "<file>: skipped (<reason>)"

    def skip(self, rel: str, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.warnings.append(f"{rel}: skipped ({reason})")

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())
