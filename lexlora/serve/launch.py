"""Run ``lexlora serve`` as a separate process on 127.0.0.1: what the tests and the benchmarks
start, a real gateway (``serve.yaml`` written from a dict, output in ``server.log``)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ServeProcess", "free_port", "serve_process"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ServeProcess:
    """A running ``lexlora serve``: its base URL, its process and the file its output goes to."""

    url: str
    process: subprocess.Popen
    log: Path


@contextmanager
def serve_process(
    config: dict[str, Any],
    folder: Path,
    *,
    port: int | None = None,
    timeout: float = 180,
    stop_timeout: float = 20,
) -> Iterator[ServeProcess]:
    """Start ``lexlora serve`` on 127.0.0.1 and stop it on exit.

    Args:
        config: the serve.yaml contents, written to ``folder/serve.yaml``.
        folder: an existing folder for ``serve.yaml`` and ``server.log`` (stdout and stderr).
        port: the port to listen on (default: a free one).
        timeout: seconds to wait for ``/health`` to answer 200.
        stop_timeout: seconds between SIGTERM and SIGKILL when stopping.

    Yields:
        The :class:`ServeProcess`, once ``/health`` answers 200.

    Raises:
        RuntimeError: the server exited, or was not up within ``timeout`` (the message holds
            its log).
    """
    import httpx
    import yaml

    (folder / "serve.yaml").write_text(yaml.safe_dump(config))
    port, log = port or free_port(), folder / "server.log"
    cmd = [sys.executable, "-m", "lexlora.cli", "serve", "--config", str(folder / "serve.yaml")]
    with log.open("w") as out:
        proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"lexlora serve in {folder} exited:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"lexlora serve in {folder} not up after {timeout:g} s:\n{log.read_text()}"
                )
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield ServeProcess(url, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
