"""The no-regression gate's verdict: written by ``lexlora eval`` beside a run, read by ``export``
(which refuses a flagged run), by the report and by the dashboard.

The verdict is computed by :func:`lexlora.eval.gate.gate_verdict`; this module only says what it
holds and how it is read and written (``RUN_DIR/eval_gate.json``, also ``metrics.json["gate"]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from lexlora.errors import LexloraError
from lexlora.io import write_json

GATE_FILE = "eval_gate.json"
MIN_ITEMS = 30  # a family with fewer paired items is reported, not gated
ALPHA = 0.025  # family-wise, one-sided (the worse tail of a two-sided 95% interval)


class GateFlag(BaseModel):
    """A task family the gate found significantly worse with the adapter."""

    model_config = ConfigDict(extra="ignore")
    family: str
    metric: str
    n: int
    base: float
    adapter: float
    difference: tuple[float, float]  # the 95% interval of adapter − base
    p_worse: float | None = None  # one-sided, before Holm's correction

    def describe(self) -> str:
        low, high = self.difference
        holm = (
            ""
            if self.p_worse is None
            else f", one-sided p {self.p_worse:.4f} before Holm's correction"
        )
        return (
            f"{self.family}: {self.metric} {self.base:.3f} → {self.adapter:.3f} "
            f"(95% CI of the change [{low:+.3f}, {high:+.3f}]{holm})"
        )


class TooSmall(BaseModel):
    """A family with fewer paired items than the gate needs: reported, not gated."""

    model_config = ConfigDict(extra="ignore")
    family: str
    metric: str
    n: int


class GateVerdict(BaseModel):
    """Whether any held-out family is significantly worse (Holm-corrected), and which."""

    model_config = ConfigDict(extra="ignore")
    passed: bool
    flagged: list[GateFlag]
    gated: int | None = None  # families with enough items to gate
    too_small: list[TooSmall] = []
    alpha: float = ALPHA
    min_items: int = MIN_ITEMS
    report: str | None = None  # the evaluation's report folder (in the gate file)

    def too_small_text(self) -> str:
        """One line naming the families too small to gate (empty when there are none)."""
        if not self.too_small:
            return ""
        names = ", ".join(f"{s.family} (n={s.n})" for s in self.too_small)
        return f"not gated, fewer than {self.min_items} items: {names}"

    def lines(self) -> list[str]:
        """The verdict as the report and ``lexlora eval`` print it."""
        if self.passed and self.gated == 0:
            lines = ["no-regression gate: passed, with nothing to gate (every family is too small)"]
        elif self.passed:
            scope = "" if self.gated is None else f" of {self.gated} (Holm-corrected)"
            lines = [f"no-regression gate: passed (no task family{scope} significantly worse)"]
        else:
            lines = [f"no-regression gate: FLAGGED ({len(self.flagged)} of {self.gated} families)"]
            lines += [f"WORSE {flag.describe()}" for flag in self.flagged]
        small = self.too_small_text()
        return [*lines, small] if small else lines

    def save(self, run_dir: Path, report_dir: Path) -> Path:
        """Write the verdict beside the run (``eval_gate.json``), naming its report."""
        path = run_dir / GATE_FILE
        write_json(
            path, self.model_copy(update={"report": str(report_dir)}).model_dump(mode="json")
        )
        return path

    @classmethod
    def parse(cls, data: Any) -> GateVerdict | None:
        """A verdict from JSON data (``metrics.json["gate"]``, a gate file); None if malformed."""
        try:
            return cls.model_validate(data)
        except ValidationError:
            return None

    @classmethod
    def load(cls, run_dir: Path) -> GateVerdict | None:
        """The run's verdict; None when the run was never evaluated; a one-line LexloraError when
        the file is unreadable."""
        path = run_dir / GATE_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        verdict = cls.parse(data)
        if verdict is None:
            raise LexloraError(f"{path}: unreadable gate verdict; re-run `lexlora eval`")
        return verdict
