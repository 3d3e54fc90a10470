"""What each tenant may run: its own published adapters for the served base model, by reference.

Everything is looked up within the caller's tenant, so another tenant's adapter is never even
queried; unknown, foreign, malformed and path-like references all end in the same
:func:`model_not_found`. Resolved references (``contracts`` = ``@latest``, ``contracts@prod``) are
cached so that traffic keeps a stable version until an admin reload re-resolves them
(:meth:`TenantCatalog.changes`, then :meth:`TenantCatalog.apply`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from lexlora.artifacts.adapter import check_engine
from lexlora.errors import LexloraError
from lexlora.registry import AdapterStore, AdapterVersion
from lexlora.serve.errors import bad_request, model_not_found, unsupported


@dataclass(frozen=True)
class Target:
    """What a request runs on: the base (no parts) or a weighted sum of adapter versions."""

    tenant: str
    parts: tuple[tuple[AdapterVersion, float], ...] = ()

    @property
    def is_base(self) -> bool:
        return not self.parts

    @property
    def is_plain(self) -> bool:
        """One adapter at its trained strength (no scaling, no composition)."""
        return len(self.parts) == 1 and self.parts[0][1] == 1.0

    @property
    def label(self) -> str:
        """Short name for metrics and logs: ``base``, ``contracts:2``, ``contracts:2*0.5+…``."""
        if self.is_base:
            return "base"
        if self.is_plain:
            return f"{self.parts[0][0].name}:{self.parts[0][0].version}"
        return "+".join(f"{av.name}:{av.version}*{w:g}" for av, w in self.parts)


@dataclass(frozen=True)
class AliasChange:
    """A cached reference that names another version after a reload (``new`` None: gone)."""

    tenant: str
    ref: str
    old: AdapterVersion
    new: AdapterVersion | None

    def describe(self) -> dict:
        return {
            "tenant": self.tenant,
            "ref": self.ref,
            "from": self.old.version,
            "to": None if self.new is None else self.new.version,
        }


@dataclass(frozen=True)
class Capabilities:
    """What the engine can do with adapters (from the engine's flags)."""

    engine: str
    scale: bool
    composition: bool


def _check_method(av: AdapterVersion, capabilities: Capabilities, param: str) -> None:
    """A 400 when the engine cannot serve the version's method, or when the request scales or
    composes an adapter that is not LoRA (``param``: the field that asked for it)."""
    try:
        check_engine(av.method, capabilities.engine, av.name)
    except LexloraError as exc:
        raise bad_request(str(exc), "model") from None
    if param != "model" and av.method != "lora":
        raise bad_request(
            f"adapter '{av.name}' is a {av.method} adapter: '{param}' applies to LoRA adapters "
            "only (send it alone, at its trained strength)",
            param,
        )


class TenantCatalog:
    """Tenant-scoped adapter lookup against the store, for one base model."""

    def __init__(self, store: AdapterStore, base_id: str, base_config_hash: str) -> None:
        self.store = store
        self.base_id = base_id
        self.base_config_hash = base_config_hash
        self._resolved: dict[tuple[str, str], AdapterVersion] = {}
        self._lock = threading.Lock()

    def adapters(self, tenant: str) -> list[AdapterVersion]:
        """Every version of the tenant's adapters built for the served base model."""
        wanted = self.base_config_hash
        return [av for av in self.store.list(tenant) if av.base_config_hash == wanted]

    def resolve(self, tenant: str, ref: str, param: str = "model") -> AdapterVersion:
        """The version ``ref`` names for ``tenant`` (cached), or the uniform 404."""
        key = (tenant, ref)
        with self._lock:
            found = self._resolved.get(key)
        if found is None:
            found = self._lookup(tenant, ref)
            if found is None:
                raise model_not_found(param)
            with self._lock:
                found = self._resolved.setdefault(key, found)
        return found

    def _lookup(self, tenant: str, ref: str) -> AdapterVersion | None:
        if not isinstance(ref, str) or len(ref) > 200:
            return None
        try:
            av = self.store.resolve(tenant, ref, verify=False)
        except (LexloraError, OverflowError):  # unknown, another tenant's, malformed, or a
            return None  # version too big for SQLite (the registry raises OverflowError then)
        return av if av.base_config_hash == self.base_config_hash else None

    def changes(self) -> list[AliasChange]:
        """Cached references that would name another version now (``new`` None: gone)."""
        with self._lock:
            cached = dict(self._resolved)
        changes = []
        for (tenant, ref), old in cached.items():
            new = self._lookup(tenant, ref)
            if new is None or (new.version, new.sha256) != (old.version, old.sha256):
                changes.append(AliasChange(tenant, ref, old, new))
        return changes

    def apply(self, changes: list[AliasChange]) -> None:
        """Point the cached references at their new versions (from :meth:`changes`)."""
        with self._lock:
            for change in changes:
                key = (change.tenant, change.ref)
                if change.new is None:
                    self._resolved.pop(key, None)
                else:
                    self._resolved[key] = change.new

    def cached_versions(self) -> list[tuple[str, AdapterVersion]]:
        """(tenant, version) of every cached reference."""
        with self._lock:
            return [(tenant, av) for (tenant, _), av in self._resolved.items()]

    def target(
        self,
        tenant: str,
        model: str,
        *,
        lora_scale: float | None,
        adapters: list[tuple[str, float]] | None,
        capabilities: Capabilities,
    ) -> Target:
        """Turn a request's ``model``, ``lora_scale`` and ``adapters`` into a :class:`Target`."""
        scale = 1.0 if lora_scale is None else lora_scale
        if adapters is not None:
            if model != self.base_id:
                raise bad_request(
                    f"with 'adapters', set 'model' to the base model {self.base_id!r}", "model"
                )
            parts = tuple(
                (self.resolve(tenant, name, param="adapters"), weight * scale)
                for name, weight in adapters
            )
            if not capabilities.composition:
                raise unsupported("adapters", capabilities.engine)
            parts = tuple(p for p in parts if p[1] != 0.0)
            for av, _ in parts:
                _check_method(av, capabilities, "adapters")
            return Target(tenant, parts)
        if model == self.base_id:
            return Target(tenant)
        av = self.resolve(tenant, model)
        if scale == 0.0:
            return Target(tenant)
        if scale != 1.0 and not capabilities.scale:
            raise unsupported("lora_scale", capabilities.engine)
        _check_method(av, capabilities, "lora_scale" if scale != 1.0 else "model")
        return Target(tenant, ((av, scale),))
