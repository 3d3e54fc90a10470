"""Issue #12, export and registry: non-finite weights, version numbers that name one set of
weights only, one-line errors for broken adapter folders, and leftovers of a killed publish."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import yaml
from safetensors.torch import load_file, save_file
from serve_reference import offline, random_adapter
from support import make_recipe
from transformers import AutoTokenizer

from lexlora.artifacts.adapter import base_config_hash, read_adapter
from lexlora.errors import LexloraError
from lexlora.export.exporter import export_run
from lexlora.io import sha256_file
from lexlora.registry import AdapterStore, AdapterVersion, validate_version
from lexlora.serve.catalog import Target
from lexlora.serve.launch import serve_process
from lexlora.serve.residency import internal_name
from lexlora.serve.tenants import hash_key

REPO = Path(__file__).resolve().parents[1]
WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
ACME_KEY, ADMIN_KEY = "sk-acme-hardening", "sk-admin-hardening"
quiet = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def adapter_run(tiny_model, tmp_path_factory) -> Path:
    """A run folder (recipe.yaml + adapter/) holding a freshly initialised rank-4 LoRA with
    random B matrices: exportable, and no training needed."""
    tmp = tmp_path_factory.mktemp("hardening-run")
    run = tmp / "runs" / "tiny" / "run-1"
    run.mkdir(parents=True)
    recipe = make_recipe(tmp, tiny_model)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    random_adapter(tiny_model, run / "adapter")
    return run


def edited_run(run: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``run`` whose adapter folder ``edit(folder)`` changed."""
    copy = tmp_path / "run-copy"
    shutil.copytree(run, copy)
    edit(copy / "adapter")
    return copy


def set_first_value(value: float):
    def edit(folder: Path) -> None:
        tensors = load_file(folder / WEIGHTS)
        key = sorted(tensors)[0]
        tensors[key].view(-1)[0] = value
        save_file(tensors, folder / WEIGHTS)

    return edit


def scale_weights(factor: float):
    def edit(folder: Path) -> None:
        tensors = {k: v * factor for k, v in load_file(folder / WEIGHTS).items()}
        save_file(tensors, folder / WEIGHTS)

    return edit


def edit_config(**fields):
    def edit(folder: Path) -> None:
        config = json.loads((folder / CONFIG).read_text())
        (folder / CONFIG).write_text(json.dumps({**config, **fields}))

    return edit


def write_bytes(name: str, data):
    def edit(folder: Path) -> None:
        path = folder / name
        path.write_bytes(data(path.read_bytes()))

    return edit


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lexlora.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        **kw,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


def published(store_dir: Path) -> list[str]:
    return [v.ref for v in AdapterStore(store_dir).list()]


# -- high 4: non-finite weights or outputs are never published or served ------------------------


@pytest.mark.parametrize(("value", "kind"), [(float("nan"), "NaN"), (float("inf"), "infinite")])
def test_export_refuses_non_finite_weights(adapter_run, tmp_path, value, kind):
    run = edited_run(adapter_run, tmp_path, set_first_value(value))
    key = sorted(load_file(run / "adapter" / WEIGHTS))[0]
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(LexloraError, match=rf"{WEIGHTS}.*tensor {key}.*{kind}") as err:
        export_run(run, "acme", "c", store=store, log=quiet)
    assert "\n" not in str(err.value)
    assert not (store.root / "acme").exists() and store.list() == []


def test_cli_export_of_non_finite_weights_is_one_line(adapter_run, tmp_path):
    run = edited_run(adapter_run, tmp_path, set_first_value(float("nan")))
    store = tmp_path / "store"
    result = cli("export", str(run), "--tenant", "acme", "--name", "c", "--store", str(store))
    assert_one_line_error(result, WEIGHTS, "NaN")
    assert published(store) == []


def test_export_refuses_an_adapter_whose_probe_output_is_not_finite(adapter_run, tmp_path):
    run = edited_run(adapter_run, tmp_path, scale_weights(1e30))  # finite weights, inf logits
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(LexloraError, match=r"output on the probe prompt has (NaN|infinite)"):
        export_run(run, "acme", "c", store=store, log=quiet)
    assert store.list() == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0])
def test_export_refuses_a_scale_that_is_not_a_finite_positive_number(adapter_run, tmp_path, value):
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(LexloraError, match="--scale"):
        export_run(adapter_run, "acme", "c", store=store, scale=value, log=quiet)
    assert store.list() == []


