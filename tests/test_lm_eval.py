"""lm-evaluation-harness against `lexlora serve` (a real server process on 127.0.0.1): the
`lm_eval` CLI scores a local multiple-choice task (prompt log-likelihoods: echo + logprobs) and a
local generation task through `local-completions`, 4 requests at a time, and every figure equals
lexlora's in-process HF + PEFT computation on the same items: on the embedded engine with the
tiny model, and (slow, needs `make setup-vllm`) on the vLLM engine with SmolLM2-135M and a
published adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from serve_reference import offline_model, random_adapter
from support import NEEDS_VLLM, VLLM_PYTHON
from transformers import AutoTokenizer

from lexlora.artifacts.adapter import base_config_hash
from lexlora.export.exporter import export_run
from lexlora.models import resolve_base_model
from lexlora.registry import AdapterStore
from lexlora.serve.launch import serve_process
from lexlora.serve.tenants import hash_key

pytest.importorskip("lm_eval", reason="lm-eval is a dev dependency: run `make setup`")

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tests" / "lm_eval"
KEY = "sk-lm-eval"
TOLERANCE = {"embedded": 1e-4, "vllm": 2e-3}  # vLLM's fp32 kernels differ from HF's a little


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(
    scope="module",
    params=[
        "embedded",
        pytest.param("vllm", marks=NEEDS_VLLM),
    ],
)
def served(request, tiny_model, tiny_run, tmp_path_factory):
    """(engine, URL, base model folder, adapter folder, tmp): the tiny model and its trained
    adapter on the embedded engine; SmolLM2-135M and a random rank-8 adapter on vLLM."""
    engine = request.param
    tmp = tmp_path_factory.mktemp(f"lm-eval-{engine}")
    store = AdapterStore(tmp / "store")
    config: dict = {"max_batch_size": 8, "max_queue": 16}
    if engine == "embedded":
        base = Path(tiny_model)
        quiet = lambda *_: None  # noqa: E731
        adapter = export_run(tiny_run, "acme", "contracts", store=store, log=quiet).published.path
        config.update(threads=1)
    else:
        base = Path(resolve_base_model("smollm2-135m-instruct"))
        meta = {"base_model": str(base), "base_config_hash": base_config_hash(str(base))}
        folder = random_adapter(base, tmp / "rand", rank=8)
        adapter = store.publish("acme", "contracts", folder, {**meta, "rank": 8}).path
        config.update(
            engine="vllm",
            vllm_python=str(VLLM_PYTHON),
            max_lora_rank=8,
            vllm_startup_timeout=400,
        )
    config.update(
        base_model=str(base),
        store=str(store.root),
        tenants={"acme": {"api_key_sha256": [hash_key(KEY)], "adapters": ["contracts"]}},
    )
    with serve_process(config, tmp, timeout=600) as served:
        yield engine, served.url, base, adapter, tmp


def run_lm_eval(url: str, tokenizer: Path, out: Path, model: str = "contracts") -> Path:
    """The `lm_eval` CLI as a user runs it; returns the folder with its per-sample logs."""
    args = ",".join(
        [
            f"model={model}",
            f"base_url={url}/v1/completions",
            "tokenizer_backend=huggingface",
            f"tokenizer={tokenizer}",
            "num_concurrent=4",
            "max_retries=3",
        ]
    )
    cmd = [
        sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", args,
        "--tasks", "lexlora_clauses_mc,lexlora_clauses_gen", "--include_path", str(TASKS),
        "--output_path", str(out), "--log_samples",
    ]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": KEY, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return out


def samples(out: Path, task: str) -> list[dict]:
    (path,) = out.rglob(f"samples_{task}_*.jsonl")
    return sorted(read_jsonl(path), key=lambda s: s["doc_id"])


def results(out: Path) -> dict:
    (path,) = out.rglob("results_*.json")
    return json.loads(path.read_text())["results"]


def continuation_logprob(tok, model, context: str, continuation: str) -> float:
    """lm-eval's split (encode the whole, then the context) scored in one unpadded pass."""
    context_ids = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole])).logits[0]
    scores = torch.log_softmax(logits.float(), dim=-1)
    return sum(scores[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole)))


def test_lm_eval_scores_through_lexlora_serve_equal_in_process(served):
    engine, url, base, adapter, tmp = served
    out = run_lm_eval(url, base, tmp / "lm-eval-out")
    tok = AutoTokenizer.from_pretrained(base)
    model = offline_model(base, [(adapter, 1.0)])

    mc = samples(out, "lexlora_clauses_mc")
    docs = read_jsonl(TASKS / "clauses_mc.jsonl")
    assert len(mc) == len(docs)  # every item scored
    correct = 0
    for sample, doc in zip(mc, docs, strict=True):
        local = [
            continuation_logprob(tok, model, doc["question"], " " + choice)
            for choice in doc["choices"]
        ]
        served_ll = [float(r[0][0]) for r in sample["resps"]]
        assert served_ll == pytest.approx(local, abs=TOLERANCE[engine])
        correct += int(max(range(len(local)), key=local.__getitem__) == doc["label"])
    accuracy = results(out)["lexlora_clauses_mc"]["acc,none"]
    assert accuracy == pytest.approx(correct / len(docs))

    gen = samples(out, "lexlora_clauses_gen")
    docs = read_jsonl(TASKS / "clauses_gen.jsonl")
    assert len(gen) == len(docs)
    for sample, doc in zip(gen, docs, strict=True):
        ids = tok(doc["question"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            new = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        text = tok.decode(new[0, len(ids) :], skip_special_tokens=True).split("\n")[0]
        assert sample["resps"][0][0] == text
