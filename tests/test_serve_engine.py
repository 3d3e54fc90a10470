"""The embedded engine in-process: rows joining a running batch, cancelling, adapter life."""

from __future__ import annotations

import asyncio

import pytest
from transformers import AutoTokenizer

from lexlora.serve.engines.base import EngineError, GenerationRequest, SamplingParams, TextDelta
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
        engine = EmbeddedEngine(str(tiny_model), max_batch_size=4, batch_wait_ms=0, threads=1, **kw)
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
