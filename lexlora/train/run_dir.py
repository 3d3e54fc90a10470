"""The run directory: ``runs/RECIPE/RUN_ID/`` with everything needed to trace and resume a run.

Layout: ``recipe.yaml`` (resolved), ``provenance.json`` (data manifest hash, package versions),
``metrics.jsonl``, ``runs/`` (TensorBoard), ``checkpoints/checkpoint-N/``, ``adapter/`` (final),
``summary.json``.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
from datetime import UTC, datetime
from pathlib import Path

import yaml

from lexlora.errors import LexloraError
from lexlora.io import atomic_write, remove_stale_temps, sha256_file, write_json
from lexlora.recipe import Recipe

PACKAGES = (
    "lexlora",
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "accelerate",
    "bitsandbytes",
    "safetensors",
)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def new_run_dir(recipe: Recipe, run_id: str | None = None) -> Path:
    """Create ``runs/RECIPE/RUN_ID`` (a timestamp unless given), never reusing an existing one."""
    root = Path(recipe.train.output_dir) / recipe.name
    for earlier in sorted(root.iterdir()) if root.is_dir() else []:
        if earlier.is_dir():  # what killed runs left: .adapter.lexlora-PID.*.tmp, ...
            remove_stale_temps(earlier)
    base = run_id or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir, n = root / base, 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{base}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def write_provenance(run_dir: Path, recipe: Recipe, data_dir: Path) -> None:
    with atomic_write(run_dir / "recipe.yaml") as f:
        yaml.safe_dump(recipe.model_dump(mode="json"), f, sort_keys=False, allow_unicode=True)
    write_json(
        run_dir / "provenance.json",
        {
            "recipe": recipe.name,
            "recipe_hash": recipe.hash(),
            "data_dir": str(data_dir),
            "data_manifest_sha256": sha256_file(data_dir / "manifest.json"),
            "versions": package_versions(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def latest_run_dir(recipe: Recipe) -> Path:
    root = Path(recipe.train.output_dir) / recipe.name
    runs = (
        sorted(p for p in root.glob("*") if (p / "recipe.yaml").is_file()) if root.is_dir() else []
    )
    if not runs:
        raise LexloraError(f"no run of recipe '{recipe.name}' under {root} to resume")
    return max(runs, key=lambda p: p.stat().st_mtime)


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of a run; a corrupt one is a user-facing error."""
    folder = run_dir / "checkpoints"
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        match = _CHECKPOINT.match(path.name)
        if match:
            found.append((int(match[1]), path))
    if not found:
        raise LexloraError(f"{run_dir}: no checkpoint to resume from (checkpoints/ is empty)")
    checkpoint = max(found)[1]
    required = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")
    missing = [name for name in required if not (checkpoint / name).is_file()]
    if missing:
        raise LexloraError(f"{checkpoint}: corrupt checkpoint (missing {', '.join(missing)})")
    return checkpoint
