"""The adapter registry: a folder store ``ROOT/TENANT/NAME/VERSION/`` plus a SQLite index.

A version folder holds the PEFT files (``adapter_model.safetensors``, ``adapter_config.json``) and
``lexlora.json`` (metadata). vLLM's filesystem LoRA resolver and lexlora's server read that layout;
the index (``ROOT/index.sqlite``, WAL) records tenants, adapters, versions and aliases.

A version number never names two sets of weights: every number ever allocated is kept in
``version_numbers`` (removing a version does not free its number), so publish v1, v2, remove v2,
publish gives v3.

Crash safety: a version is copied into ``ROOT/.staging/<uuid>/``, checked, renamed into place and
only then indexed, all under SQLite's write lock (``BEGIN IMMEDIATE``). A version folder without a
row (a publish killed between rename and commit, a remove killed before deleting) is invisible; the
next write transaction (opening the store is one) deletes it if the registry made it (its
``lexlora.json`` names that version) and keeps its number used. Staging leftovers are deleted when
a store opens and nobody is staging.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lexlora.artifacts.adapter import CONFIG_FILE, WEIGHTS_FILE
from lexlora.errors import LexloraError
from lexlora.io import dumps_canonical, sha256_file, write_json

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: staging leftovers are then never cleaned
    fcntl = None  # type: ignore[assignment]

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
REF_PATTERN = re.compile(r"^(?P<name>[^:@]*)(?::(?P<version>[^:@]*)|@(?P<alias>[^:@]*))?$")
METADATA = "lexlora.json"
REQUIRED_METADATA = {"base_model": str, "base_config_hash": str, "rank": int}
LATEST = "latest"
BUSY_TIMEOUT_MS = 60_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS adapters (
    id INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name TEXT NOT NULL, created_at TEXT NOT NULL, UNIQUE (tenant_id, name));
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY,
    adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    version INTEGER NOT NULL CHECK (version > 0), sha256 TEXT NOT NULL,
    base_model TEXT NOT NULL, base_config_hash TEXT NOT NULL, rank INTEGER NOT NULL,
    created_at TEXT NOT NULL, metadata TEXT NOT NULL,  -- metadata: the whole lexlora.json
    UNIQUE (adapter_id, version));
CREATE TABLE IF NOT EXISTS aliases (
    adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    alias TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    PRIMARY KEY (adapter_id, alias));
CREATE TABLE IF NOT EXISTS version_numbers (  -- every number ever allocated (never deleted)
    tenant TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (tenant, name, version))
"""
SCHEMA_VERSION = 1  # PRAGMA user_version; 1: version_numbers (filled from versions on migration)
MIGRATE_VERSION_NUMBERS = """
INSERT OR IGNORE INTO version_numbers (tenant, name, version)
SELECT t.name, a.name, v.version
FROM versions v JOIN adapters a ON a.id = v.adapter_id JOIN tenants t ON t.id = a.tenant_id
"""
SELECT_VERSIONS = """
SELECT t.name, a.name, v.version, v.sha256, v.base_model, v.base_config_hash, v.rank,
       v.created_at, v.metadata,
       (SELECT group_concat(alias, ',') FROM (SELECT alias FROM aliases
        WHERE version_id = v.id ORDER BY alias))
FROM versions v JOIN adapters a ON a.id = v.adapter_id JOIN tenants t ON t.id = a.tenant_id
"""


