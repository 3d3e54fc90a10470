"""`lexlora serve` with the embedded engine: a real server process, the official OpenAI client,
two tenants; what the embedded engine does beyond the API checks every engine passes
(test_serve_api.py): mixed batches, scoring (echo, log-probs, token-id prompts) checked against
HF + PEFT run offline, keys and admin routes, capacity, disconnects, hot reload, metrics."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from serve_harness import (
    ACME_KEY,
    ADMIN_KEY,
    BETA_KEY,
    MAX_QUEUE,
    OLD_BETA_KEY,
    PROMPT,
    TOLERANCE,
    N,
    Server,
    assert_scores_equal,
    complete,
    score,
    serve,
)
from serve_reference import offline_logprobs, offline_model

from lexlora.registry import AdapterStore
from lexlora.serve.tenants import hash_key


@pytest.fixture(scope="module")
def server(published, tiny_model, tmp_path_factory) -> Iterator[Server]:
    with serve("embedded", published, tiny_model, tmp_path_factory.mktemp("serve-run")) as srv:
        yield srv


# --- mixed batches --------------------------------------------------------------------------------


def test_mixed_batch_rows_equal_each_alone(server):
    extra = {"ignore_eos": True}
    jobs = [("base", ACME_KEY), ("contracts", ACME_KEY), ("filings", BETA_KEY)]
    alone = [complete(server, m, key=k, max_tokens=48, extra_body=extra) for m, k in jobs]

    async def together() -> list[str]:
        clients = {k: openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=k) for _, k in jobs}
        calls = [
            clients[k].completions.create(
                model=m, prompt=PROMPT, max_tokens=48, temperature=0, extra_body=extra
            )
            for m, k in jobs
        ]
        return [r.choices[0].text for r in await asyncio.gather(*calls)]

    assert asyncio.run(together()) == alone
    assert server.metric("lexlora_engine_peak_batch_rows") >= 3  # one forward pass, 3 adapters


# --- scoring: echo, logprobs, token-id prompts ----------------------------------------------------


def test_echo_scores_equal_offline_log_softmax_for_every_variant(
    server, published, tiny_model, tok
):
    ids = tok("The Customer shall pay all fees within thirty days of the invoice")["input_ids"]
    contracts, clauses = published.contracts.path, published.clauses.path
    mix = [{"name": "contracts", "weight": 0.6}, {"name": "clauses", "weight": 0.8}]
    cases = [
        ("base", {}, offline_logprobs(tiny_model, ids)),
        ("contracts", {}, offline_logprobs(tiny_model, ids, [(contracts, 1.0)])),
        (
            "contracts",
            {"lora_scale": 0.5},
            offline_logprobs(tiny_model, ids, [(contracts, 1.0)], scale=0.5),
        ),
        (
            "base",
            {"adapters": mix},
            offline_logprobs(tiny_model, ids, [(contracts, 0.6), (clauses, 0.8)]),
        ),
    ]
    for model, extra, reference in cases:
        body = score(server, model, ids, **extra)
        (choice,) = body["choices"]
        assert choice["text"] == tok.decode(ids) and choice["finish_reason"] == "length"
        assert body["usage"] == {
            "prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)
        }  # fmt: skip
        assert_scores_equal(choice, ids, reference, tok, 3)
    base, adapter = (score(server, m, ids)["choices"][0]["logprobs"] for m in ("base", "contracts"))
    assert base["token_logprobs"] != adapter["token_logprobs"]


def test_every_prompt_form_gives_one_choice_per_prompt(server, tok):
    texts = ["The Customer shall pay", "Notices shall be given in writing", "Term"]
    ids = [tok(t)["input_ids"] for t in texts]
    alone = [score(server, "contracts", i)["choices"][0] for i in ids]
    by_ids = score(server, "contracts", ids)
    by_text = score(server, "contracts", texts)
    for body in (by_ids, by_text):
        assert [c["index"] for c in body["choices"]] == [0, 1, 2]
        assert body["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
        for choice, single in zip(body["choices"], alone, strict=True):
            assert choice["logprobs"]["tokens"] == single["logprobs"]["tokens"]
            for a, b in zip(
                choice["logprobs"]["token_logprobs"][1:],
                single["logprobs"]["token_logprobs"][1:],
                strict=True,
            ):
                assert abs(a - b) < TOLERANCE
    assert [c["text"] for c in by_text["choices"]] == texts  # a text prompt is echoed as sent
    one = score(server, "contracts", texts[0])["choices"][0]["logprobs"]["token_logprobs"]
    assert one == score(server, "contracts", [texts[0]])["choices"][0]["logprobs"]["token_logprobs"]
    generated = server.post(
        "/v1/completions",
        {"model": "contracts", "prompt": texts, "max_tokens": N, "temperature": 0},
    ).json()
    assert [c["text"] for c in generated["choices"]] == [
        complete(server, "contracts", prompt=t) for t in texts
    ]


def test_generated_logprobs_are_the_models_own(server, published, tiny_model, tok):
    """lm-evaluation-harness's request (echo, logprobs 1, max_tokens 1) and plain generation with
    logprobs: every generated token's log-prob equals the offline forward pass over the text."""
    ids = tok(PROMPT)["input_ids"]
    body = {"model": "contracts", "prompt": [ids], "echo": True, "logprobs": 1, "max_tokens": 1}
    lm_eval = server.post("/v1/completions", {**body, "temperature": 0}).json()["choices"][0]
    assert len(lm_eval["logprobs"]["token_logprobs"]) == len(ids) + 1
    plain = server.post(
        "/v1/completions",
        {"model": "contracts", "prompt": PROMPT, "logprobs": 2, "max_tokens": N, "temperature": 0},
    ).json()["choices"][0]
    lp = plain["logprobs"]
    adapter = [(published.contracts.path, 1.0)]
    with torch.no_grad():
        out = offline_model(tiny_model, adapter).generate(
            torch.tensor([ids]), max_new_tokens=N, do_sample=False
        )
    generated = [t for t in out[0, len(ids) :].tolist() if t != tok.eos_token_id]
    reference = offline_logprobs(tiny_model, ids + generated, adapter)
    assert "".join(lp["tokens"]) == plain["text"] and lp["text_offset"][0] == 0
    for j, (token, value) in enumerate(zip(generated, lp["token_logprobs"], strict=True)):
        assert abs(value - reference[len(ids) - 1 + j, token].item()) < TOLERANCE
        assert max(lp["top_logprobs"][j].values()) == value  # greedy: the top is the token
    first = lm_eval["logprobs"]["token_logprobs"][-1]
    assert abs(first - lp["token_logprobs"][0]) < TOLERANCE


