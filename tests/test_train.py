"""`lexlora train`: TRL SFTTrainer + PEFT LoRA on a tiny LLaMA, through the real loading code."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import make_recipe

from lexlora.errors import LexloraError
from lexlora.train.dataset import ensure_dataset, load_split
from lexlora.train.trainer import train


def lora_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_loss_only_on_assistant_tokens(tiny_model, tmp_path):
    """The tokenised training example masks every prompt token; labels are the answer + EOS."""
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from lexlora.train.model_setup import load_base

    recipe = make_recipe(tmp_path, tiny_model)
    data = load_split(ensure_dataset(recipe), "train")
    base = load_base(recipe)
    args = SFTConfig(output_dir=str(tmp_path / "o"), max_length=256, packing=False, use_cpu=True)
    args.report_to = []
    trainer = SFTTrainer(
        model=base.model, args=args, train_dataset=data, processing_class=base.tokenizer
    )
    row = trainer.train_dataset[0]
    collator = DataCollatorForLanguageModeling(pad_token_id=base.tokenizer.pad_token_id)
    batch = collator([row])
    labels = batch["labels"][0]
    ids = batch["input_ids"][0]
    trained = base.tokenizer.decode(ids[labels != -100])
    prompt = base.tokenizer.decode(ids[labels == -100])
    answer = data[0]["completion"][0]["content"]
    assert trained.strip() == f"{answer}<|im_end|>".strip()
    assert data[0]["prompt"][-1]["content"] in prompt
    assert "<|im_start|>assistant" in prompt and answer not in prompt


def test_loss_projects_only_answer_positions_and_equals_cross_entropy(
    tiny_model, tmp_path, monkeypatch
):
    """TRL's fused loss projects only the labelled positions of a packed batch onto the
    vocabulary (not every prompt token) and still gives the plain cross-entropy of the answers."""
    import trl.trainer.utils as trl_utils
    from rich.console import Console

    from lexlora.train.trainer import setup_training

    session = setup_training(make_recipe(tmp_path, tiny_model), False, Console(quiet=True))
    trainer = session.trainer
    projected: list[int] = []
    fused = trl_utils._ChunkedLogProbFunction

    class Counting:
        @staticmethod
        def apply(hidden, *args):
            projected.append(hidden.shape[0])
            return fused.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Counting)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    labels = batch["labels"][:, 1:]
    answer = labels != -100
    reference = torch.nn.functional.cross_entropy(logits[:, :-1][answer], labels[answer])
    assert projected == [int(answer.sum())]
    assert projected[0] < labels.numel() / 2  # the prompts were never projected
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)


def test_training_writes_run_folder_and_beats_base_on_held_out(tiny_model, tmp_path):
    summary = train(make_recipe(tmp_path, tiny_model, train={"max_steps": 24}))
    run = Path(summary.run_dir)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    for name in ("recipe.yaml", "provenance.json", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["versions"]["trl"] and len(provenance["data_manifest_sha256"]) == 64
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in m for m in metrics) and any("loss" in m for m in metrics)
    assert summary.train_loss_last < summary.train_loss_first
    assert summary.eval_loss_adapter < summary.eval_loss_base
    assert summary.tokens_seen > 0 and not summary.interrupted


def test_nf4_on_cpu_keeps_learning_after_an_evaluation(tiny_model, tmp_path):
    """Train, evaluate (step 6), train again: the LoRA weights must still move after the eval."""
    recipe = make_recipe(tmp_path, tiny_model, model={"quantization": "nf4"})
    summary = train(recipe)
    run = Path(summary.run_dir)
    assert "4-bit NF4" in summary.precision
    after_eval = lora_weights(run / "checkpoints" / "checkpoint-6")
    final = lora_weights(run / "adapter")
    assert max_diff(after_eval, final) > 1e-4


def test_4bit_cpu_kernel_fix_keeps_lora_gradients(tiny_model):
    """Without the fix, an eval forward repacks Linear4bit weights and LoRA grads become None."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lexlora.train.model_setup import disable_cpu_4bit_inference_kernel, quantization_for

    quant, _ = quantization_for("nf4", cuda=False)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model, quantization_config=quant, device_map={"": "cpu"}, dtype=torch.float32
    )
    assert disable_cpu_4bit_inference_kernel(model) == 14
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(0, 500, (2, 16))
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_resume_continues_exactly_where_the_run_stopped(tiny_model, tmp_path):
    """6 steps + resume to 12 gives the same adapter as 12 uninterrupted steps (optimizer state,
    scheduler and data order restored)."""
    full = train(make_recipe(tmp_path / "a", tiny_model))
    part_recipe = make_recipe(tmp_path / "b", tiny_model, train={"max_steps": 6})
    first = train(part_recipe)
    assert first.steps == 6
    resumed = train(make_recipe(tmp_path / "b", tiny_model), resume=True)
    assert resumed.run_dir == first.run_dir and resumed.steps == 12
    diff = max_diff(lora_weights(Path(full.adapter_dir)), lora_weights(Path(resumed.adapter_dir)))
    assert diff < 1e-5