def validate_name(kind: str, value: str) -> str:
    """``value`` if it is a safe tenant/adapter/alias name, else a LexloraError."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise LexloraError(
            f"{kind} name {value!r}: expected 1-63 lowercase letters, digits, '-' or '_' "
            "(no '/', no '..')"
        )
    return value


MAX_VERSION = 2**31 - 1  # fits SQLite integers and every client


def validate_version(value: object) -> int:
    """A positive integer version (also accepted as a decimal string)."""
    if isinstance(value, str) and value.isdecimal() and value.isascii():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VERSION:
        raise LexloraError(f"version {value!r}: expected an integer from 1 to {MAX_VERSION}")
    return value


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """``"name"``, ``"name:3"`` or ``"name@prod"`` → (name, version, alias), all validated."""
    m = REF_PATTERN.fullmatch(ref) if isinstance(ref, str) else None
    if m is None:
        raise LexloraError(f"adapter reference {ref!r}: expected NAME, NAME:VERSION or NAME@ALIAS")
    name = validate_name("adapter", m["name"])
    version = validate_version(m["version"]) if m["version"] is not None else None
    alias = validate_name("alias", m["alias"]) if m["alias"] is not None else None
    return name, version, alias


def split_tenant_ref(full: str) -> tuple[str, str]:
    """``"acme/contracts:3"`` → (``"acme"``, ``"contracts:3"``); the tenant is validated."""
    tenant, sep, ref = full.partition("/")
    if not sep:
        raise LexloraError(f"adapter reference {full!r}: expected TENANT/NAME[:VERSION|@ALIAS]")
    return validate_name("tenant", tenant), ref


@dataclass(frozen=True)
class AdapterVersion:
    """One published, indexed adapter version."""

    tenant: str
    name: str
    version: int
    path: Path
    sha256: str
    base_model: str
    base_config_hash: str
    rank: int
    created_at: str
    metadata: dict
    aliases: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.tenant}/{self.name}:{self.version}"

    @property
    def method(self) -> str:
        """The adapter method (:mod:`lexlora.adapter_methods`); versions published before
        methods existed are LoRA."""
        return str(self.metadata.get("method", "lora"))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (used by ``lexlora adapters ... --json``)."""
        d = {"ref": self.ref, **dataclasses.asdict(self)}
        return {**d, "path": str(self.path), "aliases": list(self.aliases)}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (and ``root``) to disk."""
    for p in sorted(root.rglob("*"), reverse=True):
        _fsync_path(p)
    _fsync_path(root)


def _rename_into_place(staging: Path, final: Path) -> None:
    """The commit point on disk: one atomic rename (a seam for the crash tests)."""
    os.rename(staging, final)


def _commit(conn: sqlite3.Connection) -> None:
    """The commit point of the index (a seam for the crash tests)."""
    conn.execute("COMMIT")


def _check_publish_input(source: Path, metadata: dict) -> dict:
    missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE) if not (source / f).is_file()]
    if missing:
        raise LexloraError(f"{source}: not an adapter folder, missing {', '.join(missing)}")
    if not isinstance(metadata, dict):
        raise LexloraError("adapter metadata: expected a JSON object")
    absent = [k for k in REQUIRED_METADATA if k not in metadata]
    if absent:
        raise LexloraError(f"adapter metadata: missing {', '.join(absent)}")
    for key, typ in REQUIRED_METADATA.items():
        value = metadata[key]
        lora = metadata.get("method", "lora") in ("lora", "lora+new_tokens")
        empty = ("",) if key == "rank" and not lora else ("", 0)  # rank 0: a method without LoRA
        if isinstance(value, bool) or not isinstance(value, typ) or value in empty:
            what = "a positive integer" if typ is int else "a non-empty string"
            raise LexloraError(f"adapter metadata {key}={value!r}: expected {what}")
    return dict(metadata)


class AdapterStore:
    """Published adapters under ``root`` (default ``LEXLORA_HOME/adapters``)."""

    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            from lexlora.home import lexlora_home

            root = lexlora_home() / "adapters"
        self.root = Path(root).expanduser().resolve()
        self.staging_root = self.root / ".staging"
        self.staging_root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.sqlite"
        self._enable_wal()
        with self._write() as conn:
            for statement in SCHEMA.split(";"):
                conn.execute(statement)
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                conn.execute(MIGRATE_VERSION_NUMBERS)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._clean_orphans(self._adapter_folders())
        self._clean_staging()

    # -- index plumbing -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.index_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
        )
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _enable_wal(self) -> None:
        """Switch the index to WAL (persistent). Two processes creating the index at once can
        see "database is locked" here despite the busy timeout, hence the retries."""
        for attempt in range(200):
            try:
                with self._read() as conn:
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError:
                if attempt == 199:
                    raise
                time.sleep(0.05)
        if mode != "wal":
            raise LexloraError(f"{self.index_path}: this file system does not support WAL")

    def _read(self) -> closing[sqlite3.Connection]:
        return closing(self._connect())

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``BEGIN IMMEDIATE`` serialises writers across processes."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            _commit(conn)
        finally:
            conn.close()

    # -- staging --------------------------------------------------------------------------------

    @contextmanager
    def _staging_lock(self, exclusive: bool = False) -> Iterator[bool]:
        """Shared while staging or discarding; exclusive (non-blocking) to clean up. Yields
        whether the lock was taken. The kernel drops it when a process dies."""
        if fcntl is None:  # pragma: no cover
            yield not exclusive
            return
        fd = os.open(self.staging_root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _clean_staging(self) -> None:
        """Delete what crashed publishes and removals left in ``.staging`` (if nobody stages)."""
        with self._staging_lock(exclusive=True) as locked:
            if not locked:
                return
            for entry in self.staging_root.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry)
                elif entry.name != ".lock":
                    entry.unlink()

    def _discard(self, path: Path) -> None:
        """Atomically take ``path`` out of the store, then delete it (staging lock held)."""
        trash = self.staging_root / f"{uuid.uuid4().hex}.trash"
        try:
            os.rename(path, trash)
        except FileNotFoundError:  # absent, or another process discarded it first
            return
        shutil.rmtree(trash)

    # -- paths ----------------------------------------------------------------------------------

    def _adapter_dir(self, tenant: str, name: str) -> Path:
        path = self.root / validate_name("tenant", tenant) / validate_name("adapter", name)
        if not path.resolve().is_relative_to(self.root):
            raise LexloraError(f"{path}: resolves outside the adapter store {self.root}")
        return path

    def _version_dir(self, tenant: str, name: str, version: int) -> Path:
        return self._adapter_dir(tenant, name) / str(validate_version(version))

    def _folder_versions(self, tenant: str, name: str) -> list[int]:
        folder = self._adapter_dir(tenant, name)
        if not folder.is_dir():
            return []
        numbers = (int(p.name) for p in folder.iterdir() if re.fullmatch(r"[1-9][0-9]*", p.name))
        return [n for n in numbers if n <= MAX_VERSION]

    def _adapter_folders(self) -> list[tuple[str, str]]:
        """(tenant, name) of every folder ``ROOT/TENANT/NAME`` with valid names."""
        return [
            (t.name, a.name)
            for t in sorted(self.root.iterdir())
            if t.is_dir() and not t.is_symlink() and NAME_PATTERN.fullmatch(t.name)
            for a in sorted(t.iterdir())
            if a.is_dir() and not a.is_symlink() and NAME_PATTERN.fullmatch(a.name)
        ]

    def _clean_orphans(self, adapters: list[tuple[str, str]]) -> None:
        """Delete the version folders of ``adapters`` that have no row and that the registry
        made (their ``lexlora.json`` names that version): what a publish killed between rename
        and commit, or a remove killed before deleting, left. They are found under the write
        lock, where no live publisher has a folder renamed in but uncommitted, and their numbers
        are recorded as used (committed) before anything is deleted."""
        with self._write() as conn:
            orphans = [
                (tenant, name, number)
                for tenant, name in adapters
                for number in self._folder_versions(tenant, name)
                if number not in _indexed_versions(conn, tenant, name)
                and _made_by_registry(self._version_dir(tenant, name, number), tenant, name, number)
            ]
            for orphan in orphans:
                _record_number(conn, *orphan)
        if orphans:
            with self._staging_lock():
                for orphan in orphans:
                    self._discard(self._version_dir(*orphan))

    # -- publishing -----------------------------------------------------------------------------

    def publish(
        self, tenant: str, name: str, source_dir: Path, metadata: dict, version: int | None = None
    ) -> AdapterVersion:
        """Copy the adapter folder ``source_dir`` into the store as a new version (``None``: the
        next number) and point alias ``latest`` at it. Atomic: all or nothing, even on a crash."""
        self._adapter_dir(tenant, name)
        version = None if version is None else validate_version(version)
        source = Path(source_dir)
        record = _check_publish_input(source, metadata)
        self._clean_orphans([(tenant, name)])
        with self._staging_lock():
            staging = self.staging_root / uuid.uuid4().hex
            try:
                record["sha256"] = self._copy_checked(source, staging)
                with self._write() as conn:
                    number = self._allocate(conn, tenant, name, version)
                    record.update(tenant=tenant, name=name, version=number, created_at=_now())
                    write_json(staging / METADATA, record)
                    _fsync_path(staging)
                    final = self._version_dir(tenant, name, number)
                    final.parent.mkdir(parents=True, exist_ok=True)
                    _rename_into_place(staging, final)
                    _fsync_path(final.parent)
                    self._insert(conn, record)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return self.resolve(tenant, f"{name}:{number}", verify=False)

    @staticmethod
    def _copy_checked(source: Path, staging: Path) -> str:
        """Copy ``source`` into ``staging``, flush it, check the copy (a valid LoRA folder with
        finite weights, see ``lexlora.artifacts.adapter``) and return the weights' sha256 after
        checking that the copy's matches the source's."""
        from lexlora.artifacts.adapter import read_adapter

        expected = sha256_file(source / WEIGHTS_FILE)
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns(METADATA))
        _fsync_tree(staging)
        actual = sha256_file(staging / WEIGHTS_FILE)
        if actual != expected:
            raise LexloraError(
                f"{source / WEIGHTS_FILE}: changed while being copied; publish again"
            )
        read_adapter(staging)
        return actual

    def _allocate(self, conn: sqlite3.Connection, tenant: str, name: str, want: int | None) -> int:
        """``want``, or the next number; never one allocated before (even if since removed) nor
        one a folder already has."""
        used = _used_numbers(conn, tenant, name)
        folders = set(self._folder_versions(tenant, name))  # e.g. one lexlora did not make
        if want is None:
            want = max(used | folders, default=0) + 1
            if want > MAX_VERSION:
                raise LexloraError(f"adapter '{tenant}/{name}': no version number left")
        elif want in _indexed_versions(conn, tenant, name):
            raise LexloraError(f"adapter '{tenant}/{name}:{want}' already exists")
        elif want in used:
            raise LexloraError(
                f"adapter '{tenant}/{name}:{want}' was published before and removed; a version "
                "number is never reused (omit --version to get the next one)"
            )
        elif want in folders:
            raise LexloraError(
                f"{self._version_dir(tenant, name, want)}: a folder lexlora did not make is in "
                f"the way of version {want}; move it away or omit --version"
            )
        _record_number(conn, tenant, name, want)
        return want

    @staticmethod
    def _insert(conn: sqlite3.Connection, record: dict) -> None:
        """Index a published version and move ``latest`` to it."""
        now = record["created_at"]
        tenant_id = conn.execute(
            "INSERT INTO tenants (name, created_at) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET name = name RETURNING id",
            (record["tenant"], now),
        ).fetchone()[0]
        adapter_id = conn.execute(
            "INSERT INTO adapters (tenant_id, name, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (tenant_id, name) DO UPDATE SET name = name RETURNING id",
            (tenant_id, record["name"], now),
        ).fetchone()[0]
        version_id = conn.execute(
            "INSERT INTO versions (adapter_id, version, sha256, base_model, base_config_hash, "
            "rank, created_at, metadata) VALUES (:adapter_id, :version, :sha256, :base_model, "
            ":base_config_hash, :rank, :created_at, :metadata) RETURNING id",
            {**record, "adapter_id": adapter_id, "metadata": dumps_canonical(record)},
        ).fetchone()[0]
        _set_alias(conn, adapter_id, LATEST, version_id)

    # -- reading --------------------------------------------------------------------------------

    def _row_to_version(self, row: tuple) -> AdapterVersion:
        *head, meta, aliases = row
        path = self._version_dir(head[0], head[1], head[2])
        aliases = tuple(aliases.split(",")) if aliases else ()
        return AdapterVersion(*head[:3], path, *head[3:], json.loads(meta), aliases)

    def resolve(self, tenant: str, ref: str, verify: bool = True) -> AdapterVersion:
        """The version ``ref`` names for ``tenant``: ``name`` (alias latest), ``name:3`` or
        ``name@prod``; with ``verify`` the weights' checksum is checked."""
        validate_name("tenant", tenant)
        name, version, alias = parse_ref(ref)
        if version is not None:
            where, arg = "v.version = ?", version
        else:
            where = "v.id = (SELECT version_id FROM aliases WHERE adapter_id = a.id AND alias = ?)"
            arg = alias or LATEST
        with self._read() as conn:
            row = conn.execute(
                f"{SELECT_VERSIONS} WHERE t.name = ? AND a.name = ? AND {where}",
                (tenant, name, arg),
            ).fetchone()
        if row is None:
            raise LexloraError(f"adapter '{tenant}/{ref}' not found")
        av = self._row_to_version(row)
        if verify:
            self.verify(av)
        return av

    def list(self, tenant: str | None = None) -> list[AdapterVersion]:
        """Every indexed version (of one tenant), by tenant, name and version."""
        where, args = ("", ())
        if tenant is not None:
            where, args = "WHERE t.name = ?", (validate_name("tenant", tenant),)
        with self._read() as conn:
            rows = conn.execute(
                f"{SELECT_VERSIONS} {where} ORDER BY t.name, a.name, v.version", args
            ).fetchall()
        return [self._row_to_version(r) for r in rows]

    def tenants(self) -> list[str]:
        """Tenants that ever published (a tenant row outlives its adapters)."""
        with self._read() as conn:
            return [r[0] for r in conn.execute("SELECT name FROM tenants ORDER BY name")]

    def verify(self, av: AdapterVersion) -> None:
        """Raise a LexloraError unless the weights on disk match the recorded sha256 and the
        folder passes ``lexlora.artifacts.adapter.read_adapter`` (finite weights, valid config:
        a store written before that check existed may hold NaN weights)."""
        from lexlora.artifacts.adapter import read_adapter

        weights = av.path / WEIGHTS_FILE
        if not weights.is_file():
            raise LexloraError(f"{av.ref}: {weights} is missing")
        if sha256_file(weights) != av.sha256:
            raise LexloraError(f"{av.ref}: checksum mismatch (tampered or corrupt weights)")
        read_adapter(av.path)

    # -- changing -------------------------------------------------------------------------------

    def promote(self, tenant: str, name: str, version: int, alias: str = "prod") -> None:
        """Point ``alias`` of ``tenant/name`` at ``version``."""
        self._version_dir(tenant, name, version)
        validate_name("alias", alias)
        with self._write() as conn:
            row = _find_version(conn, tenant, name, version)
            if row is None:
                raise LexloraError(f"adapter '{tenant}/{name}:{version}' not found")
            _set_alias(conn, row[0], alias, row[1])

    def remove(self, tenant: str, name: str, version: int | None = None) -> None:
        """Delete one version (``None``: every version) — rows first, in one transaction, then
        the folders. Aliases on a removed version go, except ``latest``, which moves to the
        highest remaining version; removing the last version removes the adapter."""
        self._adapter_dir(tenant, name)
        ref = f"{tenant}/{name}" + ("" if version is None else f":{validate_version(version)}")
        with self._write() as conn:
            row = _find_version(conn, tenant, name, version)
            if row is None:
                raise LexloraError(f"adapter '{ref}' not found")
            adapter_id, version_id = row
            if version is None:
                conn.execute("DELETE FROM adapters WHERE id = ?", (adapter_id,))
            else:
                conn.execute("DELETE FROM versions WHERE id = ?", (version_id,))
                _after_version_removed(conn, adapter_id)
        self._clean_orphans([(tenant, name)])  # what crashed publishes/removes left
        with self._staging_lock(), self._write() as conn:  # only folders that have no row
            left = _indexed_versions(conn, tenant, name)
            for number in self._folder_versions(tenant, name):
                if number not in left and (version is None or number == version):
                    self._discard(self._version_dir(tenant, name, number))
            folder = self._adapter_dir(tenant, name)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _indexed_versions(conn: sqlite3.Connection, tenant: str, name: str) -> set[int]:
    rows = conn.execute(
        "SELECT v.version FROM versions v JOIN adapters a ON a.id = v.adapter_id "
        "JOIN tenants t ON t.id = a.tenant_id WHERE t.name = ? AND a.name = ?",
        (tenant, name),
    )
    return {r[0] for r in rows}


