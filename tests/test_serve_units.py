"""Serving building blocks without a server: serve.yaml, keys, stop strings, batching, names."""

from __future__ import annotations

import hashlib
import json
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
from lexlora.serve.engines.stop_text import StopText
from lexlora.serve.errors import ApiError
from lexlora.serve.generation import Limit, token_budget
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
    a, b = admission.admit("acme"), admission.admit("acme")
    with pytest.raises(ApiError) as err:
        admission.admit("acme")
    assert err.value.status == 429
    a.release()
    a.release()  # idempotent
    assert admission.depth == 1
    b.release()
    assert admission.depth == 0


def test_a_tenant_over_its_share_gets_429_and_never_takes_anothers_places():
    admission = Admission(10, share=3, tenants=["acme", "beta", "gamma"])
    acme = []
    with pytest.raises(ApiError) as err:
        while True:
            acme.append(admission.admit("acme"))
    assert len(acme) == 4  # its 3, plus the one place nobody has reserved
    assert err.value.status == 429 and "share (3)" in err.value.message
    beta = [admission.admit("beta") for _ in range(3)]  # beta's reserve was kept free
    gamma = [admission.admit("gamma") for _ in range(3)]
    with pytest.raises(ApiError):
        admission.admit("beta")
    assert admission.depth == 10
    for ticket in acme + beta + gamma:
        ticket.release()
    assert admission.depth == 0 and not +admission.by_tenant
    solo = Admission(10, share=3, tenants=["acme", "beta"])
    assert len([solo.admit("acme") for _ in range(7)]) == 7  # borrows what beta does not need


def test_batcher_takes_fairly_across_owners():
    batcher: Batcher[tuple[str, int]] = Batcher(window_s=0, owner=lambda item: item[0])
    for i in range(70):
        batcher.put(("acme", i))
    batcher.put(("beta", 0))
    batcher.put(("beta", 1))
    first = batcher.take(4, block=False)
    assert [o for o, _ in first] == ["acme", "beta", "acme", "beta"]
    assert [i for o, i in first if o == "acme"] == [0, 1]  # each owner's own order is kept
    # one free place while acme holds 3 running rows and beta 1: the owner with fewer rows
    batcher.put(("beta", 2))
    assert batcher.take(1, block=False, running={"acme": 3, "beta": 1}) == [("beta", 2)]
    assert batcher.take(1, block=False, running={"acme": 3, "beta": 4}) == [("acme", 2)]
    batcher.put_back([("acme", 2)])
    assert batcher.take(1, block=False) == [("acme", 2)] and len(batcher) == 67


def version(tenant: str, name: str, number: int, sha: str = "s") -> AdapterVersion:
    return AdapterVersion(tenant, name, number, Path("/x"), sha, "m", "h", 8, "", {}, ())


def test_internal_names_are_tenant_unique_and_never_bare():
    plain = Target("acme", ((version("acme", "contracts", 2), 1.0),))
    assert internal_name(plain) == "acme--contracts--v2--s"  # s: the weights' sha256
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
    assert ok.prompts() == ["x"] and ok.max_tokens == 16 and ok.stop_list() == []


def test_token_budget_has_a_server_default_and_cap():
    budget = lambda prompt, asked, param="max_tokens": token_budget(  # noqa: E731
        prompt, Limit(asked, param), 100, "prompt", default=20, cap=50
    )
    assert budget(10, None) == 20  # omitted: the server default
    assert budget(90, None) == 10  # within the context
    assert budget(10, 5) == 5 and budget(10, 50) == 50
    for prompt, asked, param in ((100, None, "prompt"), (0, None, "prompt"), (10, 91, "prompt")):
        with pytest.raises(ApiError) as err:
            budget(prompt, asked)
        assert (err.value.status, err.value.param) == (400, param)
    with pytest.raises(ApiError) as err:
        budget(10, 51, "max_completion_tokens")
    assert err.value.param == "max_completion_tokens" and "at most 50" in err.value.message


