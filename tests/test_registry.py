"""The adapter registry: store layout, SQLite index, isolation, crash safety, concurrency, CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lexlora.errors import LexloraError
from lexlora.io import sha256_file
from lexlora.registry import NAME_PATTERN, AdapterStore, validate_name

META = {"base_model": "tiny-llama", "base_config_hash": "abc123", "rank": 4}
REPO = Path(__file__).resolve().parents[1]


def make_adapter(folder: Path, seed: int = 0) -> Path:
    """A tiny PEFT-shaped adapter folder (random LoRA A matrix + adapter_config.json)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    key = "base_model.model.layers.0.self_attn.q_proj.lora_A.weight"
    save_file({key: torch.randn(4, 8, generator=gen)}, folder / "adapter_model.safetensors")
    config = {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj"],
        "base_model_name_or_path": "x",
        "peft_type": "LORA",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_adapter(tmp_path / "src")


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "store")


def snapshot(root: Path) -> list[tuple[str, str]]:
    """Every file under ``root`` with its sha256 (the index's WAL side files excluded)."""
    return sorted(
        (str(p.relative_to(root)), sha256_file(p) if p.is_file() else "dir")
        for p in root.rglob("*")
        if not p.name.endswith(("-wal", "-shm"))
    )


def refs(store: AdapterStore, tenant: str | None = None) -> list[str]:
    return [v.ref for v in store.list(tenant)]


def staging_leftovers(store: AdapterStore) -> list[str]:
    return [p.name for p in store.staging_root.iterdir() if p.name != ".lock"]


# -- publish, resolve, list ---------------------------------------------------------------------


def test_publish_numbers_versions_and_writes_the_store_layout(store, src):
    v1 = store.publish("acme", "contracts", src, META)
    v2 = store.publish("acme", "contracts", src, META)
    assert (v1.version, v2.version) == (1, 2)
    assert v2.path == store.root / "acme" / "contracts" / "2"
    assert {p.name for p in v2.path.iterdir()} == {
        "adapter_model.safetensors",
        "adapter_config.json",
        "lexlora.json",
    }
    meta = json.loads((v2.path / "lexlora.json").read_text())
    assert meta == v2.metadata
    assert meta["tenant"] == "acme" and meta["name"] == "contracts" and meta["version"] == 2
    assert meta["sha256"] == sha256_file(src / "adapter_model.safetensors") == v2.sha256
    assert meta["created_at"].endswith("+00:00") and meta["rank"] == 4
    assert v1.aliases == ("latest",) and v2.aliases == ("latest",)  # each at its publish time
    assert store.resolve("acme", "contracts:1").aliases == ()
    assert v2.ref == "acme/contracts:2"
    assert staging_leftovers(store) == []


def test_resolve_by_latest_version_and_alias(store, src):
    store.publish("acme", "contracts", src, META)
    store.publish("acme", "contracts", make_adapter(src.parent / "b", seed=1), META)
    assert store.resolve("acme", "contracts").version == 2
    assert store.resolve("acme", "contracts:1").version == 1
    assert store.resolve("acme", "contracts@latest").version == 2
    with pytest.raises(LexloraError, match=r"adapter 'acme/contracts@prod' not found"):
        store.resolve("acme", "contracts@prod")
    store.promote("acme", "contracts", 1)
    prod = store.resolve("acme", "contracts@prod")
    assert prod.version == 1 and prod.aliases == ("prod",)
    store.promote("acme", "contracts", 2, alias="prod")  # moving an alias
    assert store.resolve("acme", "contracts@prod").aliases == ("latest", "prod")
    with pytest.raises(LexloraError, match=r"adapter 'acme/contracts:7' not found"):
        store.promote("acme", "contracts", 7)


