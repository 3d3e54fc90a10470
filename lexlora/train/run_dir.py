"""The run directory: ``runs/RECIPE/RUN_ID/`` with everything needed to trace and resume a run.

Layout: ``recipe.yaml`` (resolved), ``provenance.json`` (data manifest hash, package versions),
``metrics.jsonl``, ``runs/`` (TensorBoard), ``checkpoints/checkpoint-N/``, ``adapter/`` (final),
``summary.json`` (:class:`lexlora.artifacts.run.TrainSummary`).

A checkpoint is complete once the Trainer has written ``trainer_state.json``, its last file, in
full; one cut short by a crash is skipped on resume.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import yaml

from lexlora.errors import LexloraError
from lexlora.io import atomic_write, remove_stale_temps, sha256_file, write_json
from lexlora.progress import Log
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
CHECKPOINT_FILES = (
    "adapter_model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "trainer_state.json",  # written last
)


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
    try:
        while run_dir.exists():
            n += 1
            run_dir = root / f"{base}-{n}"
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise LexloraError(
            f"train.output_dir '{recipe.train.output_dir}': cannot create {run_dir} "
            f"({exc.strerror or exc})"
        ) from None
    return run_dir


@contextmanager
def starting_run(recipe: Recipe, data_dir: Path) -> Iterator[Path]:
    """A new run folder with its provenance, for setting the run up in the block; if the block
    fails, the run never started: the folder goes again, with the (then empty) parents it made."""
    root = Path(recipe.train.output_dir) / recipe.name
    made = [root, *root.parents]
    made = made[: next((i for i, p in enumerate(made) if p.exists()), len(made))]
    run_dir = new_run_dir(recipe)
    try:
        write_provenance(run_dir, recipe, data_dir)
        yield run_dir
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in made:  # innermost first; a folder someone else filled meanwhile stays
            try:
                parent.rmdir()
            except OSError:
                break
        raise


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


def latest_checkpoint(run_dir: Path, log: Log = print) -> Path:
    """The newest complete checkpoint of a run; newer incomplete ones are skipped (one line
    says which and why). None complete is a user-facing error."""
    folder = run_dir / "checkpoints"
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        match = _CHECKPOINT.match(path.name)
        if match:
            found.append((int(match[1]), path))
    if not found:
        raise LexloraError(f"{run_dir}: no checkpoint to resume from (checkpoints/ is empty)")
    skipped = []
    for step, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path, step)
        if problem is None:
            if skipped:
                log(f"skipping incomplete {'; '.join(skipped)}")
            return path
        skipped.append(f"{path.name} ({problem})")
    raise LexloraError(f"{run_dir}: no complete checkpoint to resume from: {'; '.join(skipped)}")


def checkpoint_problem(path: Path, step: int) -> str | None:
    """Why ``path`` is not a complete checkpoint of ``step``; None when it is."""
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "trainer_state.json cut short"
    if not isinstance(state, dict) or state.get("global_step") != step:
        return f"trainer_state.json is not of step {step}"
    return None
