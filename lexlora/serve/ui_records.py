"""What ``/ui`` shows besides the OpenAI API: adapters' cards, training runs, evaluation reports.

Read from the registry's records and from the two folders the server is configured with
(``runs_dir``, ``reports_dir``). A path is followed only when, every link resolved, it stays
inside its folder (:func:`within`, :func:`inside`); a link pointing out is treated as absent.
A tenant's card names no server path: the base model's folder is cut to its name, and the parts
of a combination that are another tenant's adapters are not named.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lexlora.artifacts.gate import GATE_FILE, GateVerdict
from lexlora.artifacts.metrics import EvalMetrics
from lexlora.artifacts.metrics_text import headline_text, track_text
from lexlora.artifacts.run import TrainSummary
from lexlora.errors import LexloraError
from lexlora.registry import AdapterVersion, parse_ref
from lexlora.serve.config import ServeConfig

MAX_READ_BYTES = 32 * 1024 * 1024  # the largest file /ui reads or serves
MAX_LISTED = 200  # newest runs / reports listed, and report folders scanned for an adapter's
MAX_PATH_CHARS = 1024


@dataclass(frozen=True)
class Folders:
    """The resolved ``runs_dir`` and ``reports_dir`` (relative ones: to the working directory)."""

    runs: Path
    reports: Path

    @classmethod
    def of(cls, config: ServeConfig) -> Folders:
        return cls(_resolved(config.runs_dir), _resolved(config.reports_dir))


def _resolved(path: Path) -> Path:
    return Path(path).expanduser().resolve()


# --- confined paths and reads -------------------------------------------------------------------


def within(root: Path, path: Path) -> Path | None:
    """``path`` with every link resolved, if it exists and lies inside ``root``; else None."""
    try:
        base = root.resolve(strict=True)
        found = path.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a link loop, a NUL byte
        return None
    return found if found.is_relative_to(base) else None


def inside(root: Path, rel: str) -> Path | None:
    """The file ``root/rel``, if ``rel`` is a plain relative path (``/``-separated names, none
    empty or starting with ``.``, so no ``..``; no backslash, no NUL) and the file, every link
    resolved, lies inside ``root``; else None."""
    if not rel or len(rel) > MAX_PATH_CHARS or "\\" in rel or "\x00" in rel:
        return None
    if any(not part or part.startswith(".") for part in rel.split("/")):
        return None
    found = within(root, root / rel)
    return found if found is not None and found.is_file() else None


def read_bytes(path: Path, limit: int = MAX_READ_BYTES) -> bytes | None:
    """A regular file's bytes (not through a final link), or None if absent or over ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        data = f.read(limit + 1)
    return data if len(data) <= limit else None


def read_json(path: Path) -> Any:
    data = read_bytes(path)
    try:
        return None if data is None else json.loads(data)
    except ValueError:
        return None


def _mapping(value: Any, *keys: str) -> dict:
    """``value[k1][k2]…`` if every step is a mapping, else ``{}``."""
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else {}


def _short(name: Any) -> Any:
    """A model given as a folder (``/models/x``, ``~/x``, ``./x``) → its name; else unchanged."""
    if isinstance(name, str) and name.startswith(("/", "~", ".")):
        return Path(name).name
    return name


# --- evaluations and gates ----------------------------------------------------------------------


def gate_summary(gate: Any) -> dict | None:
    """The no-regression gate's verdict in a few lines, or None when there is none (a gate file
    of another shape still shows its flagged entries as text)."""
    if not isinstance(gate, dict) or not isinstance(gate.get("flagged"), list):
        return None
    verdict = GateVerdict.parse(gate)
    if verdict is None:
        flagged, too_small = [str(f) for f in gate["flagged"]], ""
    else:
        flagged = [flag.describe() for flag in verdict.flagged]
        too_small = verdict.too_small_text()
    return {
        "passed": not gate["flagged"],
        "flagged": flagged,
        "gated": gate.get("gated"),
        "too_small": too_small,
    }


def evaluation(report: Path | None) -> dict | None:
    """The headline of the evaluation in ``report`` (its ``metrics.json``), or None."""
    if report is None:
        return None
    try:
        info = (report / "metrics.json").stat()
    except OSError:
        return None
    return _evaluation(str(report / "metrics.json"), info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=512)
