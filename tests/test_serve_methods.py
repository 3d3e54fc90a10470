"""Serving the four adapter methods (lora, prompt_tuning, new_tokens, lora+new_tokens) with the
embedded engine: rows of every method in one batch, each exact against offline PEFT
(:func:`lexlora.adapter_methods.load_adapted`); the vLLM engine and scaling refuse non-LoRA."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, TrainableTokensConfig, get_peft_model
from starlette.testclient import TestClient
from support import build_tiny_llama
from test_serve_engine import run
from transformers import AutoModelForCausalLM, AutoTokenizer

from lexlora.adapter_methods import add_terms, load_adapted
from lexlora.artifacts.adapter import base_config_hash, check_engine, write_new_tokens
from lexlora.errors import LexloraError
from lexlora.registry import AdapterStore
from lexlora.serve.engines.base import (
    AdapterPart,
    EngineError,
    GenerationRequest,
    SamplingParams,
    collect,
)
from lexlora.serve.engines.embedded import EmbeddedEngine
from lexlora.serve.tenants import hash_key

TERMS = ["Licensor", "Sublicensee"]
N = 12  # completion tokens in the comparisons
K = 3  # top alternatives in the log-prob comparisons
PROMPT = "The Licensor grants the Sublicensee a licence"
NAMES = {
    "lora": "a-lora",
    "prompt_tuning": "a-pt",
    "new_tokens": "a-nt",
    "lora+new_tokens": "a-lnt",
}


def build_artefact(base: Path, folder: Path, method: str, seed: int) -> Path:
    """A "trained" adapter of ``method`` on ``base``: PEFT's fresh weights perturbed at random."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base)
    vocab = len(tokenizer)
    ids: list[int] = []
    if method in ("new_tokens", "lora+new_tokens"):
        ids = add_terms(model, tokenizer, TERMS)
    if method == "prompt_tuning":
        config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    elif method == "new_tokens":
        config = TrainableTokensConfig(token_indices=ids)
    else:
        config = LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "o_proj"],
            trainable_token_indices=ids or None,
        )
    peft = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "prompt_encoder" in name or "trainable_tokens_delta" in name:
                param.copy_(torch.randn_like(param) * 0.5)
            elif "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.3)
    peft.save_pretrained(folder, save_embedding_layers=False)
    if ids:
        tokenizer.save_pretrained(folder)
        write_new_tokens(folder, TERMS, ids, vocab)
    return folder


@pytest.fixture(scope="module", params=["untied", "tied"])
def setup(request, tiny_model, tmp_path_factory):
    """(base model folder, {method: adapter folder}) on the tiny model, untied or tied."""
    tmp = tmp_path_factory.mktemp(f"methods-{request.param}")
    if request.param == "untied":
        base = Path(tiny_model)
    else:
        base = tmp / "tied-base"
        texts = ["The Licensor grants the Sublicensee a licence to the Software."] * 5
        build_tiny_llama(base, texts)
        model = AutoModelForCausalLM.from_pretrained(base)
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
        model.save_pretrained(base)
    folders = {
        m: build_artefact(base, tmp / m.replace("+", "-"), m, seed=i) for i, m in enumerate(NAMES)
    }
    return base, folders


def offline(base: Path, folder: Path | None, ids: list[int], n: int = N):
    """Offline PEFT: greedy ids (full forward each step) and the prompt's log_softmax rows
    (row i predicts token i + 1; virtual tokens dropped)."""
    if folder is None:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        virtual = 0
    else:
        model, _ = load_adapted(str(base), folder)
        virtual = getattr(model.peft_config["default"], "num_virtual_tokens", 0) or 0
        if model.peft_config["default"].peft_type.value != "PROMPT_TUNING":
            virtual = 0
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, virtual:]
        prompt = torch.log_softmax(logits.float(), dim=-1)
        seq = list(ids)
        for _ in range(n):
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids) :], prompt


def tokenizer_of(base: Path, folders: dict, method: str | None):
    folder = folders[method] if method and "new_tokens" in method else base
    return AutoTokenizer.from_pretrained(folder)


def run_engine(base: Path, scenario):
    return run(base, scenario, max_batch_size=8, batch_wait_ms=20)


