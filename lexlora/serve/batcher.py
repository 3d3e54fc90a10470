"""Collects requests that arrive together into one batch, taking fairly across owners.

Producers (the event loop) ``put`` items from any thread; the engine's worker thread ``take``s up
to ``n`` of them. An idle worker blocks for the first item, then waits ``window_s`` for companions
so that requests sent at the same moment are prefilled and decoded in the same forward passes.
A busy worker takes what is waiting without blocking: those rows join the running batch.

Items are queued per owner (``owner(item)``, e.g. the tenant). ``take`` picks, one place at a
time, from the owner with the fewest rows (already running, given as ``running``, plus taken so
far), the least recently served first on a tie. So one owner's 70 queued rows never starve
another's: a newcomer gets the next free place in the batch.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(
        self, window_s: float = 0.005, owner: Callable[[T], Hashable] = lambda _: None
    ) -> None:
        self.window_s = window_s
        self._owner = owner
        self._queues: dict[Hashable, deque[T]] = {}
        self._served: dict[Hashable, int] = {}  # owner → tick of its last take
        self._ticks = itertools.count(1)
        self._count = 0
        self._cond = threading.Condition()
        self._woken = False

    def __len__(self) -> int:
        with self._cond:
            return self._count

    def put(self, item: T) -> None:
        with self._cond:
            self._queues.setdefault(self._owner(item), deque()).append(item)
            self._count += 1
            self._cond.notify_all()

    def put_back(self, items: list[T]) -> None:
        """Return taken ``items`` to the front of their owners' queues, in their order."""
        with self._cond:
            for item in reversed(items):
                self._queues.setdefault(self._owner(item), deque()).appendleft(item)
            self._count += len(items)

    def wake(self) -> None:
        """Make a blocked ``take`` return (e.g. to run an adapter load or to stop)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def take(
        self,
        n: int,
        *,
        block: bool,
        timeout: float = 1.0,
        running: Mapping[Hashable, int] | None = None,
    ) -> list[T]:
        """Up to ``n`` items, fairly across owners (``running``: rows each owner already has in
        the batch). With ``block``, wait up to ``timeout`` for the first one (or a ``wake``) and
        then ``window_s`` for more."""
        with self._cond:
            if block and not self._count:
                self._cond.wait_for(lambda: self._count or self._woken, timeout)
            self._woken = False
            if block and self._count and self._count < n and self.window_s > 0:
                deadline = time.monotonic() + self.window_s
                while self._count < n:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait(left):
                        break
            return self._take_fairly(n, dict(running or {}))

    def _take_fairly(self, n: int, load: dict[Hashable, int]) -> list[T]:
        taken: list[T] = []
        while len(taken) < n and self._count:
            owner = min(
                (o for o, q in self._queues.items() if q),
                key=lambda o: (load.get(o, 0), self._served.get(o, 0)),
            )
            taken.append(self._queues[owner].popleft())
            self._count -= 1
            load[owner] = load.get(owner, 0) + 1
            self._served[owner] = next(self._ticks)
            if not self._queues[owner]:
                del self._queues[owner]
        return taken
