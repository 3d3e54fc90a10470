"""The serving suites' harness: adapters published for two tenants, a real gateway process with
any engine (``embedded``, ``vllm``, or ``vllm-replicas``: two vLLM replicas behind vllm-router)
and the client calls the checks make.

Tenants: ``acme`` (``contracts``, the default adapter list, and ``clauses``, ``wide``) and ``beta``
(``filings``, two keys). The checks every engine must pass are in test_serve_api.py, parametrised
by ``ENGINES``; test_serve_embedded.py and test_serve_vllm.py hold what is particular to one.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from serve_reference import random_adapter
from support import NEEDS_VLLM, NEEDS_VLLM_ROUTER, VLLM_PYTHON

from lexlora.artifacts.adapter import base_config_hash
from lexlora.export.exporter import export_run
from lexlora.registry import AdapterStore, AdapterVersion
from lexlora.serve.launch import serve_process
from lexlora.serve.tenants import hash_key

ACME_KEY, BETA_KEY, ADMIN_KEY = "sk-acme-test-key", "sk-beta-test-key", "sk-admin-test-key"
OLD_BETA_KEY = "old-beta-key"  # beta's second key
PROMPT = "The Customer shall pay"
N = 16  # completion tokens in the comparisons
MAX_LORAS = 3
MAX_QUEUE = 4  # the embedded server's
ENGINES = [  # for parametrize
    pytest.param("embedded"),
    pytest.param("vllm", marks=NEEDS_VLLM),
    pytest.param("vllm-replicas", marks=NEEDS_VLLM_ROUTER),  # 2 vLLM replicas behind vllm-router
]


@dataclass
class Published:
    store_dir: Path
    contracts: AdapterVersion  # acme/contracts:1, the trained run (rank 8, q/v)
    clauses: AdapterVersion  # acme/clauses:1, a random rank-4 LoRA on q_proj/o_proj
    filings: AdapterVersion  # beta/filings:1, the run exported at scale 1.5
    wide: AdapterVersion  # acme/wide:1, rank 32: above the vLLM server's max_lora_rank (16)


def publish_adapters(tiny_model: Path, tiny_run: Path, tmp: Path) -> Published:
    """The tenants' adapters, published into a new store under ``tmp``."""
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
    engine: str
    url: str
    proc: subprocess.Popen
    log: Path
    timeout: float  # of post()
    client_timeout: float | httpx.Timeout  # of client()

    def post(self, path: str, body: object, key: str | None = ACME_KEY, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        kw.setdefault("timeout", self.timeout)
        return httpx.post(self.url + path, json=body, headers=headers, **kw)

    def get(self, path: str, key: str | None = ACME_KEY) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.url + path, headers=headers, timeout=60)

    def client(self, key: str = ACME_KEY) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=self.client_timeout
        )

    def metric(self, name: str, **labels: str) -> float:
        """The value of one Prometheus series (0 if absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.get("/metrics", key=None).text.splitlines():
            m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
            if m and ",".join(sorted((m.group(1) or "").split(","))).strip(",") == want:
                return float(m.group(2))
        return 0.0

    def wait_for(self, name: str, value: float, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.metric(name) != value:
            assert time.monotonic() < deadline, f"{name} stayed at {self.metric(name)}"
            time.sleep(0.05)


ENGINE_CONFIG: dict[str, dict[str, Any]] = {
    "embedded": {
        "max_batch_size": 4,
        "max_queue": MAX_QUEUE,
        "max_queue_per_tenant": 1,  # acme may borrow all but beta's reserved place
        "batch_wait_ms": 50,
        "threads": 1,
    },
    "vllm": {
        "engine": "vllm",
        "vllm_python": str(VLLM_PYTHON),
        "max_model_len": 512,
        "max_batch_size": 8,
        "max_queue": 16,
        "vllm_startup_timeout": 400,
    },
}
ENGINE_CONFIG["vllm-replicas"] = {**ENGINE_CONFIG["vllm"], "replicas": 2}
START_TIMEOUT = {"embedded": 180, "vllm": 450, "vllm-replicas": 600}  # until /health answers
POST_TIMEOUT = {"embedded": 60, "vllm": 120, "vllm-replicas": 120}  # seconds, of Server.post
CLIENT_TIMEOUT = {"embedded": openai.DEFAULT_TIMEOUT, "vllm": 120, "vllm-replicas": 120}


@contextmanager
def serve(engine: str, published: Published, tiny_model: Path, tmp: Path) -> Iterator[Server]:
    """A gateway with ``engine`` serving ``published`` to acme, beta and the admin."""
    config = {
        "base_model": str(tiny_model),
        "store": str(published.store_dir),
        "max_loras": MAX_LORAS,
        **ENGINE_CONFIG[engine],
        "admin_key_sha256": hash_key(ADMIN_KEY),
        "tenants": {
            "acme": {"api_key_sha256": [hash_key(ACME_KEY)], "adapters": ["contracts"]},
            "beta": {"api_key_sha256": [hash_key(OLD_BETA_KEY), hash_key(BETA_KEY)]},
        },
    }
    with serve_process(config, tmp, timeout=START_TIMEOUT[engine]) as served:
        yield Server(
            engine,
            served.url,
            served.process,
            served.log,
            POST_TIMEOUT[engine],
            CLIENT_TIMEOUT[engine],
        )


def complete(srv: Server, model: str, key: str = ACME_KEY, **kw) -> str:
    """The text of one completion (greedy, ``N`` tokens, ``PROMPT`` unless given)."""
    kw.setdefault("max_tokens", N)
    kw.setdefault("temperature", 0)
    prompt = kw.pop("prompt", PROMPT)
    return srv.client(key).completions.create(model=model, prompt=prompt, **kw).choices[0].text


# --- scoring: echo, logprobs ------------------------------------------------------------------

TOLERANCE = 1e-4  # served log-probs vs one unpadded HF + PEFT forward pass


def score(srv: Server, model: str, prompt, k: int = 3, **extra) -> dict:
    """Score ``prompt`` (echo, max_tokens 0), retrying while the tenant's queue share is used."""
    body = {"model": model, "prompt": prompt, "echo": True, "logprobs": k, "max_tokens": 0}
    for _ in range(400):
        r = srv.post("/v1/completions", {**body, **extra})
        if r.status_code != 429:
            break
        time.sleep(0.05)
    assert r.status_code == 200, r.text
    return r.json()


