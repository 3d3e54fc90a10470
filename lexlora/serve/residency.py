"""Which adapters are loaded in the engine, under which internal names: an LRU of ``max_loras``.

Internal names are unique per tenant, never the bare adapter name, and keyed by the weights'
checksum, so that other weights can never be served under a name already resident:

- one version at full strength: ``TENANT--NAME--vVERSION--<sha256 of the weights, 12 hex>``
  (e.g. ``acme--contracts--v2--3f2a9c01d4e5``);
- scaled or composed: ``TENANT--w<sha256 of the parts, their checksums and weights, 16 hex>``.

Tenant names contain no ``--`` and do not end in ``-`` (see ``config.check_tenant_name``), so two
different targets never share a name. A request *pins* its adapter while it runs; loading a new
adapter when all slots are taken evicts the least recently used unpinned one, and if every slot is
pinned the request gets a 429. Weights are checked against their sha256 before every load.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field

from lexlora.registry import AdapterStore
from lexlora.serve.catalog import Target
from lexlora.serve.engines.base import AdapterPart, Engine
from lexlora.serve.errors import ApiError


def internal_name(target: Target) -> str:
    """The engine-side name of a non-base target."""
    if target.is_plain:
        av = target.parts[0][0]
        return f"{target.tenant}--{av.name}--v{av.version}--{av.sha256[:12]}"
    spec = "|".join(f"{av.name}:{av.version}:{av.sha256}:{w!r}" for av, w in target.parts)
    return f"{target.tenant}--w{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


@dataclass
class Resident:
    """One adapter loaded in the engine."""

    name: str
    target: Target
    pins: int = 0
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict:
        return {
            "internal_name": self.name,
            "tenant": self.target.tenant,
            "adapter": self.target.label,
            "parts": [
                {"name": av.name, "version": av.version, "weight": w} for av, w in self.target.parts
            ],
            "in_use": self.pins,
            "loaded_at": int(self.loaded_at),
        }


class AllSlotsBusy(ApiError):
    def __init__(self, max_loras: int) -> None:
        super().__init__(
            429,
            f"all {max_loras} adapter slots are in use by running requests; retry shortly",
            type="rate_limit_error",
            code="adapter_slots_busy",
        )


class ResidentAdapters:
    """Loads targets into the engine on demand, pins them while used, evicts the LRU idle one."""

    def __init__(self, engine: Engine, store: AdapterStore, max_loras: int) -> None:
        self._engine = engine
        self._store = store
        self.max_loras = max_loras
        self._entries: dict[str, Resident] = {}
        self._lock = asyncio.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def snapshot(self) -> list[dict]:
        return [e.describe() for e in sorted(self._entries.values(), key=lambda e: e.name)]

    async def acquire(self, target: Target) -> str:
        """Load ``target`` if needed, pin it and return its internal name."""
        name = internal_name(target)
        async with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                await self._make_room()
                await self._load(name, target)
                entry = self._entries[name] = Resident(name, target)
            entry.pins += 1
            entry.last_used = time.monotonic()
            return name

    def release(self, name: str) -> None:
        entry = self._entries.get(name)
        if entry is not None and entry.pins > 0:
            entry.pins -= 1
            entry.last_used = time.monotonic()

    async def ensure(self, target: Target) -> str:
        """Load ``target`` without keeping it pinned (admin load, preloading)."""
        name = await self.acquire(target)
        self.release(name)
        return name

    async def unload(self, name: str) -> bool:
        """Unload ``name`` now; False when a request is using it (it stays)."""
        async with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                return True
            if entry.pins:
                return False
            await self._engine.unload_adapter(name)
            del self._entries[name]
            return True

    async def unload_superseded(self, names: set[str]) -> list[str]:
        """Unload the idle residents among ``names`` (versions an alias no longer points at)."""
        done = []
        for name in sorted(names):
            entry = self._entries.get(name)
            if entry is not None and not entry.pins and await self.unload(name):
                done.append(name)
        return done

    async def _make_room(self) -> None:
        while len(self._entries) >= self.max_loras:
            idle = [e for e in self._entries.values() if e.pins == 0]
            if not idle:
                raise AllSlotsBusy(self.max_loras)
            victim = min(idle, key=lambda e: e.last_used)
            await self._engine.unload_adapter(victim.name)
            del self._entries[victim.name]

    async def _load(self, name: str, target: Target) -> None:
        for av, _ in target.parts:
            await asyncio.to_thread(self._store.verify, av)  # LexloraError if tampered
        if target.is_plain:
            await self._engine.load_adapter(name, target.parts[0][0].path)
        else:
            parts = [AdapterPart(av.path, w) for av, w in target.parts]
            await self._engine.load_weighted_adapter(name, parts)