def test_chat_logprobs_whole_and_streamed(server, tok):
    messages = [{"role": "user", "content": "What does the Customer pay?"}]
    client = server.client()
    whole = client.chat.completions.create(
        model="contracts", messages=messages, max_tokens=N, temperature=0, logprobs=True,
        top_logprobs=2,
    )  # fmt: skip
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens - (
        whole.choices[0].finish_reason == "stop"
    )
    assert "".join(t.token for t in content) == whole.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob == entry.logprob
        assert bytes(entry.bytes).decode() == entry.token
    chunks = client.chat.completions.create(
        model="contracts", messages=messages, max_tokens=N, temperature=0, logprobs=True,
        top_logprobs=2, stream=True,
    )  # fmt: skip
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert [t.logprob for t in streamed] == [t.logprob for t in content]
    plain = client.chat.completions.create(model="contracts", messages=messages, max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_streamed_echo_and_logprobs_equal_the_whole_response(server, tok):
    body = {"model": "contracts", "prompt": PROMPT, "echo": True, "logprobs": 2, "max_tokens": N}
    whole = server.post("/v1/completions", {**body, "temperature": 0}).json()["choices"][0]
    with httpx.stream(
        "POST",
        server.url + "/v1/completions",
        json={**body, "temperature": 0, "stream": True},
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        timeout=60,
    ) as r:
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    choices = [e["choices"][0] for e in events]
    assert "".join(c["text"] for c in choices) == whole["text"]
    keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    merged = {k: [v for c in choices if c["logprobs"] for v in c["logprobs"][k]] for k in keys}
    assert merged == whole["logprobs"]


def test_options_sharing_a_long_question_are_scored_exactly(server, published, tiny_model, tok):
    """A question scored with each of its options in one request (what lm-eval sends): the
    shared question is encoded once, and every option's scores still equal its own pass."""
    question = tok(
        "Question: under this licence, may the Licensee sublicense the software to a third "
        "party without the written consent of the Licensor? Answer:"
    )["input_ids"]
    assert len(question) > 20
    texts = (" yes", " no", " only with written consent")
    options = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    prompts = [question + option for option in options]
    for model, parts in (("base", []), ("contracts", [(published.contracts.path, 1.0)])):
        body = score(server, model, prompts)
        for choice, ids in zip(body["choices"], prompts, strict=True):
            assert_scores_equal(choice, ids, offline_logprobs(tiny_model, ids, parts), tok, 3)


def test_concurrent_scoring_of_mixed_adapters_equals_each_alone(server, tok):
    jobs = [
        (model, tok(text)["input_ids"])
        for model in ("base", "contracts", "clauses")
        for text in ("The Customer shall pay", "Either party may terminate this Agreement")
    ]
    alone = [score(server, m, i)["choices"][0]["logprobs"]["token_logprobs"] for m, i in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: score(server, *job), jobs))
    for body, single in zip(together, alone, strict=True):
        values = body["choices"][0]["logprobs"]["token_logprobs"]
        assert all(abs(a - b) < TOLERANCE for a, b in zip(values[1:], single[1:], strict=True))


