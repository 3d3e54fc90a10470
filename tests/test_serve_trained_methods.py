"""Serving the tiny model's trained adapters of every method on the embedded engine: rows
of LoRA, prompt-tuned and new-token adapters (and the base) in flight together, each exact
against offline PEFT."""

from __future__ import annotations

import asyncio

import pytest
import torch
from support import METHODS, TERMS

from lexlora.adapter_methods import load_adapted
from lexlora.artifacts.adapter import check_engine
from lexlora.errors import LexloraError
from lexlora.serve.engines.base import GenerationRequest, SamplingParams
from lexlora.serve.engines.embedded import EmbeddedEngine

PROMPT = "The Effective Date of the Confidential Information clause is"
N = 10


def name(method: str) -> str:
    return "acme--" + method.replace("+", "-")


def offline(tiny_model, folder, prompt: str) -> tuple[list[int], str, torch.Tensor]:
    """Prompt ids, greedy text and prompt log-probs ``[len, vocab]`` from offline PEFT."""
    model, tokenizer = load_adapted(str(tiny_model), folder)
    ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=N,
            do_sample=False,
        )
        logits = model(input_ids=torch.tensor([ids])).logits[0, -len(ids) :]
    text = tokenizer.decode(out[0, -N:], skip_special_tokens=True)
    return ids, text, torch.log_softmax(logits.float(), dim=-1)


@pytest.fixture(scope="module")
def references(tiny_model, method_runs):
    return {m: offline(tiny_model, method_runs[m] / "adapter", PROMPT) for m in METHODS}


def test_every_method_in_one_batch_equals_offline_peft(tiny_model, method_runs, references):
    base_ids = references["lora"][0]
    greedy = SamplingParams(max_tokens=N, temperature=0, ignore_eos=True)
    score = SamplingParams(max_tokens=0)

    async def scenario():
        engine = EmbeddedEngine(str(tiny_model), max_batch_size=16, batch_wait_ms=20, threads=1)
        await engine.start()
        try:
            for method in METHODS:
                await engine.load_adapter(name(method), method_runs[method] / "adapter")
            requests = [GenerationRequest(base_ids, greedy)]
            for method in METHODS:
                ids = references[method][0]
                requests += [
                    GenerationRequest(ids, greedy, adapter=name(method)),
                    GenerationRequest(ids, score, adapter=name(method), prompt_logprobs=1),
                ]
            return await engine.generate(requests)
        finally:
            await engine.close()

    results = asyncio.run(scenario())
    for i, method in enumerate(METHODS):
        ids, text, logprobs = references[method]
        generated, scored = results[1 + 2 * i], results[2 + 2 * i]
        assert generated.text == text, method
        assert generated.prompt_tokens == len(ids)  # virtual tokens are not the user's
        entries = scored.prompt_logprobs
        assert [e.token for e in entries] == ids[1:], method
        expected = logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        got = torch.tensor([e.logprob for e in entries])
        assert torch.allclose(got, expected, atol=1e-4), (method, (got - expected).abs().max())
        assert all(t < logprobs.shape[-1] for e in entries for t, _ in e.top)
    with_terms = [references[m][0] for m in ("new_tokens", "lora+new_tokens")]
    assert all(len(ids) < len(base_ids) for ids in with_terms)  # each term is one token


def test_new_term_generated_decodes_with_the_adapters_tokenizer(tiny_model, method_runs):
    """A new-token row whose next token is forced to be a term decodes it as the term."""
    folder = method_runs["new_tokens"] / "adapter"
    _, tokenizer = load_adapted(str(tiny_model), folder)
    ids = tokenizer("Notices: the")["input_ids"]

    async def scenario():
        engine = EmbeddedEngine(str(tiny_model), batch_wait_ms=0, threads=1)
        await engine.start()
        try:
            await engine.load_adapter("nt", folder)
            request = GenerationRequest(
                ids, SamplingParams(max_tokens=1, temperature=0, logprobs=5), adapter="nt"
            )
            return (await engine.generate([request]))[0]
        finally:
            await engine.close()

    result = asyncio.run(scenario())
    token = result.logprobs[0].token
    assert result.text == tokenizer.decode([token], skip_special_tokens=True)
    assert all(t < len(tokenizer) for t, _ in result.logprobs[0].top)


