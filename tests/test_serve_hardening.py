"""`lexlora serve` under hostile or heavy tenants: one tenant's bad or heavy requests never change
another tenant's status codes or outputs; request limits (sampling, tokens, body size) and the
OpenAPI surface. A real server process on 127.0.0.1 with the tiny model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from lexlora.serve.launch import serve_process
from lexlora.serve.tenants import hash_key

ACME_KEY, BETA_KEY = "sk-acme-hardening", "sk-beta-hardening"
MAX_QUEUE, BATCH = 24, 4  # two tenants: 12 reserved places each
MAX_TOKENS_CAP, DEFAULT_MAX_TOKENS = 512, 10
MAX_BODY = 2 * 1024 * 1024


@dataclass
class Server:
    url: str

    def post(self, path: str, body: object, key: str = ACME_KEY, **kw) -> httpx.Response:
        kw.setdefault("timeout", 120)
        return httpx.post(self.url + path, json=body, headers=auth(key), **kw)

    def get(self, path: str, key: str | None = ACME_KEY) -> httpx.Response:
        return httpx.get(self.url + path, headers=auth(key) if key else {}, timeout=60)

    def gauge(self, name: str) -> float:
        for line in self.get("/metrics", key=None).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve-hardening")
    config = {
        "base_model": str(tiny_model),
        "store": str(tmp / "store"),
        "max_batch_size": BATCH,
        "max_queue": MAX_QUEUE,
        "batch_wait_ms": 20,
        "threads": 1,
        "max_tokens": MAX_TOKENS_CAP,
        "default_max_tokens": DEFAULT_MAX_TOKENS,
        "max_body_bytes": MAX_BODY,
        "tenants": {
            "acme": {"api_key_sha256": [hash_key(ACME_KEY)]},
            "beta": {"api_key_sha256": [hash_key(BETA_KEY)]},
        },
    }
    with serve_process(config, tmp) as served:
        yield Server(served.url)


def answer(srv: Server, path: str, body: dict, key: str) -> tuple[int, str]:
    """(status, generated text or error code) of one request, streamed or not."""
    if not body.get("stream"):
        r = srv.post(path, body, key)
        if r.status_code != 200:
            return r.status_code, r.json()["error"]["code"] or r.json()["error"]["param"]
        choice = r.json()["choices"][0]
        return 200, choice["message"]["content"] if "message" in choice else choice["text"]
    with httpx.stream(
        "POST", srv.url + path, json=body, headers=auth(key), timeout=120
    ) as r:  # fmt: skip
        if r.status_code != 200:
            r.read()
            return r.status_code, r.json()["error"]["code"]
        parts = []
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return 500, chunk["error"]["type"]  # the stream was cut
                for choice in chunk["choices"]:
                    parts.append(choice.get("text") or choice.get("delta", {}).get("content") or "")
        return 200, "".join(parts)


GREEDY = {"model": "base", "temperature": 0, "ignore_eos": True}
BETA_JOBS = [
    ("/v1/completions", {**GREEDY, "prompt": "The Customer shall pay", "max_tokens": 24}),
    ("/v1/completions", {**GREEDY, "prompt": "Notices", "max_tokens": 40, "stream": True}),
    ("/v1/completions", {**GREEDY, "prompt": "Audit rights", "max_tokens": 16}),
    ("/v1/chat/completions", {**GREEDY, "messages": [{"role": "user", "content": "Who pays?"}]}),
    (
        "/v1/chat/completions",
        {**GREEDY, "messages": [{"role": "user", "content": "Term"}], "stream": True},
    ),
    ("/v1/completions", {**GREEDY, "prompt": "Governing law", "max_tokens": 30}),
]


def beta_traffic(srv: Server, rounds: int = 3) -> list[tuple[int, str]]:
    with ThreadPoolExecutor(len(BETA_JOBS)) as pool:
        jobs = [(p, b) for _ in range(rounds) for p, b in BETA_JOBS]
        return list(pool.map(lambda job: answer(srv, *job, BETA_KEY), jobs))


SAMPLED = {"model": "base", "prompt": "Payment", "max_tokens": 20, "ignore_eos": True}
ACME_BAD = [
    ({**SAMPLED, "seed": 2**64}, 400),  # over a signed 64-bit seed: torch's manual_seed overflows
    ({**SAMPLED, "seed": -(2**63) - 1}, 400),
    ({**SAMPLED, "temperature": 1e-37}, 200),  # 1/T overflows: served as greedy
    ({**SAMPLED, "temperature": 1e-300, "seed": 3}, 200),
    ({**SAMPLED, "temperature": 1.0, "top_p": 1e-300, "seed": 4}, 200),
    ({**SAMPLED, "max_tokens": 400, "temperature": 0, "stream": True}, 200),  # heavy
]


def test_one_tenants_bad_and_heavy_requests_never_change_anothers_answers(server):
    alone = beta_traffic(server)
    assert {status for status, _ in alone} == {200}
    stop = threading.Event()
    acme: list[tuple[int, int]] = []

    def flood(i: int) -> None:
        while not stop.is_set():
            body, expected = ACME_BAD[i % len(ACME_BAD)]
            acme.append((answer(server, "/v1/completions", body, ACME_KEY)[0], expected))
            i += 1

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(len(ACME_BAD))]
    for t in threads:
        t.start()
    try:
        together = beta_traffic(server)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert together == alone
    assert len(acme) >= len(ACME_BAD) and all(got == want for got, want in acme), acme


def test_sampling_parameters_are_checked_before_they_reach_the_engine(server):
    for body, param in (
        ({"seed": 2**64}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"temperature": -1e-300}, "temperature"),  # not made greedy: below 0
        ({"top_p": 1.5}, "top_p"),
    ):
        r = server.post("/v1/completions", {**SAMPLED, **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    greedy = answer(server, "/v1/completions", {**SAMPLED, "temperature": 0}, ACME_KEY)
    assert answer(server, "/v1/completions", {**SAMPLED, "temperature": 1e-37}, ACME_KEY) == greedy
    for seed in (2**63 - 1, -(2**63)):
        assert server.post("/v1/completions", {**SAMPLED, "seed": seed}).status_code == 200


def test_a_flooding_tenant_gets_429s_and_another_is_served_while_it_waits(server):
    """acme sends 40 long requests at once: it is admitted up to its share and gets 429 for the
    rest; beta, arriving after acme's rows are queued, gets 200s (never 429) and its answers come
    back while acme's admitted rows are still waiting for a place in the batch."""
    long = {**GREEDY, "prompt": "Payment", "max_tokens": 300}
    short = {**GREEDY, "prompt": "Term", "max_tokens": 8}
    expected = answer(server, "/v1/completions", short, BETA_KEY)
    with ThreadPoolExecutor(40) as pool, ThreadPoolExecutor(3) as beta_pool:
        flood = [pool.submit(answer, server, "/v1/completions", long, ACME_KEY) for _ in range(40)]
        deadline = time.monotonic() + 60
        while server.gauge("lexlora_engine_waiting_rows") < MAX_QUEUE // 2 - BATCH:
            assert time.monotonic() < deadline, "acme's rows never queued"
            time.sleep(0.02)

        def beta() -> tuple[tuple[int, str], float]:
            got = answer(server, "/v1/completions", short, BETA_KEY)
            return got, server.gauge("lexlora_engine_waiting_rows")

        betas = [f.result(timeout=300) for f in [beta_pool.submit(beta) for _ in range(3)]]
        statuses = [f.result(timeout=300)[0] for f in flood]
    assert statuses.count(200) == MAX_QUEUE // 2 and statuses.count(429) == 40 - MAX_QUEUE // 2
    assert all(got == expected for got, _ in betas), betas
    assert all(waiting > 0 for _, waiting in betas), betas  # acme's rows were still queued


