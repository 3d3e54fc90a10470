"""An evaluation's metrics (``reports/RECIPE/EVAL_ID/metrics.json``): what ``lexlora eval``
computes and the report, the gate, the CLI summary, the dashboard and the benchmarks read.

Every base-vs-adapter figure is one :class:`Comparison` (the metric, base and adapter with their
95% intervals, and the paired difference), whichever family, task, category or topic it is for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from lexlora.artifacts.gate import GateVerdict
from lexlora.io import write_json

METRICS_FILE = "metrics.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stat(_Model):
    """A mean with its 95% bootstrap interval over ``n`` items."""

    mean: float
    low: float
    high: float
    n: int


class Difference(_Model):
    """Adapter − base over the same items: the paired 95% interval, whether it excludes zero on
    the better or the worse side, and the one-sided p-value of "worse" the gate corrects."""

    mean: float
    low: float
    high: float
    improved: bool
    worse: bool
    p_worse: float


class Perplexity(_Model):
    base: Stat
    adapter: Stat


class Comparison(_Model):
    """One family's (task's, category's, topic's) base vs adapter."""

    metric: str
    base: Stat
    adapter: Stat
    difference: Difference
    kind: Literal["choice", "open"] | None = None  # per-task and per-builder rows
    perplexity: Perplexity | None = None  # answer-loss headline rows


class YesRate(_Model):
    """Share of the items each model answers Yes (a bias check)."""

    base: float
    adapter: float


class YesNoMetrics(_Model):
    """A set of Yes/No questions: accuracy, balanced accuracy (None with one class only), the
    yes-rates and accuracy per category."""

    n: int
    n_yes: int
    n_no: int
    accuracy: Comparison
    balanced_accuracy: Comparison | None = None  # one class only: undefined
    yes_rate: YesRate
    by_category: dict[str, Comparison]


class GeneralMetrics(_Model):
    """The general track per topic (reported, not gated): metric → comparison."""

    n: int
    by_topic: dict[str, dict[str, Comparison]]


class ItemCounts(_Model):
    choice: int
    open: int
    generated: int
    sanity: int
    recall: int
    general: int
    refused_training_documents: int
    refused_general_in_training: int
    by_task: dict[str, int]


class SweepPoint(_Model):
    """Option accuracy and answer loss at one adapter strength (0 is checked against the base)."""

    scale: float
    choice_accuracy: float | None = None
    answer_nll: float | None = None
    max_abs_diff_vs_base: float | None = None


class Example(_Model):
    """A generated answer where the adapter lost most token F1 against the base."""

    task: str
    doc_id: str
    question: str
    reference: str
    base: str
    adapter: str
    base_f1: float
    adapter_f1: float


class EvalMetrics(_Model):
    recipe: str
    adapter: str
    created_at: str
    seed: int
    items: ItemCounts
    headline: dict[str, Comparison]
    tracks: dict[str, list[str]]  # track → its headline families
    yes_no: YesNoMetrics | None = None  # clause presence (reading)
    recall: YesNoMetrics | None = None
    sanity_yes_no: YesNoMetrics | None = None
    general: GeneralMetrics | None = None
    tasks: dict[str, Comparison]
    builders: dict[str, Comparison]
    sweep: list[SweepPoint]
    best_scale: float | None = None
    worst_examples: list[Example]
    seconds: float | None = None
    gate: GateVerdict | None = None

    def save(self, folder: Path) -> Path:
        path = folder / METRICS_FILE
        write_json(path, self.model_dump(exclude={"gate": {"report"}}, exclude_none=True))
        return path

    @classmethod
    def load(cls, path: Path) -> EvalMetrics:
        """Metrics from a ``metrics.json`` (``ValueError``/``OSError`` when it is not one)."""
        return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