def test_engines_that_cannot_serve_a_method_say_so():
    with pytest.raises(LexloraError, match="engine 'vllm' cannot serve"):
        check_engine("prompt_tuning", "vllm", "terms")
    check_engine("lora", "vllm", "x")
    assert TERMS


def test_published_methods_through_the_http_server(tiny_model, method_runs, references, tmp_path):
    """Each method exported and published, then asked through `lexlora serve`: greedy text and
    echoed log-probs (a prompt with the new terms) equal offline PEFT; strength on a prompt-tuned
    adapter is a 400 naming the field."""
    import httpx

    from lexlora.export.exporter import export_run
    from lexlora.registry import AdapterStore
    from lexlora.serve.launch import serve_process
    from lexlora.serve.tenants import hash_key

    store = AdapterStore(tmp_path / "store")
    for method in METHODS:
        export_run(method_runs[method], "acme", name(method), store=store, log=lambda _: None)
    config = {
        "base_model": str(tiny_model),
        "store": str(store.root),
        "max_loras": 4,
        "threads": 1,
        "tenants": {"acme": {"api_key_sha256": [hash_key("sk-acme")]}},
    }
    headers = {"Authorization": "Bearer sk-acme"}
    with serve_process(config, tmp_path) as served:
        url = served.url

        def post(body: dict) -> httpx.Response:
            return httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=60)

        for method in METHODS:
            ids, text, logprobs = references[method]
            body = {"model": name(method), "prompt": PROMPT, "temperature": 0}
            got = post({**body, "max_tokens": N, "ignore_eos": True}).json()
            assert got["choices"][0]["text"] == text, method
            scored = post({**body, "max_tokens": 0, "echo": True, "logprobs": 0}).json()
            values = scored["choices"][0]["logprobs"]["token_logprobs"]
            expected = logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
            assert values[0] is None and len(values) == len(ids), method
            assert torch.allclose(torch.tensor(values[1:]), expected, atol=1e-4), method
            if "new_tokens" in method:
                assert set(TERMS) <= set(scored["choices"][0]["logprobs"]["tokens"])
        refused = post({"model": name("prompt_tuning"), "prompt": PROMPT, "lora_scale": 0.5})
        assert refused.status_code == 400
        assert "lora_scale" in refused.json()["error"]["message"]


def test_serve_verify_offline_side_handles_every_method(tiny_model, method_runs):
    """`lexlora serve verify` computes each method's greedy completions offline (prompt tuning
    and new tokens by PEFT's uncached forward) exactly as the embedded engine serves them."""
    from lexlora.serve.verify import PROMPTS, offline

    folders = {m: method_runs[m] / "adapter" for m in METHODS}
    expected = offline(str(tiny_model), folders, list(PROMPTS), N)

    async def scenario():
        engine = EmbeddedEngine(str(tiny_model), max_batch_size=16, batch_wait_ms=20, threads=1)
        await engine.start()
        try:
            requests = []
            for method in METHODS:
                await engine.load_adapter(name(method), folders[method])
                _, tokenizer = load_adapted(str(tiny_model), folders[method])
                requests += [
                    GenerationRequest(
                        tokenizer(p)["input_ids"],
                        SamplingParams(max_tokens=N, temperature=0),
                        adapter=name(method),
                    )
                    for p in PROMPTS
                ]
            return await engine.generate(requests)
        finally:
            await engine.close()

    served = asyncio.run(scenario())
    for i, method in enumerate(METHODS):
        got = [
            (g.text, g.completion_tokens) for g in served[i * len(PROMPTS) : (i + 1) * len(PROMPTS)]
        ]
        assert got == expected[method], method