def test_list_is_per_tenant_and_tenants_are_isolated(store, src):
    store.publish("acme", "contracts", src, META)
    store.publish("acme", "leases", src, META)
    store.publish("globex", "claims", src, META)
    assert refs(store, "acme") == ["acme/contracts:1", "acme/leases:1"]
    assert refs(store, "globex") == ["globex/claims:1"]
    assert refs(store) == ["acme/contracts:1", "acme/leases:1", "globex/claims:1"]
    assert store.tenants() == ["acme", "globex"]
    assert store.list("nobody") == []

    def message(tenant: str, ref: str) -> str:
        with pytest.raises(LexloraError) as exc:
            store.resolve(tenant, ref)
        return str(exc.value)

    # another tenant's adapter looks exactly like one that does not exist
    assert message("globex", "contracts") == "adapter 'globex/contracts' not found"
    assert message("globex", "leases") == message("globex", "leases")
    assert message("globex", "contracts:1") == "adapter 'globex/contracts:1' not found"
    assert message("zeta", "contracts") == "adapter 'zeta/contracts' not found"
    with pytest.raises(LexloraError, match="not found"):
        store.promote("globex", "contracts", 1)
    with pytest.raises(LexloraError, match="not found"):
        store.remove("globex", "contracts")
    assert refs(store, "acme") == ["acme/contracts:1", "acme/leases:1"]


def test_tampered_weights_fail_the_checksum(store, src):
    av = store.publish("acme", "contracts", src, META)
    make_adapter(av.path, seed=99)  # other weights, same file name
    with pytest.raises(LexloraError, match=r"acme/contracts:1: checksum mismatch \(tampered"):
        store.resolve("acme", "contracts")
    assert store.resolve("acme", "contracts", verify=False).version == 1
    (av.path / "adapter_model.safetensors").unlink()
    with pytest.raises(LexloraError, match="is missing"):
        store.verify(av)


def test_explicit_versions(store, src):
    assert store.publish("acme", "contracts", src, META, version=5).version == 5
    with pytest.raises(LexloraError, match=r"adapter 'acme/contracts:5' already exists"):
        store.publish("acme", "contracts", src, META, version=5)
    assert store.publish("acme", "contracts", src, META).version == 6
    assert store.publish("acme", "contracts", src, META, version=2).version == 2
    assert refs(store) == ["acme/contracts:2", "acme/contracts:5", "acme/contracts:6"]
    assert store.resolve("acme", "contracts").version == 2  # latest = last published
    assert staging_leftovers(store) == []


def test_bad_publish_input_names_what_is_missing(store, src, tmp_path):
    for key in META:
        partial = {k: v for k, v in META.items() if k != key}
        with pytest.raises(LexloraError, match=f"missing {key}"):
            store.publish("acme", "contracts", src, partial)
    with pytest.raises(LexloraError, match="rank=0: expected a positive integer"):
        store.publish("acme", "contracts", src, {**META, "rank": 0})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LexloraError, match=r"adapter_model\.safetensors, adapter_config\.json"):
        store.publish("acme", "contracts", empty, META)
    (src / "adapter_config.json").unlink()
    with pytest.raises(LexloraError, match=r"missing adapter_config\.json"):
        store.publish("acme", "contracts", src, META)
    assert store.list() == [] and staging_leftovers(store) == []