def assert_scores_equal(choice: dict, ids: list[int], reference, tok, k: int) -> None:
    """The echoed prompt's log-probs equal ``reference`` ([len(ids), vocab] log_softmax)."""
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) and lp["token_logprobs"][0] is None
    assert lp["top_logprobs"][0] is None and lp["text_offset"][0] == 0
    for i in range(1, len(ids)):
        assert abs(lp["token_logprobs"][i] - reference[i - 1, ids[i]].item()) < TOLERANCE
        values, best = reference[i - 1].topk(k)
        expected: dict[str, float] = {}
        for token, value in zip(best.tolist(), values.tolist(), strict=True):
            expected.setdefault(tok.decode([token]), value)  # one text, the better log-prob
        top = lp["top_logprobs"][i]
        assert all(abs(top[text] - value) < TOLERANCE for text, value in expected.items())
        assert set(top) - set(expected) <= {lp["tokens"][i]}  # plus the prompt's own token
    tokens = lp["tokens"]
    assert [lp["text_offset"][i + 1] - lp["text_offset"][i] for i in range(len(ids) - 1)] == [
        len(t) for t in tokens[:-1]
    ]


def verify_acme(server: Server, published: Published, tiny_model: Path) -> list:
    """``lexlora serve verify``'s checks of acme's base, contracts:1 and clauses."""
    from lexlora.serve.verify import run_verify

    return run_verify(
        server.url,
        ACME_KEY,
        models=["base", "contracts:1", "clauses"],
        store=published.store_dir,
        base=str(tiny_model),
        tenant="acme",
    )