def test_max_tokens_has_a_server_default_and_cap(server):
    chat = {**GREEDY, "messages": [{"role": "user", "content": "Who pays?"}]}
    r = server.post("/v1/chat/completions", chat).json()
    assert r["usage"]["completion_tokens"] == DEFAULT_MAX_TOKENS
    assert r["choices"][0]["finish_reason"] == "length"
    done = server.post("/v1/completions", {**SAMPLED, "max_tokens": None}).json()
    assert done["usage"]["completion_tokens"] == DEFAULT_MAX_TOKENS
    for body, param in (
        ({**SAMPLED, "max_tokens": MAX_TOKENS_CAP + 1}, "max_tokens"),
        ({**chat, "max_completion_tokens": MAX_TOKENS_CAP + 1}, "max_completion_tokens"),
    ):
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        r = server.post(path, body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    seven = server.post("/v1/completions", {**SAMPLED, "max_tokens": 7.0, "seed": 2.0}).json()
    assert seven["usage"]["completion_tokens"] == 7
    assert server.post("/v1/completions", {**SAMPLED, "max_tokens": 7.5}).status_code == 400


def test_big_prompts_never_block_the_event_loop_and_oversize_bodies_are_413(server):
    prompt = "The Customer shall pay all fees within thirty days. " * 12_000  # ~600 KB, allowed
    health: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            start = time.monotonic()
            assert server.get("/health", key=None).status_code == 200
            health.append(time.monotonic() - start)
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        start = time.monotonic()
        r = server.post("/v1/completions", {"model": "base", "prompt": prompt})
        took = time.monotonic() - start
    finally:
        done.set()
        poller.join(30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert health and max(health) < max(0.25, took / 3), (max(health), took)

    big = json.dumps({"model": "base", "prompt": "x" * MAX_BODY}).encode()
    r = httpx.post(server.url + "/v1/completions", content=big, headers=auth(ACME_KEY))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))  # no Content-Length
    r = httpx.post(server.url + "/v1/completions", content=chunks, headers=auth(ACME_KEY))
    assert r.status_code == 413 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert server.get("/health", key=None).status_code == 200


def test_http_surface_405_model_card_and_openapi(server):
    r = httpx.get(server.url + "/v1/completions", headers=auth(ACME_KEY))
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    card = server.get("/v1/models/base").json()
    assert (card["id"], card["object"]) == ("base", "model")
    missing = server.get("/v1/models/no-such-model")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    for foreign in ("acme/x", "base:1", "base@prod", "beta--x--v1"):
        assert server.get(f"/v1/models/{foreign}").content == missing.content
    assert server.get("/v1/models/base", key="wrong").status_code == 401
    spec = server.get("/openapi.json", key=None).json()
    completions = spec["paths"]["/v1/completions"]["post"]
    body = completions["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schemas = spec["components"]["schemas"]
    assert schemas[body.rsplit("/", 1)[1]]["properties"]["max_tokens"]
    assert {"200", "400", "401", "404", "413", "429"} <= set(completions["responses"])
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert "messages" in schemas["ChatCompletionRequest"]["properties"]
    assert "ChatCompletion" in json.dumps(chat["responses"]["200"])
    assert "ErrorBody" in json.dumps(completions["responses"]["400"])