BAD_NAMES = ["../x", "a/b", "..", ".", "A", "x" * 64, "", "a\\b", "/abs", "a b", "-x", "a.b"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_path_like_names_are_refused_and_change_nothing(store, src, bad):
    store.publish("acme", "contracts", src, META)
    before = snapshot(store.root)
    calls = [
        lambda: store.publish(bad, "contracts", src, META),
        lambda: store.publish("acme", bad, src, META),
        lambda: store.resolve(bad, "contracts"),
        lambda: store.resolve("acme", bad),
        lambda: store.resolve("acme", f"contracts@{bad}"),
        lambda: store.promote("acme", "contracts", 1, alias=bad),
        lambda: store.promote(bad, "contracts", 1),
        lambda: store.remove(bad, "contracts"),
        lambda: store.remove("acme", bad),
        lambda: store.list(bad),
    ]
    for call in calls:
        with pytest.raises(LexloraError, match="name"):
            call()
    assert snapshot(store.root) == before
    assert refs(store) == ["acme/contracts:1"]


@pytest.mark.parametrize(
    "ref",
    ["contracts:0", "contracts:-1", "contracts:x", "contracts:1@prod", "contracts:" + "9" * 20],
)
def test_bad_references_are_refused(store, src, ref):
    store.publish("acme", "contracts", src, META)
    with pytest.raises(LexloraError):
        store.resolve("acme", ref)
    with pytest.raises(LexloraError, match="expected an integer from 1"):
        store.publish("acme", "contracts", src, META, version=0)


def test_name_validation_message():
    with pytest.raises(LexloraError) as exc:
        validate_name("tenant", "../x")
    assert str(exc.value) == (
        "tenant name '../x': expected 1-63 lowercase letters, digits, '-' or '_' (no '/', no '..')"
    )
    assert validate_name("adapter", "x" * 63) == "x" * 63
    assert NAME_PATTERN.pattern == r"^[a-z0-9][a-z0-9_-]{0,62}$"


def test_a_symlinked_tenant_folder_cannot_lead_outside(store, src, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "evil").symlink_to(outside)
    with pytest.raises(LexloraError, match="outside the adapter store"):
        store.publish("evil", "contracts", src, META)
    assert list(outside.iterdir()) == []


# -- remove ---------------------------------------------------------------------------------------


def test_remove_drops_aliases_and_the_last_version_drops_the_adapter(store, src):
    for _ in range(3):
        store.publish("acme", "contracts", src, META)
    store.promote("acme", "contracts", 3)
    store.remove("acme", "contracts", 3)
    assert not (store.root / "acme" / "contracts" / "3").exists()
    with pytest.raises(LexloraError, match="not found"):
        store.resolve("acme", "contracts@prod")  # prod pointed at 3: gone
    assert store.resolve("acme", "contracts").version == 2  # latest moves to the highest left
    with pytest.raises(LexloraError, match=r"'acme/contracts:3' not found"):
        store.remove("acme", "contracts", 3)
    store.remove("acme", "contracts", 1)
    store.remove("acme", "contracts", 2)
    assert store.list() == [] and not (store.root / "acme" / "contracts").exists()
    with sqlite3.connect(store.index_path) as conn:
        assert conn.execute("SELECT count(*) FROM adapters").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM aliases").fetchone() == (0,)
    assert store.publish("acme", "contracts", src, META).version == 4  # numbers are never reused


def test_remove_every_version(store, src):
    store.publish("acme", "contracts", src, META)
    store.publish("acme", "contracts", src, META)
    store.publish("acme", "leases", src, META)
    store.remove("acme", "contracts")
    assert refs(store) == ["acme/leases:1"]
    assert not (store.root / "acme" / "contracts").exists()
    assert staging_leftovers(store) == []


def test_index_is_wal_with_foreign_keys(store, src, tmp_path, monkeypatch):
    store.publish("acme", "contracts", src, META)
    with sqlite3.connect(store.index_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"tenants", "adapters", "versions", "aliases"} <= tables
    with store._read() as conn:
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    monkeypatch.setenv("LEXLORA_HOME", str(tmp_path / "home"))
    assert AdapterStore().root == (tmp_path / "home" / "adapters").resolve()


# -- crash safety: a real child process dies at a chosen point --------------------------------

CRASH_CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import lexlora.registry as r

    root, source, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    store = r.AdapterStore(root)

    def die(*args, **kwargs):
        os._exit(1)

    def then_die(fn):
        def wrapped(*args, **kwargs):
            fn(*args, **kwargs)
            os._exit(1)
        return wrapped

    if point == "after_copy":
        r._fsync_tree = die  # staging copy written, not yet flushed or indexed
    elif point == "before_rename":
        r._rename_into_place = die
    elif point == "after_rename":
        r._rename_into_place = then_die(r._rename_into_place)
    elif point in ("before_commit", "after_commit"):  # the publish's commit, after the rename
        rename, commit = r._rename_into_place, r._commit

        def rename_then_arm(*args):
            rename(*args)
            r._commit = die if point == "before_commit" else then_die(commit)

        r._rename_into_place = rename_then_arm
    elif point == "remove_before_delete":
        r.AdapterStore._discard = die  # rows deleted and committed, folder still there
    if point.startswith("remove"):
        store.remove("acme", "contracts", 2)
    else:
        store.publish("acme", "contracts", source, {"base_model": "m", "base_config_hash": "h",
                                                    "rank": 4})
    print("finished without crashing")
    """
)


def run_child(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


CRASH_OUTCOMES = {  # point → (new version visible after the crash, orphan folder "2" left)
    "after_copy": (False, False),
    "before_rename": (False, False),
    "after_rename": (False, True),
    "before_commit": (False, True),
    "after_commit": (True, False),
}


@pytest.mark.parametrize("point", list(CRASH_OUTCOMES))
def test_a_publish_killed_at_any_point_leaves_old_or_new_state(tmp_path, src, point):
    root = tmp_path / "store"
    AdapterStore(root).publish("acme", "contracts", src, META)
    new_src = make_adapter(tmp_path / "new", seed=1)
    child = run_child(CRASH_CHILD, root, new_src, point)
    assert child.returncode == 1 and "finished" not in child.stdout, child.stderr
    new_visible, orphan = CRASH_OUTCOMES[point]
    if point in ("after_copy", "before_rename"):
        assert os.listdir(root / ".staging") != [".lock"]  # the crash did leave a staging copy
    assert (root / "acme" / "contracts" / "2").exists() == (new_visible or orphan)

    store = AdapterStore(root)  # reopening (a write) cleans staging leftovers and orphans
    assert staging_leftovers(store) == []
    expected = ["acme/contracts:1", "acme/contracts:2"] if new_visible else ["acme/contracts:1"]
    assert refs(store) == expected
    assert store.resolve("acme", "contracts").ref == expected[-1]  # verifies the checksum too
    assert (root / "acme" / "contracts" / "2").exists() == new_visible
    if orphan:
        with pytest.raises(LexloraError, match="not found"):
            store.resolve("acme", "contracts:2")

    # the next publish works; an orphan's number is skipped (vLLM may have read its folder)
    nxt = store.publish("acme", "contracts", make_adapter(tmp_path / "next", seed=2), META)
    assert nxt.version == 3 if (new_visible or orphan) else nxt.version == 2
    assert store.resolve("acme", "contracts").ref == nxt.ref
    if orphan:  # nor can it be asked for explicitly
        with pytest.raises(LexloraError, match="never reused"):
            store.publish("acme", "contracts", new_src, META, version=2)
    assert staging_leftovers(store) == []


def test_a_remove_killed_before_deleting_folders_hides_the_version(tmp_path, src):
    root = tmp_path / "store"
    store = AdapterStore(root)
    store.publish("acme", "contracts", src, META)
    store.publish("acme", "contracts", src, META)
    child = run_child(CRASH_CHILD, root, src, "remove_before_delete")
    assert child.returncode == 1, child.stderr
    assert (root / "acme" / "contracts" / "2").is_dir()  # orphan: invisible
    store = AdapterStore(root)  # and cleaned by the next write
    assert refs(store) == ["acme/contracts:1"]
    assert not (root / "acme" / "contracts" / "2").exists()
    assert store.resolve("acme", "contracts").version == 1
    assert store.publish("acme", "contracts", src, META).version == 3


# -- concurrency ------------------------------------------------------------------------------

PUBLISH_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from lexlora.registry import AdapterStore

    root, source = Path(sys.argv[1]), Path(sys.argv[2])
    meta = {"base_model": "m", "base_config_hash": "h", "rank": 4}
    for _ in range(5):
        print(AdapterStore(root).publish("acme", "contracts", source, meta).version, flush=True)
    """
)


