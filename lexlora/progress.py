"""How every stage reports progress: lines through a :data:`Log`, long loops through a :class:`Bar`.

A stage takes ``log: Log = print`` for its lines (the CLI passes its rich console's ``print``)
and opens a :class:`Bar` for work it can count (documents, teacher chunks, training steps). In a
terminal the bar is rich's live progress bar; elsewhere (CI, a pipe, a log file) it writes a plain
line at most every ``every_s`` seconds and one when it closes, so logs show progress without
carriage-return noise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

Log = Callable[[str], object]  # one line of a stage's output


class Bar:
    """Counted progress: ``update(completed=, total=, advance=, **fields)``; ``fields`` fill
    ``template`` (e.g. ``"loss {loss:.4f}"``). Thread-safe; close it (or use ``with``)."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        console: Console | None = None,
        template: str = "",
        transient: bool = True,
        every_s: float = 30.0,
        **fields: Any,
    ) -> None:
        self.label = label
        self.total = total
        self.completed = 0
        self.fields = dict(fields)
        self._template = template
        self._console = console or Console(stderr=True)
        self._every_s = every_s
        self._last_line = time.monotonic()
        self._lock = threading.Lock()
        self._live: Progress | None = None
        if self._console.is_terminal:
            columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn()]
            if template:
                columns.append(TextColumn(_rich_template(template)))
            columns.append(TimeRemainingColumn())
            self._live = Progress(*columns, console=self._console, transient=transient)
            self._live.start()
            self._task = self._live.add_task(label, total=total, **self.fields)

    def update(
        self, completed: int | None = None, total: int | None = None, advance: int = 0, **fields
    ) -> None:
        with self._lock:
            if total is not None:
                self.total = total
            self.completed = (self.completed if completed is None else completed) + advance
            self.fields.update(fields)
            if self._live is not None:
                self._live.update(
                    self._task, completed=self.completed, total=self.total, **self.fields
                )
            elif time.monotonic() - self._last_line >= self._every_s:
                self._plain_line()

    def print(self, text: str) -> None:
        """A line above the bar (or a plain line)."""
        if self._live is not None:
            self._live.console.print(text)
        else:
            print(text, flush=True)

    def _plain_line(self) -> None:
        self._last_line = time.monotonic()
        count = f"{self.completed}/{self.total}" if self.total else str(self.completed)
        extra = self._template.format(**self.fields) if self._template else ""
        print(f"{self.label}: {count} {extra}".rstrip(), flush=True)

    def close(self) -> None:
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None
            elif self.completed:
                self._plain_line()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rich_template(template: str) -> str:
    """``"loss {loss:.4f}"`` → ``"loss {task.fields[loss]:.4f}"`` (rich's field syntax)."""
    out, i = [], 0
    while i < len(template):
        if template[i] == "{":
            end = template.index("}", i)
            name, _, spec = template[i + 1 : end].partition(":")
            out.append(f"{{task.fields[{name}]{':' + spec if spec else ''}}}")
            i = end + 1
        else:
            out.append(template[i])
            i += 1
    return "".join(out)
