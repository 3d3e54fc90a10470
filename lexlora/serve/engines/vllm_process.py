"""The vLLM server's life: the child process (start, output, stop) and the supervisor that watches
it and restarts it when it dies.

A child's output is forwarded to stderr prefixed ``[vllm]`` (its last lines are kept for error
messages). It runs in its own process group (the engine core and workers go with it), gets SIGTERM
if the gateway dies (PR_SET_PDEATHSIG), and on stop SIGTERM, then its group SIGKILL after
``STOP_GRACE_S``.

The :class:`Supervisor` polls the child (``exit_code``) and its ``/health``: when the child exits,
or stops answering ``/health`` ``probe_failures`` times in a row (it is then killed), the state goes
to ``restarting``, the server is started again (``start``: a new child, its adapters reloaded) and
the state returns to ``ok``; more than ``max_restarts`` deaths within ``window_s`` leave it
``failed``. A server attached by URL cannot be restarted: a failed ``/health`` makes it
``unreachable`` until it answers again (``recover`` then reloads its adapters).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from lexlora.errors import LexloraError

log = logging.getLogger("lexlora.serve")

VENV_NAME = ".venv-vllm"
STOP_GRACE_S = 15.0

OK, STARTING, RESTARTING, FAILED, UNREACHABLE, CLOSED = (
    "ok",
    "starting",
    "restarting",
    "failed",
    "unreachable",
    "closed",
)


def find_vllm_python(configured: Path | None) -> Path:
    """The Python of vLLM's venv: ``configured`` (a python or a venv folder), else ``.venv-vllm``
    in the current folder or in the lexlora checkout."""
    if configured is not None:
        path = Path(configured).expanduser()
        if path.is_dir():
            path = path / "bin" / "python"
        if not path.exists():
            raise LexloraError(f"serve config vllm_python: {path} does not exist")
        return path
    checkout = Path(__file__).resolve().parents[3]
    candidates = [Path.cwd() / VENV_NAME, checkout / VENV_NAME]
    for venv in candidates:
        if (venv / "bin" / "python").exists():
            return venv / "bin" / "python"
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise LexloraError(
        f"engine vllm: no vLLM venv found (looked in {looked}): run `make setup-vllm`, "
        "or set vllm_python (a venv with vLLM) or vllm_url (a running vLLM server)"
    )


def model_positions(base_path: str) -> int | None:
    """``max_position_embeddings`` of a local model folder (None if unknown)."""
    config = Path(base_path) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    text = data.get("text_config") or {}
    value = data.get("max_position_embeddings") or text.get("max_position_embeddings")
    return int(value) if value else None


def describe_exit(code: int | None) -> str:
    """``exit code 1``, or ``exit code -9, SIGKILL`` for a process killed by a signal."""
    if code is None:
        return "exit code unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"exit code {code}, {signal.Signals(-code).name}"
    return f"exit code {code}"


async def wait_healthy(
    probe: Callable[[], Awaitable[bool]],
    exit_code: Callable[[], int | None],
    output: Callable[[], str],
    timeout: float,
    what: str,
) -> None:
    """Return once ``probe()`` says healthy; a LexloraError when the process exits first (with
    its last ``output()``) or after ``timeout`` seconds (``vllm_startup_timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        if (code := exit_code()) is not None:
            await asyncio.sleep(0.2)  # let the reader catch the last lines
            exited = f"{what} exited ({describe_exit(code)}) while starting"
            raise LexloraError(f"{exited}; its last output:\n{output()}")
        if await probe():
            return
        if time.monotonic() > deadline:
            raise LexloraError(f"{what} was not healthy after {timeout:g} s (vllm_startup_timeout)")
        await asyncio.sleep(0.5)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM the child if the gateway dies without closing it (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _before_exec(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """What the child runs before exec: die with the gateway (Linux) and keep to ``cpus``."""
    if not sys.platform.startswith("linux"):
        return None

    def setup() -> None:  # pragma: no cover - runs in the child before exec
        _die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


class ChildServer:
    """One vLLM server process (``command``, ``env``); its output goes to stderr and ``tail``,
    and ``seen`` holds the ``markers`` that appeared in it."""

    def __init__(
        self,
        command: Sequence[str],
        env: dict[str, str],
        tail: collections.deque,
        markers: Sequence[str] = (),
        *,
        label: str = "vLLM",
        prefix: str = "vllm",
        cpus: frozenset[int] | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.command = list(command)
        self._tail = tail
        self._markers = tuple(markers)
        self._prefix = prefix
        self._on_line = on_line
        self.seen: set[str] = set()
        where = f" on cores {','.join(map(str, sorted(cpus)))}" if cpus else ""
        sys.stderr.write(f"[lexlora] starting {label}{where}: {' '.join(self.command)}\n")
        self.proc = subprocess.Popen(
            self.command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the engine core goes with it
            preexec_fn=_before_exec(cpus),
        )
        self._reader = threading.Thread(target=self._forward_output, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exit_code(self) -> int | None:
        """The exit code once the process has ended (negative: killed by that signal)."""
        return self.proc.poll()

    def _forward_output(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            self.seen.update(m for m in self._markers if m in line)
            if self._on_line is not None:
                with contextlib.suppress(Exception):
                    self._on_line(line)
            with contextlib.suppress(Exception):
                sys.stderr.write(f"[{self._prefix}] {line}\n")
                sys.stderr.flush()

    def kill(self) -> None:
        """SIGKILL the whole process group now and reap the process."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._reader.join(2)

    def stop(self) -> None:
        """SIGTERM, then the process group SIGKILL after ``STOP_GRACE_S`` (blocking)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("vLLM did not stop in %g s: killing it", STOP_GRACE_S)
        self.kill()  # whatever is left of its process group


class Server(Protocol):
    """What the supervisor drives: a vLLM server, started by the engine or attached by URL."""

    attached: bool

    def exit_code(self) -> int | None:
        """The child's exit code once it has ended (None while it runs, or attached)."""

    async def probe(self) -> bool:
        """Whether ``/health`` answers 200 now."""

    async def kill(self) -> None:
        """Kill the child now (nothing when attached)."""

    async def start(self) -> None:
        """Start a fresh child and reload the adapters; raises if it does not come up."""

    async def recover(self) -> None:
        """An attached server answers again: read it and reload the adapters."""


class Supervisor:
    """The vLLM server's state (``ok``, ``restarting``, ``failed``, ``unreachable``), kept by
    :meth:`run`; ``on_down(message)`` is called whenever requests must stop (in flight too)."""

    def __init__(
        self,
        server: Server,
        on_down: Callable[[str], None],
        *,
        poll_s: float = 0.5,
        probe_s: float = 5.0,
        probe_failures: int = 3,
        max_restarts: int = 5,
        window_s: float = 600.0,
        backoff_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self._on_down = on_down
        self._poll_s, self._probe_s, self._probe_failures = poll_s, probe_s, probe_failures
        self._max_restarts, self._window_s, self._backoff_s = max_restarts, window_s, backoff_s
        self._clock = clock
        self.state = OK
        self.restarts = 0
        self.last_exit: int | None = None
        self.detail = ""  # why requests are refused (the EngineUnavailable message)
        self._deaths: collections.deque[float] = collections.deque()
        self._failures = 0
        self._next_probe = 0.0
        self._poke = asyncio.Event()

    def poke(self) -> None:
        """Check the server now (a request just failed to reach it)."""
        self._next_probe = 0.0
        self._poke.set()

    def health(self) -> dict:
        body: dict = {
            "state": self.state,
            "restarting": self.state == RESTARTING,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit,
        }
        if self.state != OK:
            body["detail"] = self.detail
        return body

    async def run(self) -> None:
        """Watch until cancelled (or ``failed``)."""
        while self.state != FAILED:
            await self._wait()
            try:
                if self.server.attached:
                    await self._check_attached()
                else:
                    await self._check_child()
            except asyncio.CancelledError:
                raise
            except Exception:  # a watcher that stops would leave a dead server dead
                log.exception("the vLLM supervisor failed a check; it goes on watching")

    async def _wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._poke.wait(), self._poll_s)
        self._poke.clear()

    async def _healthy(self) -> bool | None:
        """A probe when one is due (None when not): True, or False after a failed one."""
        if self._clock() < self._next_probe:
            return None
        ok = await self.server.probe()
        self._failures = 0 if ok else self._failures + 1
        self._next_probe = self._clock() + (self._probe_s if ok else self._poll_s)
        return ok

    async def _check_child(self) -> None:
        code = self.server.exit_code()
        if code is None:
            if await self._healthy() is not False or self._failures < self._probe_failures:
                return
            log.error("vLLM failed %d health checks in a row: killing it", self._failures)
            await self.server.kill()
            code = self.server.exit_code()
        await self._restart(code)

    async def _restart(self, code: int | None) -> None:
        """The child died with ``code``: start it again until it runs (or too many deaths)."""
        while True:
            self.last_exit = code
            now = self._clock()
            self._deaths.append(now)
            while self._deaths and now - self._deaths[0] > self._window_s:
                self._deaths.popleft()
            if len(self._deaths) > self._max_restarts:
                self._down(
                    FAILED,
                    f"the vLLM engine died {len(self._deaths)} times in {self._window_s:g} s "
                    f"({describe_exit(code)}) and is not restarted again; restart the gateway",
                )
                return
            self._down(
                RESTARTING,
                f"the vLLM engine died ({describe_exit(code)}) and is restarting; retry shortly",
            )
            self.restarts += 1
            log.error("vLLM died (%s): restart %d", describe_exit(code), self.restarts)
            try:
                await self.server.start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("vLLM did not restart: %s", exc)
                await self.server.kill()
                code = self.server.exit_code()
                await asyncio.sleep(self._backoff_s)
                continue
            self._up()
            return

    async def _check_attached(self) -> None:
        healthy = await self._healthy()
        if healthy is None:
            return
        if self.state == OK and not healthy and self._failures >= self._probe_failures:
            self._down(UNREACHABLE, "the vLLM server is unreachable; retry shortly")
        elif self.state == UNREACHABLE and healthy:
            try:
                await self.server.recover()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("the vLLM server answers again but could not be set up: %s", exc)
                self._next_probe = self._clock() + self._poll_s
                return
            self._up()

    def _down(self, state: str, detail: str) -> None:
        self.state, self.detail = state, detail
        self._failures = 0
        self._on_down(detail)

    def _up(self) -> None:
        self.state, self.detail = OK, ""
        self._failures = 0
        self._next_probe = self._clock() + self._probe_s
        log.warning("vLLM is serving again (restarts: %d)", self.restarts)
