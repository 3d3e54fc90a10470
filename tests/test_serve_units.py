"""Serving building blocks without a server: serve.yaml, keys, stop strings, batching, names."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lexlora.cli import app
from lexlora.errors import LexloraError
from lexlora.registry import AdapterVersion
from lexlora.serve.admission import Admission
from lexlora.serve.batcher import Batcher
from lexlora.serve.catalog import Target
from lexlora.serve.config import load_config, validate_config
from lexlora.serve.engines.rows import StopText
from lexlora.serve.errors import ApiError
from lexlora.serve.generation import token_budget
from lexlora.serve.protocol import CompletionRequest, field_path, parse_request
from lexlora.serve.residency import internal_name
from lexlora.serve.tenants import KeyDirectory, hash_key

H = hashlib.sha256(b"k").hexdigest()


def config(**extra):
    return validate_config(
        {"base_model": "m", "tenants": {"acme": {"api_key_sha256": [H]}}, **extra}
    )


def test_config_defaults_and_friendly_errors(tmp_path: Path):
    cfg = config()
    assert (cfg.model_name, cfg.engine, cfg.max_loras, cfg.host) == (
        "base",
        "embedded",
        8,
        "127.0.0.1",
    )
    with pytest.raises(
        LexloraError, match=r"unknown key 'max_lora' \(did you mean 'max_loras'\?\)"
    ):
        config(max_lora=2)
    with pytest.raises(LexloraError, match="sha256 hex digest"):
        validate_config({"base_model": "m", "tenants": {"acme": {"api_key_sha256": ["secret"]}}})
    for bad in ("a--b", "a-", "../x", "ACME"):
        with pytest.raises(LexloraError, match=re.escape(f"tenant name '{bad}'")):
            validate_config({"base_model": "m", "tenants": {bad: {"api_key_sha256": [H]}}})
    with pytest.raises(LexloraError, match=r"tenants.acme.adapters': adapter name '\.\./x'"):
        validate_config(
            {"base_model": "m", "tenants": {"acme": {"api_key_sha256": [H], "adapters": ["../x"]}}}
        )
    with pytest.raises(LexloraError, match="missing required key 'base_model'"):
        validate_config({})
    (tmp_path / "serve.yaml").write_text("base_model: m\nmax_queue: 0\n")
    with pytest.raises(LexloraError, match=r"serve.yaml: key 'max_queue'"):
        load_config(tmp_path / "serve.yaml")
    with pytest.raises(LexloraError, match="no such serve config"):
        load_config(tmp_path / "missing.yaml")


def test_keys_are_compared_by_hash():
    keys = KeyDirectory(config(admin_key_sha256=hash_key("admin")))
    assert keys.authenticate("Bearer k").tenant == "acme"
    assert keys.authenticate("bearer k").tenant == "acme"
    assert keys.authenticate("Bearer admin").is_admin
    for header in (None, "", "Bearer", "Bearer ", "Basic k", "Bearer K", f"Bearer {H}", "k"):
        assert keys.authenticate(header) is None


def test_keygen_prints_a_key_and_its_hash():
    out = CliRunner().invoke(app, ["serve", "keygen", "acme"]).output
    key = out.split("key: ")[1].split()[0]
    assert hash_key(key) in out and "tenants: {acme: {api_key_sha256: [" in out
    assert "admin_key_sha256: " in CliRunner().invoke(app, ["serve", "keygen"]).output
    assert CliRunner().invoke(app, ["serve", "keygen", "a--b"]).exit_code != 0


def stop_text(stops: tuple[str, ...]) -> tuple[StopText, list[str]]:
    pieces: list[str] = []
    return StopText(lambda ids: "".join(pieces[: len(ids)]), stops), pieces


def test_stop_text_holds_back_what_could_become_a_stop_string():
    text, pieces = stop_text(("END", "\n\n"))
    out = []
    for i, piece in enumerate(["Hello", " E", "N", "ough", "\n", "x", "E", "ND", "tail"]):
        pieces.append(piece)
        delta, stopped = text.advance(list(range(i + 1)))
        out.append(delta)
        if stopped:
            break
    assert out == ["Hello", " ", "", "ENough", "", "\nx", "", ""]
    assert "".join(out) == "Hello ENough\nx" and stopped


def test_stop_text_waits_for_whole_characters_and_flushes():
    text, pieces = stop_text(())
    pieces += ["ab\ufffd"]
    assert text.advance([0]) == ("ab", False)
    pieces[0] = "abé"
    assert text.flush([0]) == "é"


def test_batcher_collects_requests_that_arrive_together():
    batcher: Batcher[int] = Batcher(window_s=0.2)
    threading.Timer(0.02, lambda: [batcher.put(i) for i in range(3)]).start()
    start = time.monotonic()
    assert batcher.take(3, block=True, timeout=5) == [0, 1, 2]
    assert time.monotonic() - start < 1.0  # full batch: no need to wait out the window
    batcher.put(7)
    assert batcher.take(4, block=False) == [7]
    assert batcher.take(4, block=False) == []
    threading.Timer(0.02, batcher.wake).start()
    assert batcher.take(4, block=True, timeout=5) == []


def test_admission_bounds_the_queue():
    admission = Admission(2)
    a, b = admission.admit(), admission.admit()
    with pytest.raises(ApiError) as err:
        admission.admit()
    assert err.value.status == 429
    a.release()
    a.release()  # idempotent
    assert admission.depth == 1
    b.release()
    assert admission.depth == 0


def version(tenant: str, name: str, number: int, sha: str = "s") -> AdapterVersion:
    return AdapterVersion(tenant, name, number, Path("/x"), sha, "m", "h", 8, "", {}, ())


def test_internal_names_are_tenant_unique_and_never_bare():
    plain = Target("acme", ((version("acme", "contracts", 2), 1.0),))
    assert internal_name(plain) == "acme--contracts--v2"
    scaled = Target("acme", ((version("acme", "contracts", 2), 0.5),))
    other = Target("beta", ((version("beta", "contracts", 2), 0.5),))
    assert internal_name(scaled).startswith("acme--w") and internal_name(other).startswith(
        "beta--w"
    )
    assert internal_name(scaled) != internal_name(
        Target("acme", ((version("acme", "contracts", 2), 0.25),))
    )


def test_request_validation_names_the_field():
    with pytest.raises(ApiError) as err:
        parse_request(CompletionRequest, b'{"model": "m", "prompt": "x", "stop": 5}')
    assert err.value.param == "stop"
    assert field_path(("adapters", 0, "weight")) == "adapters.0.weight"
    assert field_path(("stop", "list[str]", 0)) == "stop"
    ok = parse_request(CompletionRequest, b'{"model": "m", "prompt": ["x"], "temperature": 0}')
    assert ok.prompt_text() == "x" and ok.max_tokens == 16 and ok.stop_list() == []


def test_token_budget():
    assert token_budget(10, None, 100, "prompt") == 90
    assert token_budget(10, 5, 100, "prompt") == 5
    for prompt, asked in ((100, None), (0, None), (10, 91)):
        with pytest.raises(ApiError) as err:
            token_budget(prompt, asked, 100, "prompt")
        assert err.value.status == 400
