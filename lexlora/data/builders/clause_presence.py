"""``clause_presence``: does the document contain a clause of this kind? (CUAD-style yes/no)

For each category of the recipe's taxonomy (``options.taxonomy``: ``recipes/taxonomies/NAME.yaml``)
the detector labels the document (see :mod:`lexlora.data.clause_detect`):

- ``yes`` → "Yes. {title} says: "<the evidence clause, quoted>"", and the excerpt shown with the
  question contains that clause;
- ``no`` → "No. {title} has no clause that <absent>.", shown with an excerpt of the document;
- ``ambiguous`` → no pair; counted in the manifest.

The first word is always Yes or No and the pair carries ``choices: [Yes, No]``, so evaluation
scores it exactly by likelihood. Set ``balance: true`` on the builder to keep as many No as Yes
pairs per split and category. With ``options.gold`` (JSONL files of hand-checked labels) the
manifest reports the detector's precision and recall on the gold documents the run saw.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from lexlora.artifacts.pairs import Pair, make_pair
from lexlora.data.builders.base import (
    BuildContext,
    BuilderOptions,
    DocumentView,
    clause_excerpt,
    options,
    pick,
)
from lexlora.data.clause_detect import Detection
from lexlora.data.clean import flatten
from lexlora.data.gold import GoldKey, load_gold, score_detector
from lexlora.recipe import BuilderConfig
from lexlora.taxonomy import Taxonomy, check_categories, load_taxonomy

NAME = "clause_presence"
TASK = "clause_presence"
CHOICES = ["Yes", "No"]


class PresenceOptions(BuilderOptions):
    taxonomy: str = Field(pattern=r"\S", description="recipes/taxonomies/NAME or a YAML path.")
    categories: list[str] | None = Field(None, description="A subset of the taxonomy's.")
    gold: list[str] | str = Field([], description="Gold label files (JSONL) to score against.")
    context_chars: int = Field(360, ge=40)
    quote_chars: int = Field(160, ge=40)


@dataclass
class PresenceRun:
    """The run's taxonomy, and what the detector said of every document and category."""

    taxonomy: Taxonomy
    opts: dict[str, Any]
    gold: dict[str, dict[GoldKey, str]]
    labels: dict[str, Counter[str]] = field(default_factory=dict)
    reasons: dict[str, Counter[str]] = field(default_factory=dict)
    seen: dict[GoldKey, str] = field(default_factory=dict)

    def record(self, doc_id: str, category: str, detection: Detection) -> None:
        self.labels.setdefault(category, Counter())[detection.label] += 1
        if detection.label != "yes":
            self.reasons.setdefault(category, Counter())[detection.reason] += 1
        if any((doc_id, category) in g for g in self.gold.values()):
            self.seen[(doc_id, category)] = detection.label

    def summary(self) -> dict[str, Any]:
        return {
            "taxonomy": self.taxonomy.name,
            "taxonomy_path": str(self.taxonomy.path),
            "detected": {
                cat: {
                    **{label: self.labels[cat].get(label, 0) for label in ("yes", "no")},
                    "ambiguous_dropped": self.labels[cat].get("ambiguous", 0),
                    "reasons": dict(sorted(self.reasons.get(cat, Counter()).items())),
                }
                for cat in sorted(self.labels)
            },
            "ambiguous_dropped": sum(c.get("ambiguous", 0) for c in self.labels.values()),
            "gold": {name: score_detector(g, self.seen) for name, g in self.gold.items()},
        }


