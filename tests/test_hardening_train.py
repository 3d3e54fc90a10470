"""Issue 12, training and recipes: a crash in mid-checkpoint resumes from the previous one, short
runs summarise, ``train.max_length`` is bounded before anything loads, and every recipe mistake
is one line (exit 2) through the real ``lexlora`` command, leaving no run folder behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import make_recipe

from lexlora.errors import LexloraError
from lexlora.recipe import validate_recipe

# Runs the real CLI, but the Trainer's last checkpoint file (trainer_state.json) of the named
# checkpoint is cut short and the process dies there, as a kill in mid-save leaves it.
CRASH_IN_CHECKPOINT_SAVE = """
import os, sys
from transformers.trainer_callback import TrainerState
save = TrainerState.save_to_json
def save_to_json(self, json_path):
    if os.path.basename(os.path.dirname(json_path)) == os.environ["CRASH_IN_CHECKPOINT"]:
        with open(json_path, "w") as f:
            f.write('{"global_step": ')
        os._exit(137)
    save(self, json_path)
TrainerState.save_to_json = save_to_json
from lexlora.cli import main
main()
"""


def lexlora(*args: str, cwd: Path, code: str | None = None, env: dict | None = None):
    prefix = ["-c", code] if code else ["-m", "lexlora.cli"]
    return subprocess.run(
        [sys.executable, *prefix, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "1000", **(env or {})},  # no wrapped lines
    )


def write_recipe(tmp: Path, model: Path, **sections) -> Path:
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(make_recipe(tmp, model, **sections).model_dump(mode="json")))
    return path


def assert_one_line_error(result, *expected: str) -> str:
    """Exit 2, no traceback, and one ``error:`` line that says each of ``expected``."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def metrics_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_a_crash_in_mid_checkpoint_uses_the_previous_one(tiny_model, tmp_path):
    steps = {"max_steps": 4, "save_steps": 2, "eval_steps": 4, "logging_steps": 1}
    recipe = write_recipe(tmp_path, tiny_model, train=steps)
    crashed = lexlora(
        "train",
        str(recipe),
        "--no-eval",
        cwd=tmp_path,
        code=CRASH_IN_CHECKPOINT_SAVE,
        env={"CRASH_IN_CHECKPOINT": "checkpoint-4"},
    )
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    assert (run / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors").is_file()
    assert max(row["step"] for row in metrics_rows(run)) == 4  # steps 3-4 will run again

    resumed = lexlora("train", str(recipe), "--resume", "--no-eval", cwd=tmp_path)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out
    skipped = [line for line in out.splitlines() if "skipping incomplete" in line]
    assert skipped == ["skipping incomplete checkpoint-4 (trainer_state.json cut short)"], out
    assert f"resuming {run} from checkpoint-2" in out
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    rows = metrics_rows(run)
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4]
    assert [row["step"] for row in rows if "eval_loss" in row] == [4]


