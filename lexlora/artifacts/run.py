"""A training run's folder (``runs/RECIPE/RUN_ID/``) as other stages read it: where the newest
run is, and its ``summary.json`` (what ``lexlora train`` measured), read by export (published
with the adapter), the dashboard and the benchmarks.

The rest of the layout (``recipe.yaml``, ``provenance.json``, ``metrics.jsonl``, checkpoints) is
written and resumed by :mod:`lexlora.train.run_dir`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from lexlora.errors import LexloraError
from lexlora.io import write_json
from lexlora.recipe import Recipe

SUMMARY_FILE = "summary.json"


class TrainSummary(BaseModel):
    """What a training run did: losses, tokens, time, memory, the adapter it wrote."""

    model_config = ConfigDict(extra="ignore")

    run_dir: str
    adapter_dir: str | None
    interrupted: bool
    steps: int
    train_loss_first: float | None
    train_loss_last: float | None
    eval_loss_base: float | None
    eval_loss_adapter: float | None
    tokens_seen: int
    wall_seconds: float
    peak_rss_mb: float
    peak_cuda_mb: float | None
    precision: str
    method: str = "lora"
    trainable_params: int = 0
    rank_checksums: list[str] = []

    def save(self) -> Path:
        path = Path(self.run_dir) / SUMMARY_FILE
        write_json(path, self.model_dump())
        return path

    @classmethod
    def load(cls, run_dir: Path) -> TrainSummary | None:
        """The run's summary; None when it has none (unfinished), or one that is not a summary."""
        try:
            return cls.model_validate(json.loads((run_dir / SUMMARY_FILE).read_text("utf-8")))
        except (OSError, ValueError, ValidationError):
            return None


def latest_run_dir(recipe: Recipe) -> Path:
    """The recipe's newest run folder (by modification time) under ``train.output_dir``."""
    root = Path(recipe.train.output_dir) / recipe.name
    runs = (
        sorted(p for p in root.glob("*") if (p / "recipe.yaml").is_file()) if root.is_dir() else []
    )
    if not runs:
        raise LexloraError(f"no run of recipe '{recipe.name}' under {root} to resume")
    return max(runs, key=lambda p: p.stat().st_mtime)