def _evaluation(path: str, mtime_ns: int, size: int) -> dict | None:
    """Cached by file version: listing reports does not parse every metrics.json each time."""

    metrics = read_json(Path(path))
    if not isinstance(metrics, dict):
        return None
    try:  # a metrics.json of another shape (older lexlora, edited) still lists its headers
        typed = EvalMetrics.model_validate(metrics)
        tracks = [line.text for line in track_text(typed)]
        headline = [line.text for line in headline_text(typed)]
    except (KeyError, TypeError, ValueError, AttributeError):
        tracks, headline = [], []
    return {
        "adapter": str(metrics.get("adapter", "")),
        "recipe": metrics.get("recipe"),
        "created_at": metrics.get("created_at"),
        "best_scale": metrics.get("best_scale"),
        "tracks": tracks,
        "headline": headline,
        "gate": gate_summary(metrics.get("gate")),
    }


def locate_report(recorded: Any, folders: Folders) -> Path | None:
    """The report folder a gate file records (``reports/RECIPE/EVAL_ID``, relative to where the
    evaluation ran, or absolute), if it lies inside ``reports_dir``."""
    if not isinstance(recorded, str) or not recorded or "\x00" in recorded:
        return None
    path = Path(recorded)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, folders.reports / path]
    candidates.append(folders.reports.joinpath(*path.parts[-2:]))
    for candidate in candidates:
        found = within(folders.reports, candidate)
        if found is not None and found.is_dir():
            return found
    return None


def report_link(report: Path | None, folders: Folders) -> str | None:
    """``RECIPE/EVAL_ID/report.html`` relative to ``reports_dir`` (what /ui/api/reports serves)."""
    if report is None or within(folders.reports, report / "report.html") is None:
        return None
    return (report / "report.html").relative_to(folders.reports.resolve()).as_posix()


def _subfolders(folder: Path, root: Path) -> list[Path]:
    """``folder``'s sub-folders inside ``root`` (links resolved), newest name first."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name, reverse=True)
    except OSError:
        return []
    found = (within(root, entry) for entry in entries if not entry.name.startswith("."))
    return [p for p in found if p is not None and p.is_dir()]


# --- runs ---------------------------------------------------------------------------------------


def list_runs(folders: Folders) -> list[dict]:
    """Every run folder ``runs_dir/RECIPE/RUN_ID`` (with a ``recipe.yaml``), newest first."""
    runs = [
        run
        for recipe in _subfolders(folders.runs, folders.runs)
        for run in _subfolders(recipe, folders.runs)
        if (run / "recipe.yaml").is_file()
    ]
    runs.sort(key=_mtime, reverse=True)
    return [run_record(run, folders) for run in runs[:MAX_LISTED]]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def run_record(run: Path, folders: Folders) -> dict:
    """A run's recipe, status, losses, gate verdict and evaluation headline."""
    data = read_bytes(run / "recipe.yaml") or b""
    try:
        recipe = yaml.safe_load(data)
    except yaml.YAMLError:
        recipe = None
    recipe = recipe if isinstance(recipe, dict) else {}
    summary = TrainSummary.load(run)
    gate = read_json(run / GATE_FILE)
    report = locate_report(gate.get("report"), folders) if isinstance(gate, dict) else None
    if summary is None:
        last = _last_logged(run / "metrics.jsonl")
        status, steps, losses = "incomplete", last.get("step"), {"train_last": last.get("loss")}
    else:
        steps = summary.steps
        status = "interrupted" if summary.interrupted else "finished"
        losses = {
            "train_first": summary.train_loss_first,
            "train_last": summary.train_loss_last,
            "eval_base": summary.eval_loss_base,
            "eval_adapter": summary.eval_loss_adapter,
        }
    return {
        "recipe": recipe.get("name") or run.parent.name,
        "run_id": run.name,
        "base_model": _short(_mapping(recipe, "model").get("base")),
        "rank": _mapping(recipe, "lora").get("rank"),
        "status": status,
        "steps": steps,
        "losses": losses,
        "gate": gate_summary(gate),
        "evaluation": evaluation(report),
        "report": report_link(report, folders),
    }