def test_continue_from_an_existing_adapter(tiny_model, tmp_path):
    first = train(make_recipe(tmp_path, tiny_model))
    init = {"init_adapter": first.adapter_dir, "max_steps": 2, "learning_rate": 1e-12}
    second = train(make_recipe(tmp_path, tiny_model, train=init))
    a, b = lora_weights(Path(first.adapter_dir)), lora_weights(Path(second.adapter_dir))
    assert max_diff(a, b) < 1e-6  # started from the first adapter, not from a fresh LoRA
    assert any(t.abs().sum() > 0 for k, t in b.items() if "lora_B" in k)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"model": {"base": "no-such-model"}}, "not a built-in alias"),
        ({"lora": {"target_modules": ["q_proj", "query"]}}, "'query' is not a module.*v_proj"),
        ({"train": {"batch_size": 5000}}, "larger than the .* training pairs"),
        ({"train": {"init_adapter": "/nonexistent"}}, "not a PEFT adapter folder"),
    ],
)
def test_bad_input_is_a_user_error_and_leaves_no_run(tiny_model, tmp_path, sections, message):
    with pytest.raises(LexloraError, match=message):
        train(make_recipe(tmp_path, tiny_model, **sections))
    assert not (tmp_path / "runs").exists()


def test_resume_without_run_or_with_corrupt_checkpoint(tiny_model, tmp_path):
    recipe = make_recipe(tmp_path, tiny_model, train={"max_steps": 6})
    with pytest.raises(LexloraError, match="no run of recipe 'tiny'"):
        train(recipe, resume=True)
    summary = train(recipe)
    (Path(summary.run_dir) / "checkpoints" / "checkpoint-6" / "optimizer.pt").unlink()
    with pytest.raises(
        LexloraError, match=r"no complete checkpoint.*: checkpoint-6 \(missing optimizer\.pt\)"
    ):
        train(recipe, resume=True)


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tiny_model, tmp_path):
    recipe_file = tmp_path / "tiny.yaml"
    recipe = make_recipe(tmp_path, tiny_model, train={"max_steps": 100_000, "logging_steps": 1})
    import yaml

    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    ensure_dataset(recipe)
    cmd = [sys.executable, "-m", "lexlora.cli", "train", str(recipe_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    metrics = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "runs").rglob("metrics.jsonl"))
        if found and found[0].read_text().count("\n") >= 2:
            metrics = found[0]
            break
        time.sleep(0.2)
    assert metrics is not None, "training never logged a step"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "--resume" in out
    step = int(re.search(r"interrupted at step (\d+)", out)[1])
    assert (metrics.parent / "checkpoints" / f"checkpoint-{step}" / "optimizer.pt").is_file()
    resume = [*cmd, "--resume", "--set", f"train.max_steps={step + 2}"]
    result = subprocess.run(resume, capture_output=True, text=True, timeout=300, env=os.environ)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (metrics.parent / "adapter" / "adapter_model.safetensors").is_file()


def test_two_cpu_processes_through_accelerate_agree_and_write_one_adapter(tiny_model, tmp_path):
    import yaml

    recipe = make_recipe(tmp_path, tiny_model, train={"max_steps": 4, "batch_size": 2})
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    config = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "cpu2.yaml"
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--config_file", str(config), "-m", "lexlora.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*cmd, "train", str(recipe_file)], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = [p for p in (tmp_path / "runs" / "tiny").iterdir() if p.is_dir()]
    assert len(runs) == 1  # both ranks wrote into one run folder
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert len(summary["rank_checksums"]) == 2
    assert summary["rank_checksums"][0] == summary["rank_checksums"][1]
    assert (runs[0] / "adapter" / "adapter_model.safetensors").is_file()
