"""The embedded engine in-process: rows joining a running batch, cancelling, adapter life."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoTokenizer

from lexlora.serve.engines.base import (
    EngineError,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextDelta,
)
from lexlora.serve.engines.embedded import EmbeddedEngine

ADAPTER = "acme--contracts--v1"


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def ids(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    return lambda text: tok(text)["input_ids"]


def run(tiny_model, scenario, **kw):
    async def main():
        settings = {"max_batch_size": 4, "batch_wait_ms": 0, "threads": 1, **kw}
        engine = EmbeddedEngine(str(tiny_model), **settings)
        await engine.start()
        try:
            return await scenario(engine)
        finally:
            await engine.close()

    return asyncio.run(main())


async def until(condition, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline
        await asyncio.sleep(0.002)


def test_rows_joining_a_running_batch_equal_their_solo_runs(tiny_model, tiny_run, ids):
    long = GenerationRequest(ids("The Customer shall pay all fees"), greedy(200))
    short = GenerationRequest(ids("Notices"), greedy(20), adapter=ADAPTER)

    async def scenario(engine: EmbeddedEngine):
        await engine.load_adapter(ADAPTER, tiny_run / "adapter")
        alone = [(await engine.generate([r]))[0].text for r in (long, short)]
        start = engine.stats().generated_tokens
        running = asyncio.ensure_future(engine.generate([long]))
        await until(lambda: engine.stats().generated_tokens >= start + 5)
        joined = (await engine.generate([short]))[0].text
        together = [(await running)[0].text, joined]
        await until(lambda: engine.stats().running == 0)
        return alone, together, engine.stats()

    alone, together, stats = run(tiny_model, scenario)
    assert together == alone and alone[0] != alone[1]
    assert stats.peak_batch == 2 and stats.resident_adapters == [ADAPTER]


def test_closing_a_stream_cancels_its_row(tiny_model, ids):
    async def scenario(engine: EmbeddedEngine):
        stream = engine.stream(GenerationRequest(ids("Payment"), greedy(1000)))
        deltas = 0
        async for event in stream:
            deltas += isinstance(event, TextDelta)
            if deltas == 3:
                break
        await stream.aclose()
        await until(lambda: engine.stats().running == 0)
        return engine.stats().generated_tokens

    assert run(tiny_model, scenario) < 1000


def test_adapter_life_cycle_and_unknown_adapters(tiny_model, tiny_run, ids):
    request = GenerationRequest(ids("Audit"), greedy(12))

    async def scenario(engine: EmbeddedEngine):
        base = (await engine.generate([request]))[0].text
        await engine.load_adapter(ADAPTER, tiny_run / "adapter")
        with_adapter = GenerationRequest(request.prompt_ids, request.sampling, ADAPTER)
        tuned = (await engine.generate([with_adapter]))[0].text
        await engine.unload_adapter(ADAPTER)  # the last one: back to the plain model
        again = (await engine.generate([request]))[0].text
        with pytest.raises(EngineError, match="not loaded"):
            await engine.generate([with_adapter])
        return base, tuned, again

    base, tuned, again = run(tiny_model, scenario)
    assert base == again != tuned


def test_a_failing_row_fails_alone_and_the_others_finish_as_if_alone(
    tiny_model, tiny_run, tmp_path, ids
):
    """Rows that fail in seeding, sampling, prefill or a later decode step end with their own
    error; every other row of the same batch gives exactly its solo text."""
    from serve_reference import random_adapter

    from lexlora.serve.engines.rows import Row

    engine = EmbeddedEngine(str(tiny_model), threads=1)  # not started: this thread is its worker
    engine._load(ADAPTER, tiny_run / "adapter")
    engine._load("doomed", random_adapter(tiny_model, tmp_path / "rand"))
    sampled = SamplingParams(max_tokens=12, temperature=0.8, seed=5, ignore_eos=True)
    good = {
        "base": GenerationRequest(ids("The Customer shall pay"), greedy(12)),
        "tuned": GenerationRequest(ids("Notices"), greedy(12), adapter=ADAPTER),
        "sampled": GenerationRequest(ids("Audit"), sampled),
    }
    bad = {
        "seed": GenerationRequest(ids("x"), SamplingParams(max_tokens=12, seed=2**64)),
        "temperature": GenerationRequest(
            ids("y"), SamplingParams(max_tokens=12, temperature=1e-300)
        ),
        "unknown adapter": GenerationRequest(ids("z"), greedy(12), adapter="never-loaded"),
        "unloaded mid-way": GenerationRequest(ids("w"), greedy(12), adapter="doomed"),
    }

    def run_batch(requests: dict[str, GenerationRequest], after_steps=None) -> dict[str, list]:
        events: dict[str, list] = {name: [] for name in requests}
        batch = engine.new_batch()
        batch.add([Row(r, events[name].append) for name, r in requests.items()])
        steps = 0
        while batch.rows:
            batch.step()
            steps += 1
            if steps == 3 and after_steps:
                after_steps()
        return events

    def text(events: list) -> str:
        assert isinstance(events[-1], Finished) and events[-1].completion_tokens == 12
        return "".join(e.text for e in events if isinstance(e, TextDelta))

    with torch.no_grad():
        alone = {name: text(run_batch({name: r})[name]) for name, r in good.items()}
        together = run_batch({**good, **bad}, after_steps=lambda: engine._unload("doomed"))
    for name in good:
        assert text(together[name]) == alone[name], name
    for name in bad:
        assert isinstance(together[name][-1], Exception), (name, together[name])
        assert sum(isinstance(e, Exception) for e in together[name]) == 1
    assert not any(isinstance(e, TextDelta) for e in together["seed"] + together["temperature"])
    assert any(isinstance(e, TextDelta) for e in together["unloaded mid-way"])  # ran, then failed