def test_every_method_in_one_batch_equals_offline_peft(setup):
    base, folders = setup
    methods = [None, *NAMES]
    prompts = {m: tokenizer_of(base, folders, m)(PROMPT)["input_ids"] for m in methods}
    vocab = len(AutoTokenizer.from_pretrained(base))
    for m in ("new_tokens", "lora+new_tokens"):  # the terms are single new ids
        assert [vocab, vocab + 1] == [i for i in prompts[m] if i >= vocab]

    async def scenario(engine: EmbeddedEngine):
        for m, name in NAMES.items():
            await engine.load_adapter(name, folders[m])
        sampling = SamplingParams(max_tokens=N, temperature=0, ignore_eos=True, logprobs=K)
        requests = [
            GenerationRequest(prompts[m], sampling, adapter=NAMES.get(m), prompt_logprobs=K)
            for m in methods
        ]
        # generating rows and score-only rows of every method, all in flight together
        score_only = [
            GenerationRequest(prompts[m], SamplingParams(max_tokens=0), NAMES.get(m), None, K)
            for m in methods
        ]
        results = await asyncio.gather(*(collect(engine.stream(r)) for r in requests + score_only))
        return results, engine.stats()

    results, stats = run_engine(base, scenario)
    assert stats.peak_batch >= 2
    texts = set()
    for i, m in enumerate(methods):
        ids = prompts[m]
        tokens, reference = offline(base, folders.get(m) if m else None, ids)
        got = results[i]
        assert [e.token for e in got.logprobs] == tokens, m
        assert got.text == tokenizer_of(base, folders, m).decode(tokens, skip_special_tokens=True)
        assert got.prompt_tokens == len(ids)  # the user's tokens (no virtual ones)
        assert got.completion_tokens == N
        texts.add(got.text)
        for scored in (got, results[len(methods) + i]):
            entries = scored.prompt_logprobs
            assert entries is not None and len(entries) == len(ids) - 1, m
            for j, entry in enumerate(entries):
                row = reference[j]
                assert entry.token == ids[j + 1]
                assert entry.logprob == pytest.approx(float(row[ids[j + 1]]), abs=1e-4)
                values, top = row.topk(K)
                assert [t for t, _ in entry.top] == top.tolist(), (m, j)
                assert [v for _, v in entry.top] == pytest.approx(values.tolist(), abs=1e-4)
    assert len(texts) == len(methods)  # every adapter changes the output


def test_new_terms_decode_with_the_adapters_tokenizer(setup):
    base, folders = setup
    vocab = len(AutoTokenizer.from_pretrained(base))

    async def scenario(engine: EmbeddedEngine):
        await engine.load_adapter("pt", folders["prompt_tuning"])  # takes the first range
        await engine.load_adapter("nt", folders["new_tokens"])
        ext = engine._extensions.by_adapter["nt"]
        assert ext.to_engine([vocab + 1]) != [vocab + 1]  # a range of its own
        engine_ids = ext.to_engine(
            AutoTokenizer.from_pretrained(folders["new_tokens"])(PROMPT)["input_ids"]
        )
        return ext.decode(engine_ids)

    assert run_engine(base, scenario) == PROMPT


def test_unloading_and_reloading_keeps_rows_exact(setup):
    base, folders = setup
    ids = tokenizer_of(base, folders, "lora+new_tokens")(PROMPT)["input_ids"]
    tokens, _ = offline(base, folders["lora+new_tokens"], ids)

    async def scenario(engine: EmbeddedEngine):
        sampling = SamplingParams(max_tokens=N, temperature=0, ignore_eos=True, logprobs=0)
        await engine.load_adapter("nt", folders["new_tokens"])
        await engine.load_adapter("lnt", folders["lora+new_tokens"])
        await engine.unload_adapter("nt")
        first = await collect(engine.stream(GenerationRequest(ids, sampling, adapter="lnt")))
        await engine.unload_adapter("lnt")
        await engine.load_adapter("lnt", folders["lora+new_tokens"])
        again = await collect(engine.stream(GenerationRequest(ids, sampling, adapter="lnt")))
        return first, again

    first, again = run_engine(base, scenario)
    assert [e.token for e in first.logprobs] == tokens == [e.token for e in again.logprobs]


