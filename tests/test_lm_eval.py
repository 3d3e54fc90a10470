"""lm-evaluation-harness against `lexlora serve` (a real server process on 127.0.0.1): the
`lm_eval` CLI scores a local multiple-choice task (prompt log-likelihoods: echo + logprobs) and a
local generation task through `local-completions`, 4 requests at a time, and every figure equals
lexlora's in-process HF + PEFT computation on the same items."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import running_server
from serve_reference import offline_logprobs, offline_model, sha
from transformers import AutoTokenizer

from lexlora.export.exporter import export_run
from lexlora.registry import AdapterStore

pytest.importorskip("lm_eval", reason="lm-eval is a dev dependency: run `make setup`")

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tests" / "lm_eval"
KEY = "sk-lm-eval"
TOLERANCE = 1e-4


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def served(tiny_model, tiny_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm-eval")
    store = AdapterStore(tmp / "store")
    adapter = export_run(tiny_run, "acme", "contracts", store=store, log=lambda *_: None)
    config = {
        "base_model": str(tiny_model),
        "store": str(store.root),
        "max_batch_size": 8,
        "max_queue": 16,
        "threads": 1,
        "tenants": {"acme": {"api_key_sha256": [sha(KEY)], "adapters": ["contracts"]}},
    }
    with running_server(config, tmp) as (url, _):
        yield url, adapter.published.path, tmp


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


def continuation_logprob(tok, logprobs_of, context: str, continuation: str) -> float:
    """lm-eval's split (encode the whole, then the context) scored in one unpadded pass."""
    context_ids = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    scores = logprobs_of(whole)
    return sum(scores[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole)))


def test_lm_eval_scores_through_lexlora_serve_equal_in_process(served, tiny_model):
    url, adapter, tmp = served
    out = run_lm_eval(url, tiny_model, tmp / "lm-eval-out")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    parts = [(adapter, 1.0)]

    mc = samples(out, "lexlora_clauses_mc")
    docs = read_jsonl(TASKS / "clauses_mc.jsonl")
    assert len(mc) == len(docs)  # every item scored
    correct = 0
    for sample, doc in zip(mc, docs, strict=True):
        local = [
            continuation_logprob(
                tok,
                lambda ids: offline_logprobs(tiny_model, ids, parts),
                doc["question"],
                " " + choice,
            )
            for choice in doc["choices"]
        ]
        served_ll = [float(r[0][0]) for r in sample["resps"]]
        assert all(abs(a - b) < TOLERANCE for a, b in zip(served_ll, local, strict=True))
        correct += int(max(range(len(local)), key=local.__getitem__) == doc["label"])
    accuracy = results(out)["lexlora_clauses_mc"]["acc,none"]
    assert accuracy == pytest.approx(correct / len(docs))

    gen = samples(out, "lexlora_clauses_gen")
    docs = read_jsonl(TASKS / "clauses_gen.jsonl")
    assert len(gen) == len(docs)
    model = offline_model(tiny_model, parts)
    for sample, doc in zip(gen, docs, strict=True):
        ids = tok(doc["question"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            new = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        text = tok.decode(new[0, len(ids) :], skip_special_tokens=True).split("\n")[0]
        assert sample["resps"][0][0] == text
