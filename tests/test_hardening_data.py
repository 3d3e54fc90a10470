"""Issue 12, data side: nothing lexlora did not create is deleted; a dataset is visible whole or
not at all and verified before use; the folder corpus reads only regular files and counts skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lexlora.export.exporter import export_run
from lexlora.io import MADE_BY_LEXLORA
from lexlora.registry import AdapterStore


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
