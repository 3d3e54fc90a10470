"""Collects requests that arrive together into one batch.

Producers (the event loop) ``put`` items from any thread; the engine's worker thread ``take``s up
to ``n`` of them. An idle worker blocks for the first item, then waits ``window_s`` for companions
so that requests sent at the same moment are prefilled and decoded in the same forward passes.
A busy worker takes what is waiting without blocking: those rows join the running batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, window_s: float = 0.005) -> None:
        self.window_s = window_s
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._woken = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def put_back(self, items: list[T]) -> None:
        """Return taken ``items`` to the front of the queue, in their order."""
        with self._cond:
            self._items.extendleft(reversed(items))

    def wake(self) -> None:
        """Make a blocked ``take`` return (e.g. to run an adapter load or to stop)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def take(self, n: int, *, block: bool, timeout: float = 1.0) -> list[T]:
        """Up to ``n`` items. With ``block``, wait up to ``timeout`` for the first one (or a
        ``wake``) and then ``window_s`` for more."""
        with self._cond:
            if block and not self._items:
                self._cond.wait_for(lambda: self._items or self._woken, timeout)
            self._woken = False
            if block and self._items and len(self._items) < n and self.window_s > 0:
                deadline = time.monotonic() + self.window_s
                while len(self._items) < n:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait(left):
                        break
            return [self._items.popleft() for _ in range(min(n, len(self._items)))]
