"""The bounded queue: at most ``max_queue`` generation requests admitted (running or waiting),
shared fairly between tenants.

Each tenant has ``share`` places reserved. Within its share a tenant is always admitted; beyond it,
it borrows a free place only while every other tenant's unused reserve stays free. So a tenant
that floods the server gets 429s once it runs out, and never takes another tenant's places:
``depth + Σ unused reserves ≤ max_queue`` holds at every moment. One more request than a tenant
may have gets a 429 at once rather than waiting without bound. Used from the event loop only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from lexlora.serve.errors import queue_full


class Ticket:
    """One admitted request; ``release`` (idempotent) frees its place."""

    def __init__(self, admission: Admission, tenant: str) -> None:
        self._admission: Admission | None = admission
        self.tenant = tenant

    def release(self) -> None:
        if self._admission is not None:
            self._admission._release(self.tenant)
            self._admission = None


class Admission:
    def __init__(self, max_queue: int, share: int | None = None, tenants: Iterable[str] = ()):
        self.max_queue = max_queue
        self.share = max_queue if share is None else share
        self.tenants = set(tenants)
        self.depth = 0
        self.by_tenant: Counter[str] = Counter()

    def admit(self, tenant: str) -> Ticket:
        """A ticket for ``tenant``, or the 429 error when it may not have one more."""
        held = self.by_tenant[tenant]
        if held >= self.share and self.depth + 1 + self._reserved_for_others(tenant) > (
            self.max_queue
        ):
            raise queue_full(self.share if self.depth < self.max_queue else None)
        if self.depth >= self.max_queue:
            raise queue_full()
        self.depth += 1
        self.by_tenant[tenant] += 1
        return Ticket(self, tenant)

    def _reserved_for_others(self, tenant: str) -> int:
        return sum(
            max(0, self.share - self.by_tenant[other]) for other in self.tenants if other != tenant
        )

    def _release(self, tenant: str) -> None:
        self.depth -= 1
        self.by_tenant[tenant] -= 1
