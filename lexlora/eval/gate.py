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

import math
from collections.abc import Mapping

from lexlora.artifacts.gate import ALPHA, MIN_ITEMS, GateFlag, GateVerdict, TooSmall
from lexlora.artifacts.metrics import Comparison


def holm_rejections(p_values: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise level ``alpha``."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    rejected = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] >= alpha / (len(p_values) - rank):
            break
        rejected[index] = True
    return rejected


def gate_verdict(
    tasks: Mapping[str, Comparison],
    headline: Mapping[str, Comparison],
    min_items: int = MIN_ITEMS,
) -> GateVerdict:
    """The gate's verdict on an evaluation's per-task and headline families (``min_items``: the
    recipe's ``eval.gate_min_items``)."""
    rows = [(f"task {k}", v) for k, v in tasks.items()]
    rows += [(f"headline {k}", v) for k, v in headline.items()]
    gated: list[tuple[str, Comparison, float]] = []
    too_small = []
    for family, row in rows:
        p = row.difference.p_worse
        if row.base.n < min_items:
            too_small.append(TooSmall(family=family, metric=row.metric, n=row.base.n))
        elif not math.isnan(p):
            gated.append((family, row, p))
    rejected = holm_rejections([p for _, _, p in gated])
    flagged = [
        GateFlag(
            family=family,
            metric=row.metric,
            n=row.base.n,
            base=row.base.mean,
            adapter=row.adapter.mean,
            difference=(row.difference.low, row.difference.high),
            p_worse=p,
        )
        for (family, row, p), hit in zip(gated, rejected, strict=True)
        if hit
    ]
    return GateVerdict(
        passed=not flagged,
        flagged=flagged,
        gated=len(gated),
        too_small=too_small,
        alpha=ALPHA,
        min_items=min_items,
    )