def _last_logged(path: Path, tail: int = 65536) -> dict:
    """The last training-loss row of a run's ``metrics.jsonl`` (a run still going, or stopped)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
        lines = f.read().splitlines()
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "loss" in row:
            return row
    return {}


# --- reports ------------------------------------------------------------------------------------


def list_reports(folders: Folders) -> list[dict]:
    """Every report folder ``reports_dir/RECIPE/EVAL_ID``, newest first."""
    found = [
        report
        for recipe in _subfolders(folders.reports, folders.reports)
        for report in _subfolders(recipe, folders.reports)
        if (report / "metrics.json").is_file() or (report / "report.html").is_file()
    ]
    found.sort(key=_mtime, reverse=True)
    return [
        {
            "recipe": report.parent.name,
            "eval_id": report.name,
            "evaluation": evaluation(report),
            "report": report_link(report, folders),
        }
        for report in found[:MAX_LISTED]
    ]


# --- adapters -----------------------------------------------------------------------------------


def adapter_report(av: AdapterVersion, folders: Folders) -> tuple[Any, Path | None]:
    """(the gate file of the adapter's run, the folder of its newest evaluation): the report the
    gate names, else the newest report under ``reports_dir/RECIPE/`` of this run or version."""
    meta = av.metadata
    run_dir = meta.get("run_dir")
    run = within(folders.runs, Path(run_dir)) if isinstance(run_dir, str) and run_dir else None
    gate = read_json(run / GATE_FILE) if run is not None else None
    report = locate_report(gate.get("report"), folders) if isinstance(gate, dict) else None
    recipe = meta.get("recipe")
    if report is None and isinstance(recipe, str) and "/" not in recipe and "\\" not in recipe:
        folder = within(folders.reports, folders.reports / recipe)
        labels = {av.ref} | ({f"run {meta['run_id']}"} if meta.get("run_id") else set())
        for candidate in _subfolders(folder, folders.reports)[:MAX_LISTED] if folder else []:
            found = evaluation(candidate)
            if found is not None and found["adapter"] in labels:
                report = candidate
                break
    return gate, report


def adapter_card(av: AdapterVersion, model_id: str, folders: Folders) -> dict:
    """What a tenant may know of one of its adapter versions (``model_id`` as it asked)."""
    meta = av.metadata
    gate, report = adapter_report(av, folders)
    found = evaluation(report)
    return {
        "id": model_id,
        "name": av.name,
        "version": av.version,
        "aliases": list(av.aliases),
        "created_at": av.created_at,
        "sha256": av.sha256,
        "base_model": _short(av.base_model),
        "method": av.method,
        "rank": av.rank,
        "lora_alpha": meta.get("lora_alpha"),
        "target_modules": meta.get("target_modules"),
        "strength": meta.get("strength"),
        "recipe": meta.get("recipe"),
        "run_id": meta.get("run_id"),
        "training_eval": _mapping(meta, "eval"),
        "combination": _combination(meta.get("combination"), av.tenant),
        "gate": gate_summary(gate) or (found or {}).get("gate"),
        "evaluation": found,
        "report": report_link(report, folders),
    }


def _combination(combination: Any, tenant: str) -> dict | None:
    """A combined adapter's method and parts: the run (the first part) by its folder's name, the
    tenant's own adapters by reference, another tenant's adapter unnamed."""
    if not isinstance(combination, dict) or not isinstance(combination.get("parts"), list):
        return None
    parts = []
    for i, part in enumerate(combination["parts"]):
        part = part if isinstance(part, dict) else {}
        ref = str(part.get("ref", ""))
        owner, sep, rest = ref.partition("/")
        try:
            is_ref = i > 0 and bool(sep) and parse_ref(rest) is not None
        except LexloraError:
            is_ref = False
        if is_ref:
            shown = rest if owner == tenant else "another tenant's adapter"
        else:
            shown = f"{'run' if i == 0 else 'folder'} {Path(ref).name}"
        parts.append({"part": shown, "weight": part.get("weight")})
    return {"method": combination.get("method"), "parts": parts}