def test_two_processes_publishing_at_once_get_distinct_versions(tmp_path):
    root = tmp_path / "store"
    sources = [make_adapter(tmp_path / f"src{i}", seed=i) for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISH_CHILD, str(root), str(s)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for s in sources
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    printed = sorted(int(v) for out, _ in outputs for v in out.split())
    assert printed == list(range(1, 11))

    store = AdapterStore(root)
    versions = store.list("acme")
    assert [v.version for v in versions] == list(range(1, 11))
    shas = {sha256_file(s / "adapter_model.safetensors") for s in sources}
    for v in versions:
        store.verify(v)
        assert v.sha256 in shas and v.metadata["version"] == v.version
    assert sorted(int(p.name) for p in (root / "acme" / "contracts").iterdir()) == list(
        range(1, 11)
    )
    assert store.resolve("acme", "contracts").version in range(1, 11)
    with sqlite3.connect(store.index_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("SELECT count(*) FROM aliases").fetchone() == (1,)
    assert staging_leftovers(store) == []


# -- CLI --------------------------------------------------------------------------------------


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lexlora.cli", "adapters", *args],
        capture_output=True,
        text=True,
        input=input,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_cli_list_show_promote_rm(tmp_path, src):
    root = tmp_path / "store"
    store = AdapterStore(root)
    store.publish("acme", "contracts", src, META)
    store.publish("acme", "contracts", src, META)
    store.publish("globex", "claims", src, META)
    s = ("--store", str(root))

    listed = json.loads(cli("list", "--tenant", "acme", *s, "--json").stdout)
    assert [row["ref"] for row in listed] == ["acme/contracts:1", "acme/contracts:2"]
    assert listed[1]["aliases"] == ["latest"] and listed[1]["metadata"]["rank"] == 4
    table = cli("list", *s)
    assert table.returncode == 0 and "globex" in table.stdout and "claims" in table.stdout

    assert cli("promote", "acme/contracts:1", *s).returncode == 0
    shown = cli("show", "acme/contracts@prod", *s, "--json")
    assert shown.returncode == 0, shown.stderr
    shown = json.loads(shown.stdout)
    assert shown["version"] == 1 and shown["path"] == str(store.root / "acme/contracts/1")
    assert shown["metadata"]["sha256"] == shown["sha256"]
    human = cli("show", "acme/contracts", *s)
    assert human.returncode == 0 and "acme/contracts:2" in human.stdout
    assert "checksum ok" in human.stdout

    kept = cli("rm", "acme/contracts:2", *s, input="n\n")
    assert kept.returncode == 1 and len(store.list("acme")) == 2
    assert cli("rm", "acme/contracts:2", *s, "--yes").returncode == 0
    assert refs(store, "acme") == ["acme/contracts:1"]
    assert cli("rm", "acme/contracts", *s, input="y\n").returncode == 0
    assert refs(store) == ["globex/claims:1"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("show", "acme/../x"), "adapter name '../x'"),
        (("show", "../acme/x"), "tenant name '..'"),
        (("show", "acme"), "expected TENANT/NAME"),
        (("show", "globex/contracts"), "adapter 'globex/contracts' not found"),
        (("promote", "acme/contracts"), "expected TENANT/NAME:VERSION"),
        (("promote", "acme/contracts:1", "--alias", "Prod"), "alias name 'Prod'"),
        (("rm", "acme/contracts@prod", "--yes"), "expected TENANT/NAME[:VERSION]"),
        (("list", "--tenant", "a/b"), "tenant name 'a/b'"),
    ],
)
def test_cli_bad_refs_exit_2_with_one_line(tmp_path, src, args, expected):
    root = tmp_path / "store"
    AdapterStore(root).publish("acme", "contracts", src, META)
    before = snapshot(root)
    result = cli(*args, "--store", str(root))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert snapshot(root) == before


def test_cli_show_refuses_tampered_weights(tmp_path, src):
    root = tmp_path / "store"
    av = AdapterStore(root).publish("acme", "contracts", src, META)
    make_adapter(av.path, seed=5)
    result = cli("show", "acme/contracts:1", "--store", str(root))
    assert result.returncode == 2 and "checksum mismatch" in result.stderr