def build(view: DocumentView, cfg: BuilderConfig, ctx: BuildContext) -> list[Pair]:
    run = _run_for(ctx, cfg)
    rng = ctx.rng(view.doc.id, NAME)
    title = view.doc.title
    pairs = []
    for category in run.taxonomy.categories:
        if run.opts["categories"] and category.id not in run.opts["categories"]:
            continue
        detection = view.detection(run.taxonomy.name, category)
        run.record(view.doc.id, category.id, detection)
        if detection.label == "ambiguous":
            continue
        if detection.label == "yes":
            quote, context, span = _yes_context(view, detection, run.opts, rng)
            answer = f'Yes. {title} says: "{quote}"'
        else:
            start = view.clauses[rng.randrange(len(view.clauses))][0] if view.clauses else 0
            context, span = view.excerpt(run.opts["context_chars"], start)
            answer = f"No. {title} has no clause that {category.spec.absent}."
        if not context:
            continue
        question = (
            f'{category.question(title)}\n\nFrom {title}:\n"{context}"\n\nAnswer Yes or No first.'
        )
        pairs.append(
            make_pair(
                ctx.system_prompt,
                question,
                answer,
                doc_id=view.doc.id,
                builder=NAME,
                span=span,
                task=TASK,
                choices=CHOICES,
                label="Yes" if detection.label == "yes" else "No",
                category=category.id,
            )
        )
    return pick(rng, pairs, cfg.max_per_document)


def finish(ctx: BuildContext) -> dict[str, Any] | None:
    """The detector's counts and gold scores (for the manifest), or ``None`` when not run."""
    run: PresenceRun | None = ctx.state.pop(NAME, None)
    return None if run is None else run.summary()


def _yes_context(view: DocumentView, detection: Detection, opts: dict[str, Any], rng):
    """The quoted evidence (a window of its clause around the match) and an excerpt holding it:
    the evidence clause with up to two clauses before it and what follows, to ``context_chars``."""
    assert detection.evidence is not None and detection.match is not None
    c_start, c_end = detection.evidence
    quote = _window(view.text, (c_start, c_end), detection.match, opts["quote_chars"])
    k = next(i for i, c in enumerate(view.clauses) if c == detection.evidence)
    before = rng.randint(0, min(2, k))
    budget = opts["context_chars"]
    pieces = [quote]
    for s, e in reversed(view.clauses[k - before : k]):
        piece = flatten(view.text[s:e])
        if sum(len(p) + 1 for p in pieces) + len(piece) > budget:
            break
        pieces.insert(0, piece)
        c_start = s
    after, (_, end) = clause_excerpt(
        view.text, view.clauses[k + 1 :], budget - sum(len(p) + 1 for p in pieces)
    )
    if after and sum(len(p) + 1 for p in pieces) + len(after) <= budget:
        pieces.append(after)
        c_end = end
    return quote, " ".join(pieces), (c_start, c_end)


def _window(text: str, clause: tuple[int, int], match: tuple[int, int], max_chars: int) -> str:
    """The clause flattened, or a word-aligned window of ``max_chars`` around the match."""
    whole = flatten(text[clause[0] : clause[1]])
    if len(whole) <= max_chars:
        return whole
    mid = (match[0] + match[1]) // 2
    lo = max(clause[0], mid - max_chars // 2)
    hi = min(clause[1], lo + max_chars)
    lo = max(clause[0], hi - max_chars)
    piece = text[lo:hi]
    if lo > clause[0]:
        piece = "…" + piece.split(None, 1)[-1] if " " in piece.strip() else piece
    if hi < clause[1]:
        piece = piece.rsplit(None, 1)[0] + "…"
    return flatten(piece)


def _run_for(ctx: BuildContext, cfg: BuilderConfig) -> PresenceRun:
    run = ctx.state.get(NAME)
    if run is None:
        opts = options(cfg, NAME, PresenceOptions)
        where = f"data.builders.{NAME}.options"
        taxonomy = load_taxonomy(opts["taxonomy"])
        check_categories(taxonomy, opts["categories"], where)
        gold_files = [opts["gold"]] if isinstance(opts["gold"], str) else list(opts["gold"])
        gold = {}
        for text in gold_files:
            path, labels = load_gold(text)
            gold[path.name] = labels
        run = PresenceRun(taxonomy, opts, gold)
        ctx.state[NAME] = run
    return run
