"""``reading``: reading-comprehension text — a passage of a training document, then tasks mined
from that passage and answered from it (AdaptLLM, Cheng et al., ICLR 2024).

Plain continued pretraining on raw domain text teaches the domain but wears away the ability to
follow prompts; the same text followed by questions about it keeps that ability. Each row is
plain text, trained on every token (a ``text`` row, not a chat pair: no chat template, no system
prompt)::

    {title}

    {passage: whole clauses, up to options.passage_chars}

    Question: How does this passage define "Licensed Work"?
    Answer: "Licensed Work" means ...

Training documents only (other splits get no rows: the rows quote whole passages). Passages are
consecutive runs of whole clauses; ``max_per_document`` passages per document are kept (seeded),
each with up to ``options.tasks_per_passage`` tasks of different kinds where it has them:

- ``definition``: a term the passage defines → its defining sentence;
- ``section``: a sentence of a section whose heading is in the passage → that heading;
- ``presence`` (with ``options.taxonomy``): does the passage contain a clause that <absent>? →
  "Yes" with the clause quoted, or "No" (the detector run on the passage alone; ambiguous skipped;
  one No candidate per passage, as most categories are absent from any passage);
- ``completion``: the first half of a sentence of the passage (8 to 60 words) → the sentence.

A passage with no task is skipped. The share of reading rows in the training split is set like
any builder's, with ``weight`` (and ``max_per_document``).
"""

from __future__ import annotations

import bisect
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from lexlora.artifacts.pairs import Pair, make_text_row
from lexlora.data.builders.base import (
    BuildContext,
    BuilderOptions,
    DocumentView,
    clause_excerpt,
    pick,
    run_options,
)
from lexlora.data.clause_detect import detect
from lexlora.data.clean import flatten
from lexlora.data.segment import split_clauses
from lexlora.recipe import BuilderConfig
from lexlora.taxonomy import Taxonomy, check_categories, load_taxonomy

NAME = "reading"
TASK = "reading"
MIN_PASSAGE_CHARS = 80
MIN_COMPLETION_WORDS = 8
MAX_COMPLETION_WORDS = 60
QUOTE_CHARS = 200
_PARAGRAPH = re.compile(r"\n\s*\n")


class ReadingOptions(BuilderOptions):
    passage_chars: int = Field(700, ge=100, le=100_000)
    tasks_per_passage: int = Field(3, ge=1, le=50)
    taxonomy: str | None = Field(None, description="Adds clause-presence tasks.")
    categories: list[str] | None = None


Span = tuple[int, int]


@dataclass(frozen=True)
class Task:
    kind: str  # definition | section | presence | completion
    question: str
    answer: str


@dataclass(frozen=True)
class Passage:
    """What a task miner reads: the document, the passage's span and clauses, and the settings."""

    view: DocumentView
    span: Span
    clauses: list[Span]
    headings: frozenset[int]  # start offsets of the document's heading clauses
    max_answer_chars: int
    rng: random.Random

    def holds(self, start: int, end: int) -> bool:
        return self.span[0] <= start and end <= self.span[1]

    def sentence(self, span: Span, max_chars: int) -> str:
        return clause_excerpt(self.view.text, [span], max_chars)[0]


Miner = Callable[[Passage], list[Task]]


def build(view: DocumentView, cfg: BuilderConfig, ctx: BuildContext) -> list[Pair]:
    opts = _options(cfg, ctx)
    if view.split != "train":
        return []
    rng = ctx.rng(view.doc.id, NAME)
    miners = _miners(opts)
    headings = _heading_starts(view)
    passages = [p for p in _passages(view, headings, opts["passage_chars"]) if p[1] > p[0]]
    rows = []
    for span in pick(rng, passages, cfg.max_per_document):
        text = _render(view.text[span[0] : span[1]])
        if len(text) < MIN_PASSAGE_CHARS:
            continue
        clauses = [c for c in view.clauses if span[0] <= c[0] and c[1] <= span[1]]
        passage = Passage(view, span, clauses, headings, cfg.max_answer_chars, rng)
        tasks = _choose(rng, [miner(passage) for miner in miners], opts["tasks_per_passage"])
        if not tasks:
            continue
        opts["_presence"].update(_verdict(t) for t in tasks if t.kind == "presence")
        qa = "\n\n".join(f"Question: {t.question}\nAnswer: {t.answer}" for t in tasks)
        row = f"{view.doc.title}\n\n{text}\n\n{qa}"
        rows.append(make_text_row(row, doc_id=view.doc.id, builder=NAME, span=span, task=TASK))
    return rows


def _passages(view: DocumentView, headings: frozenset[int], max_chars: int) -> list[Span]:
    """Consecutive runs of whole clauses, each up to ``max_chars`` flattened characters; a heading
    at the end of a run goes to the next one, with its section."""
    clauses, spans, i = view.clauses, [], 0
    most = max_chars // 2 + 2  # clauses that can fit: one character and a space each
    while i < len(clauses):
        _, (start, end) = clause_excerpt(view.text, clauses[i : i + most], max_chars)
        after = i + 1
        while after < len(clauses) and clauses[after][0] < end:
            after += 1
        kept = after
        while kept - 1 > i and clauses[kept - 1][0] in headings:
            kept -= 1
        spans.append((start, end if kept == after else clauses[kept - 1][1]))
        i = kept
    return spans


