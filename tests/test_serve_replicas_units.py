"""Scale-out serving without vLLM: the serve config's replica keys, each replica's share of the
machine, the resolver folder lexlora owns (names, atomic copies, never another's folder), and the
command lines of the replicas and the router. The real stack is in test_serve_replicas.py."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
from serve_reference import random_adapter

from lexlora.errors import LexloraError
from lexlora.serve.config import validate_config
from lexlora.serve.engines.adapter_dir import MARKER, AdapterDirectory, check_name
from lexlora.serve.engines.base import GenerationRequest, SamplingParams
from lexlora.serve.engines.vllm_replicas import ReplicatedVllmEngine, device_shares

VLLM = {"base_model": "m", "engine": "vllm"}


def config(**keys):
    return validate_config({**VLLM, **keys}, "serve.yaml")


def test_replica_keys_are_checked_with_one_line_naming_the_key():
    assert config(replicas=2).scaled_out and not config().scaled_out
    urls = ["http://10.0.0.5:8000", "http://10.0.0.6:8000/"]
    attached = config(vllm_urls=urls, router_url="http://r:30000", adapter_dir="/shared/a")
    assert attached.vllm_urls == ["http://10.0.0.5:8000", "http://10.0.0.6:8000"]
    mistakes = {
        "needs engine: vllm": {"engine": "embedded", "replicas": 2},
        "exclude each other \\(vllm_url is one server\\)": {
            "replicas": 2,
            "vllm_url": "http://h:1",
        },
        "replicas \\(children lexlora starts\\) and vllm_urls": {
            "replicas": 2,
            "vllm_urls": urls,
            "adapter_dir": "/a",
        },
        "router_url needs vllm_urls": {"router_url": "http://r:1", "replicas": 2},
        "vllm_urls needs adapter_dir": {"vllm_urls": urls},
        "a replica is listed twice": {"vllm_urls": [urls[0], urls[0]], "adapter_dir": "/a"},
        "key 'replicas'": {"replicas": 0},
        "key 'router_policy'": {"replicas": 2, "router_policy": "random"},
        "key 'vllm_urls.0'|expected an http": {"vllm_urls": ["ftp://x"], "adapter_dir": "/a"},
    }
    for message, keys in mistakes.items():
        with pytest.raises(LexloraError, match=message) as caught:
            config(**keys)
        assert "\n" not in str(caught.value) and str(caught.value).startswith("serve.yaml")


def test_each_replica_gets_its_own_cores_or_gpus():
    two = device_shares(2, 0, [0, 1])
    assert [s["cpus"] for s in two] == [frozenset({0}), frozenset({1})]
    assert [s["env"]["VLLM_CPU_OMP_THREADS_BIND"] for s in two] == ["0", "1"]
    wide = device_shares(2, 0, list(range(8)))
    assert wide[1]["cpus"] == frozenset({4, 5, 6, 7})
    assert wide[1]["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "4,5,6,7"
    crowded = device_shares(3, 0, [0, 1])  # more replicas than cores: shared round robin
    assert [sorted(s["cpus"]) for s in crowded] == [[0], [1], [0]]
    gpus = device_shares(2, 4, [0, 1])
    assert [s["env"]["CUDA_VISIBLE_DEVICES"] for s in gpus] == ["0,1", "2,3"]
    assert gpus[0]["args"] == ["--tensor-parallel-size", "2"] and gpus[0]["cpus"] is None


def test_the_resolver_folder_holds_only_gateway_names(tiny_model, tmp_path):
    for bad in ("../x", "..", "a/b", "/tmp/x", ".hidden", "x.y", "", "A--b", "a" * 201):
        with pytest.raises(LexloraError, match="not one the gateway makes"):
            check_name(bad)
    assert check_name("acme--contracts--v2--3f2a9c01d4e5") == "acme--contracts--v2--3f2a9c01d4e5"
    adapters = AdapterDirectory(tmp_path / "adapters", "/models/base")
    source = random_adapter(tiny_model, tmp_path / "src")
    with pytest.raises(LexloraError):
        adapters.publish("../escape", source)
    assert not (tmp_path / "escape").exists()
    folder = adapters.publish("acme--x--v1--abc", source)
    assert folder == tmp_path / "adapters" / "acme--x--v1--abc"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "/models/base"  # what the resolver compares
    original = json.loads((source / "adapter_config.json").read_text())
    assert original["base_model_name_or_path"] == str(tiny_model)  # the source is untouched
    weights = folder / "adapter_model.safetensors"
    assert os.path.samefile(weights, source / "adapter_model.safetensors")  # a link, not a copy
    assert adapters.publish("acme--x--v1--abc", source) == folder  # content-addressed: no rewrite
    assert adapters.names() == ["acme--x--v1--abc"]
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(LexloraError, match="adapter config"):
        adapters.publish("acme--y--v1--abc", broken)
    assert sorted(p.name for p in adapters.root.iterdir()) == [MARKER, "acme--x--v1--abc"]
    assert AdapterDirectory(tmp_path / "adapters", "/models/base").names() == adapters.names()


def test_a_folder_lexlora_did_not_make_is_refused_and_left_alone(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    with pytest.raises(LexloraError, match="not empty and was not made by lexlora"):
        AdapterDirectory(theirs, "/models/base")
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]


def test_replica_and_router_command_lines(tiny_model, tmp_path):
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    engine = ReplicatedVllmEngine(
        str(tiny_model), replicas=2, python=venv / "python", max_loras=3, extra_args=["--x", "1"]
    )
    with pytest.raises(LexloraError, match="vllm-router"):
        engine._build()  # no router in that venv
    (venv / "vllm-router").touch()
    engine._replicas, engine._router = [], None
    engine._build()
    try:
        urls = [r.url for r in engine._replicas]
        assert len(set(urls)) == 2
        for replica, url in zip(engine._replicas, urls, strict=True):
            cmd = replica.command
            assert cmd[cmd.index("--port") + 1] == url.rsplit(":", 1)[1]
            assert cmd[cmd.index("--max-loras") + 1] == "3" and cmd[-2:] == ["--x", "1"]
            assert replica._env["VLLM_LORA_RESOLVER_CACHE_DIR"] == str(engine._dir.root)
            assert replica._env["VLLM_API_KEY"] not in " ".join(cmd)
        router = engine._router.command
        assert router[0] == str(venv / "vllm-router")
        assert router[router.index("--worker-urls") + 1 : router.index("--worker-urls") + 3] == urls
        assert router[router.index("--policy") + 1] == "consistent_hash"
        assert router[router.index("--host") + 1] == "127.0.0.1"
        sampling = SamplingParams(max_tokens=1)
        adapter = GenerationRequest(prompt_ids=[1], sampling=sampling, adapter="acme--x--v1--ab")
        base = GenerationRequest(prompt_ids=[1], sampling=sampling)
        assert engine.route_headers(adapter) == {"X-Session-ID": "acme--x--v1--ab"}
        assert engine.route_headers(base) == {}
    finally:
        shutil.rmtree(engine._private_dir, ignore_errors=True)
