"""Evaluation metrics as text: the summary lines the terminal, the report and ``/ui`` show, each
with its tone (better, worse, neutral) for colour. One wording of every metric, used by all three.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from lexlora.artifacts.gate import GateVerdict
from lexlora.artifacts.metrics import Comparison, EvalMetrics, YesNoMetrics

LABELS = {
    "choice_accuracy": "option accuracy (log-likelihood)",
    "answer_nll": "answer loss (NLL per token, lower is better)",
    "token_f1": "token F1 of greedy answers",
    "exact_match": "exact match of greedy answers",
    "rouge_l": "ROUGE-L of greedy answers",
    "sanity_accuracy": "sanity set accuracy (independent labels)",
    "yes_no_accuracy": "yes/no accuracy (clause presence)",
    "yes_no_balanced_accuracy": "yes/no balanced accuracy (clause presence)",
    "recall_accuracy": "recall accuracy (closed-book, training documents, new wordings)",
    "recall_balanced_accuracy": "recall balanced accuracy (closed-book, new wordings)",
    "general_accuracy": "general option accuracy (out-of-domain questions)",
    "general_answer_nll": "general answer loss (out-of-domain, NLL per token, lower is better)",
}

TRACK_LABELS = {
    "reading": "reading (held-out documents, text in the prompt)",
    "recall": "recall (training documents, closed-book, new wordings)",
    "general": "general (out-of-domain questions: a drop is forgetting)",
}

FAMILY_SHORT = {  # a family's name inside its track's line
    "yes_no_balanced_accuracy": "clause presence balanced accuracy",
    "choice_accuracy": "option accuracy",
    "recall_balanced_accuracy": "balanced accuracy",
    "recall_accuracy": "accuracy",
    "general_accuracy": "option accuracy",
    "general_answer_nll": "answer NLL",
}

YES_NO_SETS = {
    "yes_no": "clause presence (reading)",
    "recall": "recall (closed-book)",
    "sanity_yes_no": "sanity set",
}

Tone = Literal["better", "worse", "neutral"]


class Line(NamedTuple):
    """One summary line and whether it reports an improvement, a regression or neither."""

    text: str
    tone: Tone = "neutral"


def yes_rate_text(metrics: EvalMetrics) -> str:
    """How often base and adapter answer Yes on each yes/no set (a bias check), in one line."""
    parts = []
    for key, label in YES_NO_SETS.items():
        block: YesNoMetrics | None = getattr(metrics, key)
        if block:
            rate = block.yes_rate
            parts.append(
                f"{label} {rate.base:.0%} → {rate.adapter:.0%} "
                f"(truth {block.n_yes / block.n:.0%} of {block.n})"
            )
    return "answers Yes, base → adapter: " + "; ".join(parts) if parts else ""


def headline_text(metrics: EvalMetrics) -> list[Line]:
    """One line per metric family: base → adapter, difference with its 95% interval."""
    return [
        Line(
            f"{LABELS.get(name, name)}: base {row.base.mean:.3f} → adapter "
            f"{row.adapter.mean:.3f} {_change(row)}",
            _tone([row]),
        )
        for name, row in metrics.headline.items()
    ]


def track_text(metrics: EvalMetrics) -> list[Line]:
    """One line per track (reading, recall, general): each of its families base → adapter with
    the 95% interval of the difference."""
    lines = []
    for track, families in metrics.tracks.items():
        rows = [metrics.headline[name] for name in families]
        parts = [
            f"{FAMILY_SHORT.get(name, name)} {row.base.mean:.3f} → "
            f"{row.adapter.mean:.3f} {_change(row)}"
            for name, row in zip(families, rows, strict=True)
        ]
        lines.append(Line(f"{TRACK_LABELS.get(track, track)}: " + "; ".join(parts), _tone(rows)))
    return lines


def _tone(rows: list[Comparison]) -> Tone:
    """Worse if any family got significantly worse, better if any got better, else neutral."""
    if any(row.difference.worse for row in rows):
        return "worse"
    return "better" if any(row.difference.improved for row in rows) else "neutral"


def _change(row: Comparison) -> str:
    """``(Δ +0.050, 95% CI [+0.010, +0.090], n=120: better)`` for a family's row."""
    diff = row.difference
    verdict = "better" if diff.improved else "WORSE" if diff.worse else "no clear change"
    return (
        f"(Δ {diff.mean:+.3f}, 95% CI [{diff.low:+.3f}, {diff.high:+.3f}], "
        f"n={row.base.n}: {verdict})"
    )


def gate_text(gate: GateVerdict | None) -> list[Line]:
    """The gate's verdict: its first line better (passed) or worse (flagged), each flagged
    family worse, the too-small families neutral."""
    if gate is None:
        return []
    lines = gate.lines()
    first: Tone = "better" if gate.passed else "worse"
    tones: list[Tone] = [first, *(["worse"] * len(gate.flagged))]
    tones += ["neutral"] * (len(lines) - len(tones))
    return [Line(text, tone) for text, tone in zip(lines, tones, strict=True)]
