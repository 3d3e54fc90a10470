"""What every pair builder receives: a document view with cached segmentation, and the context."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict

from lexlora.config_errors import validated
from lexlora.corpora.document import Document
from lexlora.data.clause_detect import Detection, detect
from lexlora.data.clean import flatten
from lexlora.data.segment import (
    Definition,
    Section,
    find_definitions,
    segment_sections,
    split_clauses,
)
from lexlora.recipe import BuilderConfig
from lexlora.taxonomy import Category


@dataclass
class DocumentView:
    """A cleaned, scrubbed document with its segmentation (and clause detections) computed once,
    on first use. ``split`` is the split the document was assigned to."""

    doc: Document
    split: str | None = None
    _detections: dict[tuple[str, str], Detection] = field(default_factory=dict, repr=False)

    @property
    def text(self) -> str:
        return self.doc.text

    @cached_property
    def sections(self) -> list[Section]:
        return segment_sections(self.doc.text)

    @cached_property
    def definitions(self) -> list[Definition]:
        return find_definitions(self.doc.text)

    @cached_property
    def clauses(self) -> list[tuple[int, int]]:
        return split_clauses(self.doc.text)

    def detection(self, taxonomy: str, category: Category) -> Detection:
        """The detector's label for ``category`` of ``taxonomy``, computed once per document."""
        key = (taxonomy, category.id)
        if key not in self._detections:
            self._detections[key] = detect(self.text, self.clauses, category)
        return self._detections[key]

    def excerpt(self, max_chars: int, start: int = 0) -> tuple[str, tuple[int, int]]:
        """Whole clauses from ``start`` up to ``max_chars`` (flattened), and their span."""
        return clause_excerpt(self.doc.text, split_clauses(self.doc.text, start), max_chars)


@dataclass
class BuildContext:
    """Corpus-wide facts a builder may need, and seeded randomness per document and builder."""

    system_prompt: str
    seed: int
    label_values: dict[str, list[str]] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # per-run builder state, by builder name

    def rng(self, doc_id: str, builder: str) -> random.Random:
        return random.Random(f"{self.seed}:{builder}:{doc_id}")


def clause_excerpt(
    text: str, clauses: Sequence[tuple[int, int]], max_chars: int
) -> tuple[str, tuple[int, int]]:
    """Join whole clauses while the flattened result fits in ``max_chars``.

    The first clause is always kept (cut at a word boundary if it alone is too long), so the
    excerpt is never empty when ``clauses`` is not. Returns the text and its span in ``text``.
    """
    if not clauses:
        return "", (0, 0)
    start, end = clauses[0]
    parts = [flatten(text[start:end])]
    if len(parts[0]) > max_chars:
        cut = parts[0][:max_chars].rsplit(" ", 1)[0]
        return cut, (start, start + _raw_length(text, start, len(cut)))
    for s, e in clauses[1:]:
        piece = flatten(text[s:e])
        if sum(len(p) + 1 for p in parts) + len(piece) > max_chars:
            break
        parts.append(piece)
        end = e
    return " ".join(parts), (start, end)


def _raw_length(text: str, start: int, flat_len: int) -> int:
    """Number of raw characters from ``start`` that flatten to ``flat_len`` characters."""
    seen, i, in_space = 0, start, False
    while i < len(text) and seen < flat_len:
        if text[i].isspace():
            if not in_space:
                seen += 1
            in_space = True
        else:
            seen += 1
            in_space = False
        i += 1
    return i - start


class BuilderOptions(BaseModel):
    """The base of every builder's ``options`` schema: an unknown option, or a value of another
    type, is a one-line error naming ``data.builders.NAME.options.KEY``."""

    model_config = ConfigDict(extra="forbid", strict=True)


def options(cfg: BuilderConfig, builder: str, schema: type[BuilderOptions]) -> dict[str, Any]:
    """The builder's ``options`` validated by its ``schema``, defaults filled in."""
    where = f"data.builders.{builder}.options"
    return validated(schema, cfg.options, where, noun="option").model_dump()


def run_options(
    cfg: BuilderConfig,
    ctx: BuildContext,
    builder: str,
    schema: type[BuilderOptions],
    prepare: Callable[[dict[str, Any], str], None],
) -> dict[str, Any]:
    """The builder's options for this run: validated by ``schema``, completed by
    ``prepare(opts, where)`` on first use (``where``: the recipe path for error messages), then
    kept in ``ctx.state`` so every later document reuses them."""
    cached = ctx.state.get(builder)
    if cached is not None:
        return cached
    opts = options(cfg, builder, schema)
    prepare(opts, f"data.builders.{builder}.options")
    ctx.state[builder] = opts
    return opts


def pick(rng: random.Random, items: Sequence[Any], k: int) -> list[Any]:
    """Up to ``k`` items, seeded, kept in document order."""
    if len(items) <= k:
        return list(items)
    chosen = sorted(rng.sample(range(len(items)), k))
    return [items[i] for i in chosen]
