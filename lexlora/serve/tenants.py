"""Bearer keys → who is calling. Only sha256 digests of keys are kept; every digest is compared
(with ``hmac.compare_digest``) on every call, so the time taken does not depend on which matched."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from lexlora.serve.config import ServeConfig

KEY_PREFIX = "sk-lexlora-"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: a tenant, or the administrator (``tenant`` is None)."""

    tenant: str | None

    @property
    def is_admin(self) -> bool:
        return self.tenant is None


def hash_key(key: str) -> str:
    """The sha256 hex digest stored in serve.yaml for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random API key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyDirectory:
    """Maps API keys to callers using the hashes from the config."""

    def __init__(self, config: ServeConfig) -> None:
        self._entries: list[tuple[bytes, Caller]] = [
            (bytes.fromhex(h), Caller(tenant))
            for tenant, tc in config.tenants.items()
            for h in tc.api_key_sha256
        ]
        if config.admin_key_sha256:
            self._entries.append((bytes.fromhex(config.admin_key_sha256), Caller(None)))

    def authenticate(self, authorization: str | None) -> Caller | None:
        """The caller for an ``Authorization: Bearer KEY`` header value, or None."""
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return None
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found = None
        for stored, caller in self._entries:
            if hmac.compare_digest(stored, digest) and found is None:
                found = caller
        return found