def test_registry_publish_and_load_refuse_non_finite_weights(adapter_run, tmp_path):
    bad = edited_run(adapter_run, tmp_path, set_first_value(float("nan"))) / "adapter"
    store = AdapterStore(tmp_path / "store")
    meta = {"base_model": "m", "base_config_hash": "h", "rank": 4}
    with pytest.raises(LexloraError, match="NaN"):
        store.publish("acme", "c", bad, meta)
    assert store.list() == [] and not (store.root / "acme" / "c").exists()

    # a store written before the check: NaN weights under a matching checksum
    av = store.publish("acme", "c", adapter_run / "adapter", meta)
    shutil.copy(bad / WEIGHTS, av.path / WEIGHTS)
    new_sha = sha256_file(av.path / WEIGHTS)
    with sqlite3.connect(store.index_path) as conn:
        conn.execute("UPDATE versions SET sha256 = ?", (new_sha,))
    with pytest.raises(LexloraError, match="NaN"):
        store.resolve("acme", "c")  # the check the server's load path runs (ResidentAdapters)


# -- high 5: a version number names one set of weights only ----------------------------------------


def test_a_removed_version_number_is_never_reused(adapter_run, tmp_path):
    store = AdapterStore(tmp_path / "store")
    meta = {"base_model": "m", "base_config_hash": "h", "rank": 4}
    src = adapter_run / "adapter"
    assert [store.publish("acme", "c", src, meta).version for _ in range(2)] == [1, 2]
    store.remove("acme", "c", 2)
    assert store.publish("acme", "c", src, meta).version == 3
    with pytest.raises(LexloraError, match="never reused"):
        store.publish("acme", "c", src, meta, version=2)
    store.remove("acme", "c")  # every version, and the adapter
    assert AdapterStore(store.root).publish("acme", "c", src, meta).version == 4


def test_an_existing_store_is_migrated_with_the_numbers_it_used(adapter_run, tmp_path):
    store = AdapterStore(tmp_path / "store")
    meta = {"base_model": "m", "base_config_hash": "h", "rank": 4}
    src = adapter_run / "adapter"
    for _ in range(2):
        store.publish("acme", "c", src, meta)
    with sqlite3.connect(store.index_path) as conn:  # the index as lexlora 0.x wrote it
        conn.execute("DROP TABLE version_numbers")
        conn.execute("PRAGMA user_version = 0")
    store = AdapterStore(store.root)
    store.remove("acme", "c", 2)
    assert store.publish("acme", "c", src, meta).version == 3


def test_resident_names_are_keyed_by_the_weights_checksum():
    def target(sha256: str) -> Target:
        av = AdapterVersion("acme", "c", 2, Path("/x"), sha256, "m", "h", 4, "", {}, ())
        return Target("acme", ((av, 1.0),))

    old, new = internal_name(target("a" * 64)), internal_name(target("b" * 64))
    assert old != new and old.startswith("acme--c--v2")


def test_a_server_serves_the_new_weights_after_publish_rm_publish_and_reload(tiny_model, tmp_path):
    store = AdapterStore(tmp_path / "store")
    meta = {"base_model": str(tiny_model), "base_config_hash": base_config_hash(str(tiny_model))}
    meta["rank"] = 4
    weights = [random_adapter(tiny_model, tmp_path / f"a{i}", seed=10 + i) for i in range(3)]
    store.publish("acme", "c", weights[0], meta)
    store.publish("acme", "c", weights[1], meta)
    config = {
        "base_model": str(tiny_model),
        "store": str(store.root),
        "max_loras": 2,
        "threads": 1,
        "admin_key_sha256": hash_key(ADMIN_KEY),
        "tenants": {"acme": {"api_key_sha256": [hash_key(ACME_KEY)]}},
    }
    prompt = "The Customer shall pay"
    ids = AutoTokenizer.from_pretrained(tiny_model)(prompt)["input_ids"]
    expected = [offline(tiny_model, ids, [(w, 1.0)]) for w in weights]
    assert len(set(expected)) == 3

    def complete(url: str, model: str) -> str:
        body = {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0}
        headers = {"Authorization": f"Bearer {ACME_KEY}"}
        response = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["text"]

    with serve_process(config, tmp_path) as served:
        url = served.url
        assert complete(url, "c") == expected[1]  # latest = v2, now resident
        store.remove("acme", "c", 2)
        assert store.publish("acme", "c", weights[2], meta).version == 3
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        reload = httpx.post(url + "/admin/adapters/reload", headers=admin, timeout=60).json()
        assert reload["changes"] == [{"tenant": "acme", "ref": "c", "from": 2, "to": 3}]
        assert complete(url, "c") == expected[2]
        assert complete(url, "c:1") == expected[0]

        # a new version whose weights fail their checks is not switched to: v3 keeps serving
        v4 = store.publish("acme", "c", weights[0], meta)
        (v4.path / WEIGHTS).write_bytes(b"")
        reload = httpx.post(url + "/admin/adapters/reload", headers=admin, timeout=60).json()
        assert reload["changes"] == [] and reload["failed"][0]["to"] == 4
        assert "checksum mismatch" in reload["failed"][0]["error"]
        assert complete(url, "c") == expected[2]


