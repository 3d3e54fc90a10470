"""The no-regression gate: no held-out task family may be significantly worse with the adapter.

Each task family of the evaluation and each pooled headline family (yes/no balanced accuracy
included) carries a one-sided paired-bootstrap p-value of "the adapter is worse"
(``difference.p_worse``). A family gates only when it has at least ``eval.gate_min_items`` items
(default :data:`MIN_ITEMS`); smaller ones are listed as too small to gate. The gate flags the
families that Holm's step-down procedure rejects at a family-wise level of :data:`ALPHA`
(one-sided, the worse side of a two-sided 95% interval), so a dozen noisy families do not flag a
good run by chance. With one family this is exactly "the 95% interval of adapter − base lies
wholly on the worse side of zero".

``lexlora eval`` of a run folder writes the verdict to ``RUN_DIR/eval_gate.json``; ``lexlora
export`` refuses to publish a flagged run without ``--force``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lexlora.errors import LexloraError
from lexlora.io import write_json

GATE_FILE = "eval_gate.json"
MIN_ITEMS = 30  # a family with fewer paired items is reported, not gated
ALPHA = 0.025  # family-wise, one-sided (the worse tail of a two-sided 95% interval)


def holm_rejections(p_values: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise level ``alpha``."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    rejected = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] >= alpha / (len(p_values) - rank):
            break
        rejected[index] = True
    return rejected


def gate_verdict(metrics: dict, min_items: int = MIN_ITEMS) -> dict[str, Any]:
    """``{"passed", "flagged", "too_small", "gated", "alpha", "min_items"}`` for an evaluation
    (``min_items``: the recipe's ``eval.gate_min_items``)."""
    rows: list[tuple[str, dict]] = [(f"task {k}", v) for k, v in metrics.get("tasks", {}).items()]
    rows += [(f"headline {k}", v) for k, v in metrics.get("headline", {}).items()]
    gated: list[tuple[str, dict, float]] = []
    too_small = []
    for family, row in rows:
        n = row["base"].get("n", 0)
        p = row["difference"].get("p_worse", math.nan)
        if n < min_items:
            too_small.append({"family": family, "metric": row["metric"], "n": n})
        elif not math.isnan(p):
            gated.append((family, row, p))
    rejected = holm_rejections([p for _, _, p in gated])
    flagged = [
        {
            "family": family,
            "metric": row["metric"],
            "n": row["base"]["n"],
            "base": row["base"]["mean"],
            "adapter": row["adapter"]["mean"],
            "difference": [row["difference"]["low"], row["difference"]["high"]],
            "p_worse": p,
        }
        for (family, row, p), hit in zip(gated, rejected, strict=True)
        if hit
    ]
    return {
        "passed": not flagged,
        "flagged": flagged,
        "gated": len(gated),
        "too_small": too_small,
        "alpha": ALPHA,
        "min_items": min_items,
    }


def describe(flag: dict) -> str:
    low, high = flag["difference"]
    p = flag.get("p_worse")
    holm = "" if p is None else f", one-sided p {p:.4f} before Holm's correction"
    return (
        f"{flag['family']}: {flag['metric']} {flag['base']:.3f} → {flag['adapter']:.3f} "
        f"(95% CI of the change [{low:+.3f}, {high:+.3f}]{holm})"
    )


def describe_too_small(gate: dict) -> str:
    """One line naming the families too small to gate (empty when there are none)."""
    small = gate.get("too_small") or []
    if not small:
        return ""
    names = ", ".join(f"{s['family']} (n={s['n']})" for s in small)
    return f"not gated, fewer than {gate.get('min_items', MIN_ITEMS)} items: {names}"


def write_gate(run_dir: Path, verdict: dict, report_dir: Path) -> Path:
    path = run_dir / GATE_FILE
    write_json(path, {**verdict, "report": str(report_dir)})
    return path


def check_gate(run_dir: Path, force: bool, log=print) -> None:
    """Refuse (unless ``force``) to publish a run the gate flagged; warn when never evaluated."""
    path = run_dir / GATE_FILE
    if not path.is_file():
        log(
            f"warning: {run_dir} has no held-out evaluation (no {GATE_FILE}); run "
            f"`lexlora eval RECIPE --run {run_dir}` to check it for regressions"
        )
        return
    try:
        verdict = json.loads(path.read_text(encoding="utf-8"))
        flagged = verdict["flagged"]
    except (OSError, ValueError, KeyError):
        raise LexloraError(f"{path}: unreadable gate verdict; re-run `lexlora eval`") from None
    if not flagged:
        return
    worst = describe(flagged[0])
    if not force:
        raise LexloraError(
            f"{run_dir}: the no-regression gate flagged {len(flagged)} task "
            f"famil{'y' if len(flagged) == 1 else 'ies'} ({worst}); see {verdict.get('report')}; "
            "pass --force to publish anyway"
        )
    log(f"warning: publishing a run the gate flagged ({worst}) because of --force")