def test_a_run_too_short_to_log_still_summarises_its_loss_and_evaluates(tiny_model, tmp_path):
    steps = {"max_steps": 2, "logging_steps": 5, "eval_steps": 50, "save_steps": 50}
    result = lexlora("train", str(write_recipe(tmp_path, tiny_model, train=steps)), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no evaluation tasks" in result.stdout  # went on to the evaluation step
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_loss_last"] is not None and summary["steps"] == 2
    assert [row["step"] for row in metrics_rows(run) if "loss" in row] == [2]


def test_summary_says_n_a_for_figures_a_run_did_not_produce():
    from lexlora.artifacts.run import TrainSummary
    from lexlora.cli.train import summary_rows

    summary = TrainSummary(
        run_dir="r",
        adapter_dir="r/adapter",
        interrupted=False,
        steps=1,
        train_loss_first=None,
        train_loss_last=None,
        eval_loss_base=None,
        eval_loss_adapter=1.5,
        tokens_seen=1234,
        wall_seconds=3.2,
        peak_rss_mb=800.0,
        peak_cuda_mb=None,
        precision="full precision on CPU",
    )
    rows = summary_rows(summary)
    assert rows["train loss (first → last)"] == "n/a → n/a"
    assert rows["held-out loss, base model"] == "n/a"
    assert rows["held-out loss, adapter"] == "1.5000"
    assert rows["tokens seen (non-padding)"] == "1,234"


def test_max_length_beyond_the_base_models_context(tiny_model, tmp_path):
    recipe = write_recipe(tmp_path, tiny_model)
    result = lexlora("train", str(recipe), "--set", "train.max_length=4096", cwd=tmp_path)
    assert_one_line_error(result, "train.max_length=4096", "max_position_embeddings 1024")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_max_length_beyond_memory_is_refused_from_the_config_alone(tmp_path):
    """A base of a config.json alone: the check reads nothing else (no weights, no data)."""
    from transformers import LlamaConfig

    from lexlora.recipe import load_recipe
    from lexlora.train.trainer import train

    base = tmp_path / "config-only"
    LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        max_position_embeddings=2**20,
    ).save_pretrained(base)
    recipe = load_recipe(str(write_recipe(tmp_path, base)), [f"train.max_length={2**20}"])
    with pytest.raises(LexloraError) as err:  # in-process: the CLI's one line is tested above
        train(recipe)
    line = str(err.value)
    assert "\n" not in line
    for text in ("train.max_length=1048576", "train.batch_size=4", "GiB"):
        assert text in line, line
    assert "RAM available" in line or "CUDA memory available" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.builders.definitions.weight=1e308", "less than or equal to 100"),
        ("data.builders.definitions.weight=.inf", "finite number"),
        ("lora.rank=99999999999999999999999", "less than or equal to 1024"),
        ("train.learning_rate=.nan", "finite number"),
        ("train.epochs=1e308", "less than or equal to 1000"),
        ("train.max_steps=0", "use -1 to train for `epochs`"),
        ("train.seed=4294967296", "less than 4294967296"),
        ("data.split.test=0.9", "validation + test = 1.07 leaves no documents for training"),
        ("train.early_stopping_patience=2", "multiple of eval_steps (4)"),
        ("eval.sweep=[0, 1e9]", "less than or equal to 2"),
    ],
)
def test_recipe_mistakes_are_one_line_errors_before_any_run(
    tiny_model, tmp_path, override, expected
):
    recipe = write_recipe(tmp_path, tiny_model, train={"eval_steps": 4, "save_steps": 6})
    result = lexlora("train", str(recipe), "--set", override, cwd=tmp_path)
    field = override.split("=")[0].rsplit(".", 1)[-1]
    assert_one_line_error(result, str(recipe), field, expected)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_a_recipe_that_is_not_utf8(tmp_path):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("# Café contracts\ndata: {corpus: licenses}\n".encode("latin-1"))
    result = lexlora("train", str(recipe), cwd=tmp_path)
    assert_one_line_error(result, str(recipe), "not UTF-8", "0xe9")


def test_a_run_that_cannot_start_is_one_line_and_leaves_no_run_folder(tiny_model, tmp_path):
    recipe = write_recipe(tmp_path, tiny_model)
    result = lexlora("train", str(recipe), "--set", "train.output_dir=/proc/x", cwd=tmp_path)
    assert_one_line_error(result, "train.output_dir '/proc/x': cannot")
    assert not (tmp_path / "runs").exists()


def test_a_chat_template_that_cannot_render_stops_the_run_before_it_starts(tiny_model, tmp_path):
    from lexlora.recipe import load_recipe
    from lexlora.train.trainer import train

    template = tmp_path / "broken.jinja"
    template.write_text("{% for message in messages %}{{ message['content'] }")
    path = str(write_recipe(tmp_path, tiny_model))
    recipe = load_recipe(path, [f"model.chat_template={template}"])
    with pytest.raises(LexloraError, match="cannot render a conversation") as err:
        train(recipe)  # in-process: the CLI's one-line form is the test above
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_a_failed_setup_removes_the_run_folder_and_the_parents_it_made(tiny_model, tmp_path):
    from lexlora.train.run_dir import starting_run

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "manifest.json").write_text("{}")
    (tmp_path / "keep").mkdir()
    raw = make_recipe(tmp_path, tiny_model).model_dump(mode="json")
    raw["train"]["output_dir"] = str(tmp_path / "new" / "runs")
    recipe = validate_recipe(raw)
    with pytest.raises(LexloraError, match="setup failed"), starting_run(recipe, data_dir) as run:
        assert (run / "provenance.json").is_file()
        raise LexloraError("setup failed")
    assert not (tmp_path / "new").exists() and (tmp_path / "keep").is_dir()