# -- low: broken adapter folders and CLI input give one-line errors -------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (write_bytes(WEIGHTS, lambda b: b[: len(b) // 2]), "not a readable safetensors file"),
        (write_bytes(WEIGHTS, lambda b: b""), "not a readable safetensors file"),
        (write_bytes(CONFIG, lambda b: b[:-5]), "not valid JSON"),
        (write_bytes(CONFIG, lambda b: b"[1, 2]"), "expected a JSON object"),
        (write_bytes(CONFIG, lambda b: b"\xff\xfe{}"), "not valid JSON"),
        (edit_config(r="4"), "field 'r'"),
        (edit_config(r=0), "field 'r'"),
        (edit_config(target_modules=5), "field 'target_modules"),
        (edit_config(lora_alpha="x"), "field 'lora_alpha'"),
        (edit_config(rank_pattern={"q_proj": -1}), "field 'rank_pattern.q_proj'"),
        (edit_config(r=8, lora_alpha=16), "not rank 8"),
        (edit_config(lora_dropout="x"), "PEFT cannot load"),
    ],
)
def test_broken_adapter_folders_are_one_line_errors(adapter_run, tmp_path, edit, message):
    run = edited_run(adapter_run, tmp_path, edit)
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(LexloraError, match=message) as err:
        export_run(run, "acme", "c", store=store, log=quiet)
    assert "\n" not in str(err.value) and str(run / "adapter") in str(err.value)
    assert store.list() == []


def test_cli_export_of_a_truncated_adapter_is_one_line(adapter_run, tmp_path):
    run = edited_run(adapter_run, tmp_path, write_bytes(WEIGHTS, lambda b: b[:100]))
    store = tmp_path / "store"
    result = cli("export", str(run), "--tenant", "acme", "--name", "c", "--store", str(store))
    assert_one_line_error(result, WEIGHTS, "not a readable safetensors file")


@pytest.mark.parametrize("version", ["²", "٣", "0", "+2", "99999999999"])
def test_a_version_must_be_an_ascii_positive_integer(version):
    with pytest.raises(LexloraError, match="expected an integer from 1 to"):
        validate_version(version)


def test_cli_export_version_must_be_an_ascii_positive_integer(adapter_run, tmp_path):
    store = tmp_path / "store"
    result = cli(
        "export", str(adapter_run), "--tenant", "acme", "--name", "c", "--store", str(store),
        "--version", "²",
    )  # fmt: skip
    assert_one_line_error(result, "--version", repr("²"))
    assert published(store) == []


def test_cli_rm_without_an_answer_is_one_line_and_removes_nothing(adapter_run, tmp_path):
    store = AdapterStore(tmp_path / "store")
    store.publish("acme", "c", adapter_run / "adapter", {"base_model": "m",
                  "base_config_hash": "h", "rank": 4})  # fmt: skip
    result = cli("adapters", "rm", "acme/c:1", "--store", str(store.root), stdin=subprocess.DEVNULL)
    assert_one_line_error(result, "acme/c:1", "--yes")
    assert [v.ref for v in store.list()] == ["acme/c:1"]


# -- low: a publish killed between rename and commit leaves nothing behind ------------------------

KILLED_PUBLISH = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import lexlora.registry as r

    rename = r._rename_into_place

    def rename_then_die(*args):
        rename(*args)
        os._exit(1)  # the folder is in place, its row never committed

    r._rename_into_place = rename_then_die
    meta = {"base_model": "m", "base_config_hash": "h", "rank": 4}
    r.AdapterStore(Path(sys.argv[1])).publish("acme", "c", Path(sys.argv[2]), meta)
    print("finished without crashing")
    """
)


def test_a_publish_killed_between_rename_and_commit_is_cleaned_by_the_next_write(
    adapter_run, tmp_path
):
    src = adapter_run / "adapter"
    store = AdapterStore(tmp_path / "store")
    meta = {"base_model": "m", "base_config_hash": "h", "rank": 4}
    store.publish("acme", "c", src, meta)
    mine = store.root / "acme" / "c" / "7"  # a folder the user put there: never deleted
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")

    child = subprocess.run(
        [sys.executable, "-c", KILLED_PUBLISH, str(store.root), str(src)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert child.returncode == 1 and "finished" not in child.stdout, child.stderr
    orphan = store.root / "acme" / "c" / "8"
    assert json.loads((orphan / "lexlora.json").read_text())["version"] == 8

    listed = cli("adapters", "list", "--store", str(store.root), "--json")
    assert [row["ref"] for row in json.loads(listed.stdout)] == ["acme/c:1"]
    assert not orphan.exists()  # the next registry write deleted it
    assert (mine / "notes.txt").read_text() == "mine"
    store.verify(store.resolve("acme", "c:1"))  # the committed version is intact
    assert store.publish("acme", "c", src, meta).version == 9  # 8 may have been read: skipped
    assert read_adapter(store.resolve("acme", "c").path).rank == 4
    assert store.resolve("acme", "c:9").sha256 == sha256_file(src / WEIGHTS)