def test_integer_fields_accept_integral_floats_and_errors_echo_little():
    body = b'{"model": "m", "prompt": "x", "max_tokens": 7.0, "seed": 3.0, "n": 1.0}'
    ok = parse_request(CompletionRequest, body)
    assert (ok.max_tokens, ok.seed, ok.n) == (7, 3, 1) and isinstance(ok.max_tokens, int)
    for bad in (b'"max_tokens": 7.5', b'"max_tokens": true', b'"seed": "3"', b'"seed": 1e30'):
        with pytest.raises(ApiError) as err:
            parse_request(CompletionRequest, b'{"model": "m", "prompt": "x", ' + bad + b"}")
        assert err.value.status == 400 and err.value.param in ("max_tokens", "seed")
    stops = json.dumps(["stop"] * 200_000).encode()
    with pytest.raises(ApiError) as err:
        parse_request(CompletionRequest, b'{"model": "m", "prompt": "x", "stop": ' + stops + b"}")
    assert err.value.param == "stop" and len(err.value.json_bytes()) < 400
    assert "1600000 characters" in err.value.message


def test_config_limits_are_consistent():
    assert config().queue_share == 64 and config(max_queue=10).queue_share == 10
    two = {"acme": {"api_key_sha256": [H]}, "beta": {"api_key_sha256": [H]}}
    assert config(tenants=two, max_queue=9).queue_share == 4
    with pytest.raises(LexloraError, match=r"cannot reserve 5 places for each of 2 tenants"):
        config(tenants=two, max_queue=9, max_queue_per_tenant=5)
    with pytest.raises(LexloraError, match=r"default_max_tokens \(300\) is above max_tokens"):
        config(max_tokens=200, default_max_tokens=300)
    with pytest.raises(LexloraError, match=r"key 'max_body_bytes'"):
        config(max_body_bytes=10)


def test_score_only_rows_sharing_a_long_prefix_share_one_encoding():
    from lexlora.serve.engines.base import GenerationRequest, SamplingParams
    from lexlora.serve.engines.decode import MIN_SHARED, _prefix_clusters
    from lexlora.serve.engines.rows import Row

    def row(ids: list[int], adapter: str | None = None) -> Row:
        request = GenerationRequest(ids, SamplingParams(max_tokens=0), adapter, None, 0)
        return Row(request, lambda _: None)

    question = list(range(100, 100 + MIN_SHARED + 4))
    rows = [
        row([*question, 1]),
        row([*question, 2, 3]),
        row([*question, 1], adapter="acme--a--v1"),  # another adapter: its own encoding
        row([*question[: MIN_SHARED - 1], 7, 8, 9]),  # too little in common
        row([*question, 4]),
    ]
    clusters = _prefix_clusters(rows)
    assert sorted((n, [rows.index(r) for r in members]) for n, members in clusters) == [
        (MIN_SHARED + 1, [3]),
        (len(question), [0, 1, 4]),
        (len(question), [2]),
    ]


def test_options_of_each_question_share_that_question_not_only_the_system_turn():
    """Two questions with a common system turn, each scored with two options, arriving
    interleaved: each question's options share the whole question."""
    from lexlora.serve.engines.base import GenerationRequest, SamplingParams
    from lexlora.serve.engines.decode import MIN_SHARED, _prefix_clusters
    from lexlora.serve.engines.rows import Row

    def row(ids: list[int]) -> Row:
        return Row(
            GenerationRequest(ids, SamplingParams(max_tokens=0), None, None, 0), lambda _: None
        )

    system = list(range(1000, 1000 + MIN_SHARED + 2))
    first, second = [*system, *range(1, 60)], [*system, *range(200, 240)]
    rows = [row([*first, 7]), row([*second, 7]), row([*first, 8]), row([*second, 8])]
    clusters = _prefix_clusters(rows)
    assert sorted((n, sorted(rows.index(r) for r in m)) for n, m in clusters) == [
        (len(second), [1, 3]),
        (len(first), [0, 2]),
    ]