def _used_numbers(conn: sqlite3.Connection, tenant: str, name: str) -> set[int]:
    """Every version number ever allocated to ``tenant/name``."""
    rows = conn.execute(
        "SELECT version FROM version_numbers WHERE tenant = ? AND name = ?", (tenant, name)
    )
    return {r[0] for r in rows}


def _record_number(conn: sqlite3.Connection, tenant: str, name: str, version: int) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO version_numbers (tenant, name, version) VALUES (?, ?, ?)",
        (tenant, name, version),
    )


def _made_by_registry(folder: Path, tenant: str, name: str, version: int) -> bool:
    """Whether ``folder`` (not a link) holds the ``lexlora.json`` the registry writes for that
    version."""
    if folder.is_symlink():
        return False
    try:
        meta = json.loads((folder / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    wanted = {"tenant": tenant, "name": name, "version": version}
    return isinstance(meta, dict) and all(meta.get(k) == v for k, v in wanted.items())


def _find_version(
    conn: sqlite3.Connection, tenant: str, name: str, version: int | None
) -> tuple[int, int | None] | None:
    """(adapter id, version id or None for ``version=None``); None if either is unknown."""
    row = conn.execute(
        "SELECT a.id, v.id FROM adapters a JOIN tenants t ON t.id = a.tenant_id "
        "LEFT JOIN versions v ON v.adapter_id = a.id AND v.version = ? "
        "WHERE t.name = ? AND a.name = ?",
        (version, tenant, name),
    ).fetchone()
    return None if row is None or (version is not None and row[1] is None) else row


def _set_alias(conn: sqlite3.Connection, adapter_id: int, alias: str, version_id: int) -> None:
    conn.execute(
        "INSERT INTO aliases (adapter_id, alias, version_id) VALUES (?, ?, ?) "
        "ON CONFLICT (adapter_id, alias) DO UPDATE SET version_id = excluded.version_id",
        (adapter_id, alias, version_id),
    )


def _after_version_removed(conn: sqlite3.Connection, adapter_id: int) -> None:
    """Drop the adapter if it has no version left, else keep ``latest`` on the highest one."""
    conn.execute(
        "INSERT OR IGNORE INTO aliases (adapter_id, alias, version_id) SELECT adapter_id, ?, id "
        "FROM versions WHERE adapter_id = ? ORDER BY version DESC LIMIT 1",
        (LATEST, adapter_id),
    )
    conn.execute(
        "DELETE FROM adapters WHERE id = ? AND NOT EXISTS "
        "(SELECT 1 FROM versions WHERE adapter_id = ?)",
        (adapter_id, adapter_id),
    )
