"""`lexlora export`: validated, vLLM-ready adapters in the registry; scale, combine, merge."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.helpers import rescale_adapter_scale
from safetensors.torch import load_file, save_file
from support import make_recipe
from transformers import AutoModelForCausalLM, AutoTokenizer

from lexlora.errors import LexloraError
from lexlora.export.exporter import CombinePart, export_run
from lexlora.registry import AdapterStore
from lexlora.train.trainer import train

PROMPT = "The Customer shall pay all fees within thirty days."


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def base_of(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model)


def with_adapter(tiny_model, folder: Path):
    model, tok = base_of(tiny_model)
    return PeftModel.from_pretrained(model, str(folder)).eval(), tok


@pytest.fixture
def store(tmp_path) -> AdapterStore:
    return AdapterStore(tmp_path / "store")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_export_publishes_an_adapter_equal_to_the_trained_one(tiny_model, tiny_run, store):
    result = export_run(tiny_run, "acme", "contracts", store=store, log=lambda *_: None)
    published = store.resolve("acme", "contracts")
    assert published.version == 1 and published.path == result.published.path
    meta = json.loads((published.path / "lexlora.json").read_text())
    assert meta["base_model"] == str(tiny_model) and meta["rank"] == 8
    assert meta["run_id"] == tiny_run.name and meta["eval"]["eval_loss_adapter"] is not None
    config = json.loads((published.path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] and not config.get("modules_to_save")
    exported, tok = with_adapter(tiny_model, published.path)
    trained, _ = with_adapter(tiny_model, tiny_run / "adapter")
    base, _ = base_of(tiny_model)
    assert torch.allclose(logits(exported, tok), logits(trained, tok), atol=1e-6)
    assert not torch.allclose(logits(exported, tok), logits(base, tok), atol=1e-4)


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_baked_scale_equals_peft_runtime_scaling(tiny_model, tiny_run, store, scale):
    result = export_run(tiny_run, "acme", "half", store=store, scale=scale, log=lambda *_: None)
    exported, tok = with_adapter(tiny_model, result.published.path)
    trained, _ = with_adapter(tiny_model, tiny_run / "adapter")
    with rescale_adapter_scale(trained, scale):
        expected = logits(trained, tok)
    assert torch.allclose(logits(exported, tok), expected, atol=1e-5)
    assert json.loads((result.published.path / "lexlora.json").read_text())["strength"] == scale


def test_cat_combination_is_the_weighted_sum_of_deltas(tiny_model, tiny_run, store, tmp_path):
    other_run = Path(
        train(make_recipe(tmp_path, tiny_model, train={"max_steps": 6, "seed": 7})).run_dir
    )
    export_run(other_run, "beta", "filings", store=store, log=lambda *_: None)
    result = export_run(
        tiny_run,
        "acme",
        "mix",
        store=store,
        weight=0.6,
        combine=[CombinePart("beta/filings:1", 0.4)],
        combine_method="cat",
        log=lambda *_: None,
    )
    meta = json.loads((result.published.path / "lexlora.json").read_text())
    assert meta["combination"]["method"] == "cat" and meta["rank"] == 16

    def merged_q(folder: Path) -> torch.Tensor:
        model, _ = with_adapter(tiny_model, folder)
        return model.merge_and_unload().model.layers[0].self_attn.q_proj.weight.detach()

    base, _ = base_of(tiny_model)
    w0 = base.model.layers[0].self_attn.q_proj.weight.detach()
    delta_a = merged_q(tiny_run / "adapter") - w0
    delta_b = merged_q(other_run / "adapter") - w0
    expected = w0 + 0.6 * delta_a + 0.4 * delta_b
    assert torch.allclose(merged_q(result.published.path), expected, atol=1e-6)


def test_merge_writes_a_full_model_with_the_adapters_logits(tiny_model, tiny_run, store, tmp_path):
    result = export_run(
        tiny_run, "acme", "contracts", store=store, merge_dir=tmp_path / "merged", log=print
    )
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir, dtype=torch.float32).eval()
    assert list(result.merged_dir.glob("*.safetensors"))
    trained, tok = with_adapter(tiny_model, tiny_run / "adapter")
    assert (logits(merged, tok) - logits(trained, tok)).abs().max() < 1e-4


def fake_run(tiny_run: Path, tmp_path: Path, edit) -> Path:
    """A copy of the run whose adapter weights/config are changed by ``edit(tensors, config)``."""
    run = tmp_path / "run-copy"
    shutil.copytree(tiny_run, run)
    weights = run / "adapter" / "adapter_model.safetensors"
    config_file = run / "adapter" / "adapter_config.json"
    tensors, config = load_file(weights), json.loads(config_file.read_text())
    tensors, config = edit(tensors, config)
    save_file(tensors, weights)
    config_file.write_text(json.dumps(config))
    return run


def rename_to_missing_module(tensors, config):
    return {
        k.replace("q_proj", "x_proj").replace("v_proj", "y_proj"): v for k, v in tensors.items()
    }, config


def add_lm_head(tensors, config):
    tensors["base_model.model.lm_head.lora_A.weight"] = torch.zeros(8, 128)
    return tensors, config


def with_modules_to_save(tensors, config):
    return tensors, {**config, "modules_to_save": ["lm_head"]}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (rename_to_missing_module, "does not change the base model's output"),
        (add_lm_head, "embeddings or lm_head"),
        (with_modules_to_save, "modules_to_save"),
    ],
)
def test_unservable_adapters_are_refused(tiny_run, store, tmp_path, edit, message):
    run = fake_run(tiny_run, tmp_path, edit)
    with pytest.raises(LexloraError, match=message):
        export_run(run, "acme", "contracts", store=store, log=lambda *_: None)
    assert store.list() == []


def test_bad_exports_leave_the_store_unchanged(tiny_run, store, tmp_path):
    export_run(tiny_run, "acme", "contracts", store=store, log=lambda *_: None)
    before = files_under(store.root)
    no_adapter = tmp_path / "unfinished"
    no_adapter.mkdir()
    shutil.copy(tiny_run / "recipe.yaml", no_adapter / "recipe.yaml")
    cases = [
        (lambda: export_run(no_adapter, "acme", "x", store=store), "has no adapter"),
        (lambda: export_run(tiny_run, "acme", "x", store=store, max_rank=4), "exceeds"),
        (lambda: export_run(tiny_run, "ac/me", "x", store=store), "tenant name"),
        (lambda: export_run(tiny_run, "acme", "..", store=store), "name"),
        (lambda: export_run(tiny_run, "acme", "x", store=store, scale=0), "scale"),
        (
            lambda: export_run(
                tiny_run, "acme", "x", store=store, combine=[CombinePart("acme/nope", 0.4)]
            ),
            "not found",
        ),
        (
            lambda: export_run(
                tiny_run,
                "acme",
                "x",
                store=store,
                combine=[CombinePart("acme/contracts", 0.4)],
                combine_method="cat",
                max_rank=8,
            ),
            "would have rank 16",
        ),
    ]
    for call, message in cases:
        with pytest.raises(LexloraError, match=message):
            call()
    assert files_under(store.root) == before


def test_combine_refuses_other_base_rank_mismatch_and_tampering(tiny_run, store, tmp_path):
    def low_rank(tensors, config):
        small = {k: (v[:4] if "lora_A" in k else v[:, :4]).contiguous() for k, v in tensors.items()}
        return small, {**config, "r": 4, "lora_alpha": 8}

    export_run(fake_run(tiny_run, tmp_path, low_rank), "beta", "r4", store=store)
    with pytest.raises(LexloraError, match="rank 4 differs"):
        export_run(tiny_run, "acme", "m", store=store, combine=[CombinePart("beta/r4", 0.4)])

    other = store.resolve("beta", "r4")
    meta = json.loads((other.path / "lexlora.json").read_text())
    foreign = tmp_path / "foreign"
    shutil.copytree(other.path, foreign)
    store.publish("gamma", "foreign", foreign, {**meta, "base_config_hash": "0" * 64})
    with pytest.raises(LexloraError, match="another base"):
        export_run(
            tiny_run,
            "acme",
            "m",
            store=store,
            combine=[CombinePart("gamma/foreign", 0.4)],
            combine_method="cat",
        )

    weights = other.path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(LexloraError, match="checksum mismatch"):
        export_run(
            tiny_run,
            "acme",
            "m",
            store=store,
            combine=[CombinePart("beta/r4", 0.4)],
            combine_method="cat",
        )


def test_cli_export_then_list(tiny_run, tmp_path):
    store = tmp_path / "cli-store"
    cmd = [sys.executable, "-m", "lexlora.cli"]
    result = subprocess.run(
        [
            *cmd,
            "export",
            str(tiny_run),
            "--tenant",
            "acme",
            "--name",
            "contracts",
            "--store",
            str(store),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    listed = subprocess.run(
        [*cmd, "adapters", "list", "--store", str(store), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = json.loads(listed.stdout)
    assert [(r["tenant"], r["name"], r["version"]) for r in rows] == [("acme", "contracts", 1)]
    bad = subprocess.run(
        [*cmd, "export", str(tiny_run), "--tenant", "acme", "--name", "a/b", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
