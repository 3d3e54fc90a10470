"""`lexlora serve verify` against the embedded engine (the vLLM engine's run is in
test_serve_vllm.py): a match on the served model, a mismatch (exit 1) against another base."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import CLAUSES, build_tiny_llama

from lexlora.export.exporter import export_run
from lexlora.registry import AdapterStore
from lexlora.serve.launch import serve_process
from lexlora.serve.tenants import hash_key
from lexlora.serve.verify import run_verify

KEY = "sk-verify-acme"


@pytest.fixture(scope="module")
def endpoint(tiny_model, tiny_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verify")
    store = AdapterStore(tmp / "store")
    quiet = lambda *_: None  # noqa: E731
    export_run(tiny_run, "acme", "contracts", store=store, log=quiet)
    export_run(tiny_run, "acme", "strong", store=store, scale=2.0, log=quiet)
    config = {
        "base_model": str(tiny_model),
        "store": str(store.root),
        "threads": 1,
        "batch_wait_ms": 20,
        "tenants": {"acme": {"api_key_sha256": [hash_key(KEY)]}},
    }
    with serve_process(config, tmp) as served:
        yield served.url, tmp / "serve.yaml"


def verify(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lexlora.cli", "serve", "verify", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_verify_matches_the_embedded_engine(endpoint):
    url, config = endpoint
    out = verify("--endpoint", url, "--api-key", KEY, "--config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
    for model in ("base", "contracts", "strong"):
        assert model in out.stdout
    assert out.stdout.count("match") >= 3 and "MISMATCH" not in out.stdout
    checks = run_verify(url, KEY, models=["contracts:1", "strong"], config=config, max_tokens=8)
    assert [(c.model, c.target, c.ok) for c in checks] == [
        ("contracts:1", "contracts:1", True),
        ("strong", "strong:1", True),
    ]
    assert all(s.served_tokens == s.offline_tokens > 0 for c in checks for s in c.samples)


def test_verify_reports_a_mismatch_with_exit_code_1(endpoint, tmp_path):
    url, config = endpoint
    texts = [body for _, body in CLAUSES] * 3  # as conftest's tiny_model: the same tokenizer
    texts += ["Under the agreement, what must the Customer do? Answer with one of: Yes. No."] * 3
    other = build_tiny_llama(tmp_path / "other", texts, seed=1)  # same tokenizer, other weights
    out = verify("--endpoint", url, "--api-key", KEY, "--config", str(config),
                 "--base", str(other), "--models", "base")  # fmt: skip
    assert out.returncode == 1 and "MISMATCH" in out.stdout, out.stdout + out.stderr
    out = verify("--endpoint", url, "--api-key", "sk-wrong", "--config", str(config))
    assert out.returncode != 0 and "401" in out.stdout + out.stderr
