"""Stop strings over streamed text, the same for every engine.

Text is re-decoded from all generated ids at every step (exact, cheap at these lengths); what could
still turn into a stop string, or is an incomplete UTF-8 character, is held back until it is known.
"""

from __future__ import annotations

from collections.abc import Callable


class StopText:
    """Incremental text with stop strings: ``advance`` returns (new text, stop string found)."""

    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...]) -> None:
        self._decode = decode
        self._stops = stops
        self._longest = max((len(s) for s in stops), default=0)
        self.emitted = 0  # characters already let out

    def advance(self, ids: list[int]) -> tuple[str, bool]:
        text = self._decode(ids)
        cuts = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if cuts:
            return self._let_out(text[: min(cuts)], len(text)), True
        safe = len(text.rstrip("\ufffd"))
        for k in range(min(self._longest - 1, safe), 0, -1):
            tail = text[safe - k : safe]
            if any(s.startswith(tail) for s in self._stops):
                safe -= k
                break
        return self._let_out(text, safe), False

    def flush(self, ids: list[int]) -> str:
        """Everything not yet let out (the row ended without a stop string)."""
        text = self._decode(ids)
        return self._let_out(text, len(text))

    def _let_out(self, text: str, upto: int) -> str:
        upto = min(upto, len(text))
        if upto <= self.emitted:
            return ""
        delta = text[self.emitted : upto]
        self.emitted = upto
        return delta
