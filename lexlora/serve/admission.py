"""The bounded queue: at most ``max_queue`` generation requests admitted (running or waiting).

One more gets a 429 at once rather than waiting without bound. Used from the event loop only.
"""

from __future__ import annotations

from lexlora.serve.errors import queue_full


class Ticket:
    """One admitted request; ``release`` (idempotent) frees its place."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission.depth -= 1
            self._admission = None


class Admission:
    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.depth = 0

    def admit(self) -> Ticket:
        """A ticket, or the 429 error when the queue is full."""
        if self.depth >= self.max_queue:
            raise queue_full()
        self.depth += 1
        return Ticket(self)
