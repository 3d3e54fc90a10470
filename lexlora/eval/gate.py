"""The no-regression gate: no held-out task family may be significantly worse with the adapter.

"Significantly worse" is the paired bootstrap's 95% interval of adapter − base lying wholly on the
worse side of zero (below for accuracies, above for answer loss). The gate looks at every task
family of the evaluation and the pooled headline families (yes/no balanced accuracy included).
``lexlora eval`` of a run folder writes the verdict to ``RUN_DIR/eval_gate.json``; ``lexlora
export`` refuses to publish a flagged run without ``--force``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lexlora.errors import LexloraError
from lexlora.io import write_json

GATE_FILE = "eval_gate.json"


def gate_verdict(metrics: dict) -> dict[str, Any]:
    """``{"passed": bool, "flagged": [...]}`` for an evaluation's metrics."""
    rows: list[tuple[str, dict]] = [(f"task {k}", v) for k, v in metrics.get("tasks", {}).items()]
    rows += [(f"headline {k}", v) for k, v in metrics.get("headline", {}).items()]
    flagged = []
    for family, row in rows:
        diff = row["difference"]
        if diff.get("worse"):
            flagged.append(
                {
                    "family": family,
                    "metric": row["metric"],
                    "base": row["base"]["mean"],
                    "adapter": row["adapter"]["mean"],
                    "difference": [diff["low"], diff["high"]],
                }
            )
    return {"passed": not flagged, "flagged": flagged}


def describe(flag: dict) -> str:
    low, high = flag["difference"]
    return (
        f"{flag['family']}: {flag['metric']} {flag['base']:.3f} → {flag['adapter']:.3f} "
        f"(95% CI of the change [{low:+.3f}, {high:+.3f}])"
    )


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
