"""Issue 12, data side: nothing lexlora did not create is deleted; a dataset is visible whole or
not at all and verified before use; the folder corpus reads only regular files and counts skips."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lexlora.artifacts.manifest import DataManifest
from lexlora.data.build import build_dataset
from lexlora.export.exporter import export_run
from lexlora.io import CRASH_ENV, MADE_BY_LEXLORA, read_jsonl
from lexlora.recipe import load_recipe
from lexlora.registry import AdapterStore
from lexlora.train.dataset import ensure_dataset


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lexlora.cli", *args]
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- `export --merge DIR` never deletes a folder lexlora did not make ---


@pytest.mark.parametrize("merge", ["DIR", "."])
def test_export_merge_onto_an_existing_folder_keeps_it_and_fails_cleanly(tiny_run, tmp_path, merge):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the user's own file")
    target = str(work) if merge == "DIR" else "."
    result = run_cli(
        "export", str(tiny_run), "--tenant", "acme", "--name", "contracts",
        "--store", str(tmp_path / "store"), "--merge", target, cwd=work,
    )  # fmt: skip
    message = one_line_error(result)
    expected = "exists and was not made by lexlora" if merge == "DIR" else "not a folder"
    assert expected in message
    assert [p.name for p in work.iterdir()] == ["notes.txt"]
    assert (work / "notes.txt").read_text() == "the user's own file"


def test_export_merge_replaces_its_own_folder_only_with_overwrite(tiny_run, tmp_path):
    from lexlora.errors import LexloraError

    store, merged = AdapterStore(tmp_path / "store"), tmp_path / "merged"
    quiet = {"store": store, "merge_dir": merged, "log": lambda *_: None}
    export_run(tiny_run, "acme", "contracts", **quiet)
    assert (merged / MADE_BY_LEXLORA).is_file()
    with pytest.raises(LexloraError, match="merged exists; choose a new path or pass --overwrite"):
        export_run(tiny_run, "acme", "contracts", **quiet)
    assert [v.version for v in store.list("acme")] == [1]  # refused up front
    result = export_run(tiny_run, "acme", "contracts", overwrite=True, **quiet)
    assert result.merged_dir == merged and list(merged.glob("*.safetensors"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "store"]  # no temporaries


# --- a dataset is visible whole or not at all, and is verified before use ---


def recipe_file(folder: Path, out: Path, path: Path) -> Path:
    path.write_text(
        f"name: contracts\ndata:\n  corpus: folder\n  path: {folder}\n  output_dir: {out}\n"
        "  clean: {min_chars: 100}\n  builders: {definitions: {}, section_qa: {}}\n"
        "  split: {validation: 0.17, test: 0.17, seed: 1}\n  leakage: {max_overlap: 1.0}\n"
    )
    return path


def build_generation(folder: Path) -> int:
    """The split seed of the build in ``folder``, after checking that every file is of that
    build: the manifest's hashes match and every pair's document is in its split."""
    manifest = DataManifest.load(folder, "contracts")
    docs = {d["id"]: d["split"] for d in read_jsonl(folder / "documents.jsonl")}
    for split in ("train", "validation", "test"):
        assert {docs[r["meta"]["doc_id"]] for r in read_jsonl(folder / f"{split}.jsonl")} <= {split}
        assert sorted(d for d, s in docs.items() if s == split) == sorted(
            manifest.split.doc_ids[split]
        )
    return manifest.split.seed


@pytest.mark.parametrize(
    ("crash_at", "expected_seed"),
    [
        ("write:train.jsonl", 1),  # the new train split renamed in: the old build stays
        ("directory-written:contracts", 1),  # the whole new build written, not swapped in
        ("directory-swapped:contracts", 2),  # swapped in, the old build not yet removed
    ],
)
def test_a_killed_build_leaves_the_old_dataset_or_the_new_one(
    contract_folder, tmp_path, crash_at, expected_seed
):
    recipe = recipe_file(contract_folder, tmp_path / "data", tmp_path / "contracts.yaml")
    data_dir = tmp_path / "data" / "contracts"
    build_dataset(load_recipe(str(recipe)))
    assert build_generation(data_dir) == 1
    crashed = run_cli(
        "data", str(recipe), "--set", "data.split.seed=2", cwd=tmp_path,
        env={CRASH_ENV: crash_at},
    )  # fmt: skip
    assert crashed.returncode == 137, crashed.stderr
    assert build_generation(data_dir) == expected_seed
    assert len(list((tmp_path / "data").iterdir())) == 2  # the dataset and one leftover
    rebuilt = run_cli("data", str(recipe), "--set", "data.split.seed=2", cwd=tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert build_generation(data_dir) == 2
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["contracts"]  # leftover removed


def test_a_changed_split_file_is_refused_by_eval_and_rebuilt_by_train(contract_folder, tmp_path):
    recipe = recipe_file(contract_folder, tmp_path / "data", tmp_path / "contracts.yaml")
    data_dir = tmp_path / "data" / "contracts"
    build_dataset(load_recipe(str(recipe)))
    train_rows = (data_dir / "train.jsonl").read_text().splitlines()
    with (data_dir / "test.jsonl").open("a") as f:  # a training pair slipped into the test split
        f.write(train_rows[0] + "\n")
    message = one_line_error(run_cli("eval", str(recipe), cwd=tmp_path))
    assert "test.jsonl: does not match its sha256 in manifest.json" in message
    assert "rebuild it with `lexlora data contracts`" in message

    logged: list[str] = []
    ensure_dataset(load_recipe(str(recipe)), log=logged.append)
    assert len(logged) == 1 and "test.jsonl: does not match its sha256" in logged[0]
    assert build_generation(data_dir) == 1
    assert train_rows[0] not in (data_dir / "test.jsonl").read_text()


# --- the folder corpus: only regular files, every skip counted ---


def without_root_privileges() -> list[str]:
    """A command prefix under which permission bits apply: as root, ``setpriv`` drops the
    capabilities that let root read any folder (the process stays uid 0)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: chmod 000 cannot make a folder unreadable")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_data_counts_an_unreadable_folder_and_never_waits_on_a_fifo(contract_folder, tmp_path):
    os.mkfifo(contract_folder / "pipe.txt")
    locked = contract_folder / "locked"
    locked.mkdir()
    (locked / "secret-contract.txt").write_text("A contract nobody may read. " * 10)
    recipe = recipe_file(contract_folder, tmp_path / "data", tmp_path / "contracts.yaml")
    locked.chmod(0)
    try:
        result = subprocess.run(
            [*without_root_privileges(), sys.executable, "-m", "lexlora.cli", "data", str(recipe)],
            capture_output=True, text=True, cwd=tmp_path, timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
    finally:
        locked.chmod(0o755)
    assert result.returncode == 0, result.stderr
    skipped = DataManifest.load(tmp_path / "data" / "contracts", "contracts").documents.skipped
    assert skipped == {"not-a-regular-file": 1, "unreadable-folder": 1}
    assert "'not-a-regular-file': 1" in result.stdout and "'unreadable-folder': 1" in result.stdout


# --- leftovers of killed processes are removed by the next run, and nothing else ---

KILLED_ADAPTER_SAVE = """
import os, signal, sys
from lexlora.io import atomic_directory
with atomic_directory(sys.argv[1], replace=True) as tmp:
    (tmp / "adapter_model.safetensors").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_new_run_removes_what_killed_runs_left_in_earlier_run_folders(contract_folder, tmp_path):
    from support import folder_recipe

    from lexlora.train.run_dir import new_run_dir

    earlier = tmp_path / "runs" / "contracts" / "20260101-000000"
    earlier.mkdir(parents=True)
    (earlier / ".adapter.notes.tmp").write_text("the user's own")
    killed = subprocess.run([sys.executable, "-c", KILLED_ADAPTER_SAVE, str(earlier / "adapter")])
    assert killed.returncode == -9
    assert len(list(earlier.glob(".adapter.lexlora-*.tmp"))) == 1
    recipe = folder_recipe(contract_folder, tmp_path / "data")
    recipe.train.output_dir = str(tmp_path / "runs")
    new_run_dir(recipe)
    assert [p.name for p in earlier.iterdir()] == [".adapter.notes.tmp"]
