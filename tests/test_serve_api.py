"""`lexlora serve`'s OpenAI surface, the same for every engine: a real server process per engine
(the vLLM one is skipped without `.venv-vllm`), the official OpenAI client, two tenants, outputs
checked token for token against HF + PEFT run offline. What is particular to one engine is in
test_serve_embedded.py and test_serve_vllm.py."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from serve_harness import ACME_KEY, BETA_KEY, ENGINES, PROMPT, N, Server, complete, serve
from serve_reference import offline


@pytest.fixture(scope="module", params=ENGINES)
def server(request, published, tiny_model, tmp_path_factory) -> Iterator[Server]:
    with serve(request.param, published, tiny_model, tmp_path_factory.mktemp("api")) as srv:
        yield srv


# --- models ---------------------------------------------------------------------------------------


def test_health_and_models_list_only_the_callers_adapters(server, published):
    assert server.get("/health", key=None).json()["status"] == "ok"
    acme = [m.id for m in server.client(ACME_KEY).models.list()]
    beta = [m.id for m in server.client(BETA_KEY).models.list()]
    assert acme == ["base", "clauses", "clauses:1", "contracts", "contracts:1", "wide", "wide:1"]
    assert beta == ["base", "filings", "filings:1"]
    cards = server.get("/v1/models", key=BETA_KEY).json()["data"]
    assert {c["owned_by"] for c in cards[1:]} == {"beta"} and cards[1]["parent"] == "base"
    assert server.get("/v1/models/filings", key=BETA_KEY).json() == cards[1]
    assert server.client(ACME_KEY).models.retrieve("contracts:1").owned_by == "acme"
    missing = server.get("/v1/models/no-such-adapter", key=BETA_KEY)
    assert missing.status_code == 404
    for foreign in ("contracts", "contracts:1", "clauses@latest", "acme--contracts--v1"):
        assert server.get(f"/v1/models/{foreign}", key=BETA_KEY).content == missing.content


# --- completions, chat, streams -------------------------------------------------------------------


def test_each_adapter_equals_offline_peft_and_they_differ(server, published, tiny_model, tok):
    ids = tok(PROMPT)["input_ids"]
    base = complete(server, "base")
    acme = complete(server, "contracts")
    beta = complete(server, "filings", key=BETA_KEY)
    assert base == offline(tiny_model, ids)
    assert acme == offline(tiny_model, ids, [(published.contracts.path, 1.0)])
    assert beta == offline(tiny_model, ids, [(published.filings.path, 1.0)])
    assert len({base, acme, beta}) == 3
    assert complete(server, "contracts:1") == acme == complete(server, "contracts@latest")


def test_completion_shape_and_usage(server, tok):
    for model in ("contracts", "contracts:1"):
        r = server.client().completions.create(model=model, prompt=PROMPT, max_tokens=5)
        assert r.object == "text_completion" and r.model == model and r.id.startswith("cmpl-")
        assert r.choices[0].finish_reason in ("length", "stop")
        assert r.usage.prompt_tokens == len(tok(PROMPT)["input_ids"])
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert 1 <= r.usage.completion_tokens <= 5


def test_chat_uses_the_chat_template_and_equals_offline(server, published, tiny_model, tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    r = server.client().chat.completions.create(
        model="contracts", messages=messages, max_tokens=N, temperature=0
    )
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    expected = offline(tiny_model, ids, [(published.contracts.path, 1.0)])
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected
    assert r.usage.prompt_tokens == len(ids)
    chunks = list(
        server.client().chat.completions.create(
            model="contracts",
            messages=messages,
            max_tokens=N,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_streams_concatenate_to_the_plain_greedy_text(server):
    for model, key in (("contracts", ACME_KEY), ("filings", BETA_KEY)):
        plain = complete(server, model, key=key, max_tokens=24)
        stream = server.client(key).completions.create(
            model=model, prompt=PROMPT, max_tokens=24, temperature=0, stream=True
        )
        assert "".join(c.choices[0].text for c in stream if c.choices) == plain, model

    messages = [{"role": "user", "content": "Who pays?"}]
    whole = server.client().chat.completions.create(
        model="contracts", messages=messages, max_tokens=24, temperature=0
    )
    chunks = list(
        server.client().chat.completions.create(
            model="contracts",
            messages=messages,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] is not None


def test_sse_wire_format_ends_with_done(server):
    body = {"model": "base", "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", server.url + "/v1/completions", json=body,
        headers={"Authorization": f"Bearer {ACME_KEY}"}, timeout=60,
    ) as r:  # fmt: skip
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_strings_seed_and_sampling(server):
    full = complete(server, "contracts", max_tokens=24)
    cut = next(
        i for i in range(3, len(full) - 1) if full[i : i + 2].isascii() and full[i].isalnum()
    )
    stop = full[cut : cut + 2]
    r = server.client().completions.create(
        model="contracts", prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop]
    )
    assert r.choices[0].text == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"
    sample = dict(temperature=1.0, top_p=0.9, max_tokens=12)
    a = complete(server, "contracts", seed=7, **sample)
    assert a == complete(server, "contracts", seed=7, **sample)
    assert a != complete(server, "contracts", seed=8, **sample)


# --- adapter strength and composition -------------------------------------------------------------


def test_lora_scale_is_exact_against_peft_rescale(server, published, tiny_model, tok):
    ids = tok(PROMPT)["input_ids"]
    half = complete(server, "contracts", extra_body={"lora_scale": 0.5})
    assert half == offline(tiny_model, ids, [(published.contracts.path, 1.0)], scale=0.5)
    assert half != complete(server, "contracts")
    assert complete(server, "contracts", extra_body={"lora_scale": 0}) == complete(server, "base")
    assert complete(server, "contracts", extra_body={"lora_scale": 1.0}) == complete(
        server, "contracts"
    )
    r = server.post("/v1/completions", {"model": "contracts", "prompt": "x", "lora_scale": 2.5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "lora_scale"


def test_composition_is_exact_against_peft_cat(server, published, tiny_model, tok):
    ids = tok(PROMPT)["input_ids"]
    mix = [{"name": "contracts", "weight": 0.6}, {"name": "clauses@latest", "weight": 0.8}]
    text = complete(server, "base", extra_body={"adapters": mix})
    parts = [(published.contracts.path, 0.6), (published.clauses.path, 0.8)]
    assert text == offline(tiny_model, ids, parts)
    scaled = complete(server, "base", extra_body={"adapters": mix, "lora_scale": 0.5})
    assert scaled == offline(tiny_model, ids, [(p, w * 0.5) for p, w in parts])
    r = server.post("/v1/completions", {"model": "contracts", "prompt": "x", "adapters": mix})
    assert r.status_code == 400 and "base model" in r.json()["error"]["message"]


# --- tenants and errors ---------------------------------------------------------------------------

FOREIGN = [
    "contracts", "contracts:1", "contracts@latest", "clauses", "acme/contracts", "acme:contracts",
    "acme--contracts--v1", "acme--contracts", "acme--w0123456789abcdef", "../acme/contracts",
    "../../acme/contracts/1", "filings/../../acme/contracts", "/etc/passwd", "..", ".", "",
    " contracts", "CONTRACTS", "contracts:0", "contracts:-1", "contracts:99999999999999999999",
    "contracts\x00", "contracts@", "x" * 300, "filings:7", "filings@prod",
]  # fmt: skip


def test_other_tenants_adapters_are_indistinguishable_from_missing_ones(server):
    complete(server, "contracts")  # acme's adapter is resident, under its internal name
    missing = server.post("/v1/completions", {"model": "no-such-adapter", "prompt": "x"}, BETA_KEY)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    for name in FOREIGN:
        chat = {"model": name, "messages": [{"role": "user", "content": "x"}]}
        for path, body in (
            ("/v1/completions", {"model": name, "prompt": "x"}),
            ("/v1/chat/completions", chat),
        ):
            r = server.post(path, body, BETA_KEY)
            assert (r.status_code, r.content) == (404, missing.content), name
    # composition with another tenant's adapter: the same 404 as a missing one
    comp = lambda n: {"model": "base", "prompt": "x", "adapters": [{"name": n, "weight": 1}]}  # noqa: E731
    ref = server.post("/v1/completions", comp("no-such-adapter"), BETA_KEY)
    assert ref.status_code == 404
    for name in ("contracts", "clauses@latest", "acme--contracts--v1", "../acme/contracts"):
        assert server.post("/v1/completions", comp(name), BETA_KEY).content == ref.content
    # and the other way round
    assert server.post("/v1/completions", {"model": "filings", "prompt": "x"}).status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": 5.5}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"stop": 5}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"n": 2}, "n"),
        ({"logit_bias": "x"}, "logit_bias"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"lora_scale": -1}, "lora_scale"),
        ({"adapters": [{"name": "contracts"}]}, "adapters.0.weight"),
        ({"adapters": "contracts"}, "adapters"),
        ({"prompt": None}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[1, 2], []]}, "prompt"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": [1, 10**9]}, "prompt"),
        ({"prompt": [[1, 2], [3, 10**9]]}, "prompt.1"),
        ({"prompt": ["a"] * 129}, "prompt"),
        ({"prompt": ["a", "b"], "stream": True}, "prompt"),
        ({"echo": "yes"}, "echo"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"model": 5}, "model"),
        ({"prompt": "word " * 3000}, "prompt"),
        ({"max_tokens": 5000}, "prompt"),
    ],
)
def test_bad_parameters_are_400_in_openai_shape(server, body, param):
    r = server.post("/v1/completions", {"model": "contracts", "prompt": PROMPT, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert error["type"] == "invalid_request_error" and error["message"]


def test_no_request_above_was_a_server_error(server):
    assert 'status="500"' not in server.get("/metrics", key=None).text