def _heading_starts(view: DocumentView) -> frozenset[int]:
    """Start offsets of the clauses that are section headings (a clause starting between a
    section's start and its body's)."""
    starts = [c[0] for c in view.clauses]
    found: set[int] = set()
    for s in view.sections:
        lo, hi = bisect.bisect_left(starts, s.start), bisect.bisect_left(starts, s.body_start)
        found.update(starts[lo:hi])
    return frozenset(found)


def _render(raw: str) -> str:
    """A passage as text: paragraphs (headings included) kept on their own lines, flattened."""
    return "\n".join(flatten(p) for p in _PARAGRAPH.split(raw) if p.strip())


# --- task miners: a passage → candidate tasks ---------------------------------------------------


def _definitions(p: Passage) -> list[Task]:
    seen, tasks = set(), []
    for d in p.view.definitions:
        if p.holds(d.start, d.end) and d.term.lower() not in seen:
            seen.add(d.term.lower())
            answer = p.sentence((d.start, d.end), p.max_answer_chars)
            tasks.append(Task("definition", f'How does this passage define "{d.term}"?', answer))
    return tasks


def _sections(p: Passage) -> list[Task]:
    tasks = []
    for s in p.view.sections:
        if not s.heading or not p.span[0] <= s.start < p.span[1]:
            continue
        body = [c for c in p.clauses if s.body_start <= c[0] < s.end]
        if body:
            quote = p.sentence(body[0], QUOTE_CHARS)
            heading = f"{s.number}. {s.heading}" if s.number else s.heading
            question = f'Under which heading does the passage say "{quote}"?'
            tasks.append(Task("section", question, f'Under the heading "{heading}".'))
    return tasks


def _completions(p: Passage) -> list[Task]:
    tasks = []
    for c in p.clauses:
        if c[0] in p.headings:
            continue
        sentence = p.sentence(c, p.max_answer_chars)
        words = sentence.split()
        whole = sentence == flatten(p.view.text[c[0] : c[1]])
        if whole and MIN_COMPLETION_WORDS <= len(words) <= MAX_COMPLETION_WORDS:
            start = " ".join(words[: len(words) // 2])
            question = f'How does the passage complete "{start} ..."?'
            tasks.append(Task("completion", question, sentence))
    return tasks


def _presence(taxonomy: Taxonomy, categories: list[str] | None, answered: Counter[str]) -> Miner:
    """Yes for each category the passage has; one No, while the run has no more No than Yes
    (most categories are absent from a short passage: No would dominate)."""

    def mine(p: Passage) -> list[Task]:
        raw = p.view.text[p.span[0] : p.span[1]]
        clauses = split_clauses(raw)
        yes, no = [], []
        for category in taxonomy.categories:
            if categories and category.id not in categories:
                continue
            detection = detect(raw, clauses, category)
            question = f"Does this passage contain a clause that {category.spec.absent}?"
            if detection.label == "yes":
                assert detection.evidence is not None
                most = min(p.max_answer_chars, QUOTE_CHARS)
                quote = clause_excerpt(raw, [detection.evidence], most)[0]
                yes.append(Task("presence", question, f'Yes: "{quote}"'))
            elif detection.label == "no":
                no.append(Task("presence", question, "No."))
        offer_no = no and answered["No"] <= answered["Yes"]
        return yes + ([p.rng.choice(no)] if offer_no else [])

    return mine


def _verdict(task: Task) -> str:
    return task.answer.split(":")[0].rstrip(".")


def _miners(opts: dict[str, Any]) -> list[Miner]:
    miners: list[Miner] = [_definitions, _sections, _completions]
    if opts["_taxonomy"] is not None:
        miners.insert(2, _presence(opts["_taxonomy"], opts["categories"], opts["_presence"]))
    return miners


def _choose(rng: random.Random, candidates: list[list[Task]], k: int) -> list[Task]:
    """Up to ``k`` tasks, seeded, one kind after another (every kind that has a task before a
    second task of any kind), so that a passage's tasks are as varied as it allows."""
    pools = [rng.sample(pool, len(pool)) for pool in candidates if pool]
    rng.shuffle(pools)
    chosen: list[Task] = []
    while len(chosen) < k and any(pools):
        for pool in pools:
            if pool and len(chosen) < k:
                chosen.append(pool.pop())
    return chosen


def _options(cfg: BuilderConfig, ctx: BuildContext) -> dict[str, Any]:
    """The builder's options, validated once per run (the taxonomy loaded with them)."""
    return run_options(cfg, ctx, NAME, ReadingOptions, _prepare)


def _prepare(opts: dict[str, Any], where: str) -> None:
    """Check the options; add what later documents reuse (loaded taxonomy, run counters)."""
    taxonomy = load_taxonomy(opts["taxonomy"]) if opts["taxonomy"] is not None else None
    check_categories(taxonomy, opts["categories"], where)
    opts["_taxonomy"] = taxonomy
    opts["_presence"] = Counter()  # the run's presence answers so far: Yes / No