# --- keys and errors ------------------------------------------------------------------------------


def test_keys_and_admin_routes(server):
    body = {"model": "base", "prompt": "x", "max_tokens": 1}
    url = server.url + "/v1/completions"
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {hash_key(ACME_KEY)}"},  # the stored hash is not a key
        {"Authorization": f"Basic {ACME_KEY}"},
        {"Authorization": f"Bearer {ACME_KEY}x"},
    ):
        r = httpx.post(url, json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        server.client("sk-forged").models.list()
    assert server.post("/v1/completions", body, OLD_BETA_KEY).status_code == 200  # 2nd key
    assert server.get("/v1/models", key=ADMIN_KEY).status_code == 403
    for key, status in ((ACME_KEY, 403), (BETA_KEY, 403), (None, 401), ("nope", 401)):
        assert server.get("/admin/adapters", key=key).status_code == status
        ref = {"tenant": "acme", "ref": "contracts"}
        for route in ("load", "unload", "reload"):
            assert server.post(f"/admin/adapters/{route}", ref, key).status_code == status


def test_more_400s_and_unknown_fields(server):
    chat = lambda **kw: server.post("/v1/chat/completions", {"model": "base", **kw})  # noqa: E731
    assert chat(messages=[]).status_code == 400
    hi = [{"role": "user", "content": "hi"}]
    r = chat(messages=hi, top_logprobs=2)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    assert chat(messages=hi, logprobs=True, top_logprobs=21).status_code == 400
    assert chat(messages=[{"role": "robot", "content": "x"}]).status_code == 400
    assert chat(messages="hi").status_code == 400
    r = httpx.post(
        server.url + "/v1/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {ACME_KEY}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    ok = server.post("/v1/completions", {"model": "base", "prompt": "x", "max_tokens": 1, "foo": 1})
    assert ok.status_code == 200  # unknown fields are ignored, as OpenAI clients add new ones
    with pytest.raises(openai.BadRequestError):
        server.client().completions.create(model="base", prompt="x", max_tokens=-3)
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="nope", prompt="x")
    assert server.get("/v1/nothing-here").status_code == 404


# --- capacity, disconnects, hot reload, metrics --------------------------------------------------


def test_full_queue_is_429_and_disconnects_free_their_slots(server):
    body = {
        "model": "base",
        "prompt": PROMPT,
        "max_tokens": 1000,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    before = server.metric("lexlora_engine_generated_tokens")
    client = httpx.Client(timeout=60)
    streams = [  # acme borrows all but beta's reserved place, then beta takes that one
        client.stream("POST", server.url + "/v1/completions", json=body, headers=headers)
        for headers in [{"Authorization": f"Bearer {ACME_KEY}"}] * 3
        + [{"Authorization": f"Bearer {BETA_KEY}"}]
    ]
    responses = [s.__enter__() for s in streams[:3]]
    try:
        server.wait_for("lexlora_queue_depth", MAX_QUEUE - 1)
        r = server.post("/v1/completions", {**body, "stream": False})
        assert r.status_code == 429 and "share (1)" in r.json()["error"]["message"]
        responses.append(streams[3].__enter__())
        assert all(r.status_code == 200 for r in responses)
        server.wait_for("lexlora_queue_depth", MAX_QUEUE)
        for key in (ACME_KEY, BETA_KEY):
            with pytest.raises(openai.RateLimitError):
                server.client(key).completions.create(model="base", prompt="x", max_tokens=1)
    finally:
        for s in streams:
            s.__exit__(None, None, None)
        client.close()
    server.wait_for("lexlora_queue_depth", 0)
    server.wait_for("lexlora_engine_running_rows", 0)
    decoded = server.metric("lexlora_engine_generated_tokens") - before
    assert decoded < 2 * 1000  # of the 4 * 1000 asked for: the rows stopped when clients left
    # a non-streamed request whose client gives up also frees its slot and stops
    with pytest.raises(httpx.TimeoutException):
        server.post("/v1/completions", {**body, "stream": False}, timeout=0.5)
    server.wait_for("lexlora_queue_depth", 0)
    server.wait_for("lexlora_engine_running_rows", 0)
    assert complete(server, "contracts", max_tokens=3)


def test_lru_keeps_at_most_max_loras_resident(server):
    admin = lambda: server.get("/admin/adapters", key=ADMIN_KEY).json()  # noqa: E731
    complete(server, "contracts")
    complete(server, "filings", key=BETA_KEY)
    complete(server, "clauses")
    complete(server, "contracts", extra_body={"lora_scale": 0.25})
    resident = admin()["resident"]
    assert len(resident) == admin()["max_loras"] == 3
    names = {r["internal_name"] for r in resident}
    plain = {name.rsplit("--", 1)[0] for name in names}  # without the weights' checksum
    assert "acme--contracts--v1" not in plain or "beta--filings--v1" not in plain  # LRU went
    assert all(n.startswith(("acme--", "beta--")) for n in names)


def test_admin_load_unload_and_promote_while_serving(server, published):
    admin = lambda route, body: server.post(f"/admin/adapters/{route}", body, ADMIN_KEY)  # noqa: E731
    resident = lambda: {  # noqa: E731  (internal names without the weights' checksum)
        r["internal_name"].rsplit("--", 1)[0]
        for r in server.get("/admin/adapters", key=ADMIN_KEY).json()["resident"]
    }
    v1_text = complete(server, "contracts")
    assert admin("unload", {"tenant": "acme", "ref": "contracts"}).status_code == 200
    assert "acme--contracts--v1" not in resident()
    loaded = admin("load", {"tenant": "acme", "ref": "contracts:1"}).json()["loaded"]
    assert loaded == f"acme--contracts--v1--{published.contracts.sha256[:12]}"
    assert admin("load", {"tenant": "beta", "ref": "contracts"}).status_code == 404
    assert admin("load", {"tenant": "nobody", "ref": "contracts"}).status_code == 404
    assert admin("load", {"tenant": "acme", "ref": "../x"}).status_code == 404
    assert admin("load", {"tenant": "acme"}).status_code == 400

    # publish v2 (beta's weights, so its output is known) while a request streams on v1
    body = {"model": "contracts", "prompt": PROMPT, "max_tokens": 600, "stream": True,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    client = httpx.Client(timeout=60, headers={"Authorization": f"Bearer {ACME_KEY}"})
    with client.stream("POST", server.url + "/v1/completions", json=body) as running:
        lines = running.iter_lines()
        assert next(line for line in lines if line).startswith("data: ")
        assert admin("unload", {"tenant": "acme", "ref": "contracts:1"}).status_code == 409
        store = AdapterStore(published.store_dir)
        store.publish("acme", "contracts", published.filings.path, published.filings.metadata)
        assert complete(server, "contracts") == v1_text  # cached until a reload
        assert complete(server, "contracts:2") == complete(server, "filings", key=BETA_KEY)
        reload = admin("reload", {}).json()
        assert {"tenant": "acme", "ref": "contracts", "from": 1, "to": 2} in reload["changes"]
        assert "acme--contracts--v2" in resident()
        assert complete(server, "contracts") == complete(server, "contracts:2") != v1_text
        rest = [line for line in lines if line]  # the v1 request still finishes normally
    client.close()
    assert rest[-1] == "data: [DONE]" and '"finish_reason":"length"' in rest[-2]

    store.promote("acme", "contracts", 1, "prod")
    assert complete(server, "contracts@prod") == v1_text
    store.promote("acme", "contracts", 2, "prod")
    assert complete(server, "contracts@prod") == v1_text  # until reload
    changes = admin("reload", {}).json()["changes"]
    assert {"tenant": "acme", "ref": "contracts@prod", "from": 1, "to": 2} in changes
    assert complete(server, "contracts@prod") == complete(server, "contracts:2")
    assert "contracts@prod" in [m.id for m in server.client().models.list()]


def test_metrics_count_requests_tokens_adapters_and_latency(server):
    text = server.get("/metrics", key=None).text
    assert 'lexlora_requests_total{route="/v1/completions",status="200"}' in text
    assert 'lexlora_requests_total{route="/v1/completions",status="404"}' in text
    assert 'lexlora_requests_total{route="/v1/completions",status="429"}' in text
    assert 'lexlora_adapter_requests_total{adapter="contracts:1",tenant="acme"}' in text
    assert 'lexlora_adapter_requests_total{adapter="filings:1",tenant="beta"}' in text
    assert server.metric("lexlora_generated_tokens_total", tenant="acme") > 0
    per_adapter = {"tenant": "beta", "adapter": "filings:1"}
    assert server.metric("lexlora_adapter_generated_tokens_total", **per_adapter) > 0
    assert server.metric("lexlora_adapter_latency_seconds_count", **per_adapter) > 0
    assert "lexlora_replica_up" not in text  # one engine process: no per-replica series
    assert server.metric("lexlora_request_latency_seconds_count", route="/v1/completions") > 0
    assert "lexlora_request_latency_seconds_bucket" in text
    assert server.metric("lexlora_queue_depth") == 0
    assert 'status="500"' not in text  # no user mistake above was a server error


def test_bounded_load_with_adapters_unloaded_and_loaded_during_traffic(server):
    """40 requests from 4 client threads over the base and three adapters (bounded in count and
    time) while an admin thread unloads and reloads one of them: no 5xx, and every answer is the
    one its own model gives alone."""
    targets = [
        ("base", ACME_KEY),
        ("contracts:1", ACME_KEY),  # pinned: earlier tests promote contracts to other weights
        ("clauses", ACME_KEY),
        ("filings", BETA_KEY),
    ]
    expected = {model: complete(server, model, key=key) for model, key in targets}
    assert len(set(expected.values())) == len(targets)
    stop = threading.Event()
    admin_codes: list[int] = []

    def churn() -> None:
        ref = {"tenant": "acme", "ref": "clauses"}
        while not stop.is_set():
            for route in ("unload", "load"):
                admin_codes.append(
                    server.post(f"/admin/adapters/{route}", ref, ADMIN_KEY).status_code
                )

    def client(i: int) -> list[tuple[str, int, dict]]:
        results = []
        for j in range(10):
            model, key = targets[(i + j) % len(targets)]
            body = {"model": model, "prompt": PROMPT, "max_tokens": N, "temperature": 0}
            response = server.post("/v1/completions", body, key)
            results.append((model, response.status_code, response.json()))
        return results

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client, i) for i in range(4)]
            results = [row for f in futures for row in f.result(timeout=180)]
    finally:
        stop.set()
        churner.join(30)
    assert len(results) == 40
    for model, status, body in results:
        assert status < 500, body
        if status == 200:
            assert body["choices"][0]["text"] == expected[model], model
        else:
            assert status == 429, body
    assert sum(status == 200 for _, status, _ in results) >= 30
    assert admin_codes and set(admin_codes) <= {200, 409}