def test_scaling_a_non_lora_adapter_is_refused(setup):
    base, folders = setup

    async def scenario(engine: EmbeddedEngine):
        with pytest.raises(EngineError, match="prompt_tuning adapter"):
            await engine.load_weighted_adapter("w", [AdapterPart(folders["prompt_tuning"], 0.5)])

    run_engine(base, scenario)


def test_vllm_refuses_other_methods_by_name():
    check_engine("lora", "vllm", "contracts")
    with pytest.raises(LexloraError, match=r"adapter 'terms' is a new_tokens adapter.*'vllm'"):
        check_engine("new_tokens", "vllm", "terms")


def test_vllm_engine_load_refuses_non_lora(setup, tmp_path):
    from lexlora.serve.engines.vllm import VllmEngine

    _, folders = setup
    engine = VllmEngine.__new__(VllmEngine)  # no child process: the check runs before vLLM
    with pytest.raises(EngineError, match=r"lora\+new_tokens adapter.*'vllm'"):
        engine._check_method("acme--lnt", folders["lora+new_tokens"])
    engine._check_method("acme--lora", folders["lora"])


# --- through the gateway (in-process app) ------------------------------------------------------

KEY = "sk-acme-methods"


@pytest.fixture(scope="module")
def gateway(setup, tmp_path_factory):
    from lexlora.serve.app import create_app
    from lexlora.serve.config import validate_config
    from lexlora.serve.prompts import PromptEncoder

    base, folders = setup
    tmp = tmp_path_factory.mktemp("methods-gw")
    store = AdapterStore(tmp / "store")
    meta = {"base_model": str(base), "base_config_hash": base_config_hash(str(base))}
    for m, folder in folders.items():
        rank = 4 if "lora" in m else 0
        store.publish("acme", NAMES[m], folder, {**meta, "rank": rank, "method": m})
    config = validate_config(
        {
            "base_model": str(base),
            "store": str(store.root),
            "max_loras": 4,
            "batch_wait_ms": 20,
            "threads": 1,
            "tenants": {"acme": {"api_key_sha256": [hash_key(KEY)]}},
        }
    )
    engine = EmbeddedEngine(str(base), batch_wait_ms=20, threads=1)
    app = create_app(
        config, engine, PromptEncoder(engine.tokenizer), store, base_config_hash(str(base))
    )
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        yield client, base, folders


def test_gateway_encodes_new_terms_and_echoes_exact_scores(gateway):
    client, base, folders = gateway
    for m in NAMES:
        r = client.post(
            "/v1/completions",
            json={
                "model": NAMES[m],
                "prompt": PROMPT,
                "max_tokens": N,
                "temperature": 0,
                "ignore_eos": True,
                "echo": True,
                "logprobs": 1,
            },
        )
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        tok = tokenizer_of(base, folders, m)
        ids = tok(PROMPT)["input_ids"]
        tokens, reference = offline(base, folders[m], ids)
        assert choice["text"] == PROMPT + tok.decode(tokens, skip_special_tokens=True)
        lp = choice["logprobs"]
        assert lp["tokens"][: len(ids)] == [tok.decode([i]) for i in ids]
        assert lp["token_logprobs"][0] is None
        for j in range(1, len(ids)):
            assert lp["token_logprobs"][j] == pytest.approx(float(reference[j - 1][ids[j]]), 1e-4)
        assert r.json()["usage"]["prompt_tokens"] == len(ids)
        if "new_tokens" in m:
            assert "Licensor" in lp["tokens"][: len(ids)]


def test_gateway_refuses_scaling_non_lora_and_checks_the_adapters_vocab(gateway):
    client, base, _ = gateway
    r = client.post(
        "/v1/completions",
        json={"model": NAMES["prompt_tuning"], "prompt": "x", "max_tokens": 1, "lora_scale": 0.5},
    )
    assert r.status_code == 400 and "prompt_tuning adapter" in r.text and "a-pt" in r.text
    vocab = len(AutoTokenizer.from_pretrained(base))
    body = {"prompt": [1, vocab + 1], "max_tokens": 1, "temperature": 0}
    assert client.post("/v1/completions", json={**body, "model": NAMES["new_tokens"]}).is_success
    r = client.post("/v1/completions", json={**body, "model": NAMES["lora"]})
    assert r.status_code == 400 and "not in the vocabulary" in r.text
