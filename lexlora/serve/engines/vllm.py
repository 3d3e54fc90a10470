"""The vLLM engine: a real vLLM OpenAI server, run as a child process or attached by URL.

Child process (``engine: vllm``, no ``vllm_url``): ``python -m vllm.entrypoints.openai.api_server
--model BASE --enable-lora --max-lora-rank R --max-loras N --max-model-len L --dtype float32
--host 127.0.0.1 --port P --generation-config vllm`` with the Python of vLLM's own venv
(``make setup-vllm`` builds ``.venv-vllm``; ``vllm_python`` points elsewhere),
``VLLM_CPU_KVCACHE_SPACE`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``
(:mod:`~lexlora.serve.engines.vllm_process` runs it). ``vllm_args`` are appended last, so they
override (e.g. ``[--dtype, bfloat16]`` on a GPU). The child listens on 127.0.0.1 and requires a
random API key (``VLLM_API_KEY``, in its environment, not on its command line), so a tenant cannot
reach it around the gateway. When it dies (or stops answering ``/health``), requests in flight and
new ones fail at once with :class:`EngineUnavailable` (the gateway's 503) while it is started again
on a new port with every adapter reloaded under its name; ``health()`` says where it stands.

Attached (``vllm_url``): the server must run with ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and read the adapter store's paths; the gateway sends the
``VLLM_API_KEY`` of its own environment, if set. While its ``/health`` fails the engine is
``unreachable``; when it answers again the adapters are loaded again.

Adapters are loaded with ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` and unloaded with
``/v1/unload_lora_adapter`` under the gateway's tenant-unique internal names. Scaled and composed
adapters are written as one PEFT folder (:func:`~lexlora.artifacts.adapter.compose_lora`, exact:
the cat construction) in a temporary folder and loaded like any other; their rank must fit
``max_lora_rank``. Requests go to ``/v1/completions`` (:mod:`~lexlora.serve.engines.vllm_client`:
bodies, log-probs, and the gate that keeps prompt-scoring requests out of the batches that crash
vllm-cpu 0.32.0). vLLM's 4xx answers become :class:`EngineError` (the gateway's 400).

On vllm-cpu 0.32.0 the lexlora plugin (:mod:`lexlora.serve.vllm_plugin`, installed by
``make setup-vllm``) fixes base-model rows batched with LoRA rows.

Several servers behind vLLM's router (``replicas`` or ``vllm_urls``):
:mod:`lexlora.serve.engines.vllm_replicas`, a subclass that changes how servers start, how
adapters reach them and which headers a request carries.
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
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from lexlora.artifacts.adapter import (
    CONFIG_FILE,
    adapter_method,
    check_engine,
    compose_lora,
    lora_rank,
    read_config,
)
from lexlora.errors import LexloraError
from lexlora.serve.engines.base import (
    AdapterPart,
    Engine,
    EngineError,
    EngineStats,
    EngineUnavailable,
    Event,
    GenerationRequest,
)
from lexlora.serve.engines.vllm_client import (
    BatchGate,
    Flights,
    RowEvents,
    compatible,
    completion_body,
    kind,
    message,
    score_events,
)
from lexlora.serve.engines.vllm_process import (
    CLOSED,
    OK,
    STARTING,
    ChildServer,
    Supervisor,
    describe_exit,
    find_vllm_python,
    model_positions,
    wait_healthy,
)
from lexlora.serve.launch import free_port

__all__ = ["VllmEngine", "find_vllm_python", "model_positions"]

log = logging.getLogger("lexlora.serve")

DEFAULT_MODEL_LEN = 2048  # when neither max_model_len nor max_context is set (and the model allows)
PLUGIN_ACTIVE = "lexlora plugin active"  # the plugin's log line in vLLM's workers
ENGINE_DEAD = "EngineCore encountered an issue"  # vLLM's answer once its engine core died
PROBE_TIMEOUT_S = 10.0


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
        supervision: dict[str, float] | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        self.base_path = base_path
        self.tokenizer = AutoTokenizer.from_pretrained(base_path)  # the gateway's too
        self._attached_url = url.rstrip("/") if url else None
        self._url = self._attached_url
        self._python = self._find_python(python, url)
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
        self._supervision = dict(supervision or {})  # Supervisor keyword arguments (tests)
        self._api_key = os.environ.get("VLLM_API_KEY") if url else secrets.token_urlsafe(24)
        self._tail: collections.deque[str] = collections.deque(maxlen=400)
        self._child: ChildServer | None = None
        self._client: httpx.AsyncClient | None = None
        self._tmp: Path | None = None
        self._base_name: str | None = None
        self._adapters: dict[str, Path] = {}  # internal name -> folder, reloaded after a restart
        self._gate = BatchGate(self._compatible)
        self._flights = Flights()
        self._base_scores_batch = False
        self._supervisor: Supervisor | None = None
        self._watches: list[asyncio.Task] = []  # the supervisors' tasks
        self._state = STARTING
        self._running = 0
        self._peak = 0
        self._generated = 0

    # -- life cycle -----------------------------------------------------------------------------

    def _find_python(self, python: Path | None, url: str | None) -> Path | None:
        """vLLM's Python for the child (None when attached by URL)."""
        return None if url else find_vllm_python(python)

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
        """The child vLLM server's ``Popen`` (None when attached by URL)."""
        return self._child.proc if self._child is not None else None

    @property
    def batches_base_scores(self) -> bool:
        """Whether base-model prompt scores share vLLM's batch with other base rows (the lexlora
        plugin runs in the child); otherwise every prompt-scoring request runs alone."""
        return self._base_scores_batch

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
            await self._launch()
        except BaseException:
            await self.close()
            raise
        self._state = OK
        self._watch_servers()

    def _watch_servers(self) -> None:
        """Start watching the server (restarting a dead child, noticing one that is back)."""
        self._supervisor = Supervisor(_Handle(self), self._on_down, **self._supervision)
        self._watches = [asyncio.create_task(self._supervisor.run())]

    async def _launch(self) -> None:
        """Start the child (or connect to the attached server) and wait until it serves."""
        if self._attached_url is None:
            port = free_port()
            self._url = f"http://127.0.0.1:{port}"
            self._child = ChildServer(
                self.command(port), self.environment(), self._tail, markers=(PLUGIN_ACTIVE,)
            )
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(600.0, connect=10.0)
        )
        await self._wait_healthy()
        await self._read_models()
        # base-only prompt-scoring batches are safe only with the plugin's masked LoRA ops
        self._base_scores_batch = self._child is not None and PLUGIN_ACTIVE in self._child.seen

    def output_tail(self, lines: int = 400) -> str:
        """The child's last ``lines`` lines of output."""
        return "\n".join(list(self._tail)[-lines:])

    async def _wait_healthy(self) -> None:
        child = self._child
        where = "started" if child is not None else f"at {self._url}"
        await wait_healthy(
            self._probe,
            lambda: child.exit_code() if child is not None else None,
            lambda: self.output_tail(60),
            self._startup_timeout,
            f"the vLLM server {where}",
        )

    async def _probe(self) -> bool:
        try:
            response = await self._http().get("/health", timeout=PROBE_TIMEOUT_S)
        except (httpx.HTTPError, EngineUnavailable):
            return False
        return response.status_code == 200

    async def _read_models(self) -> None:
        response = await self._http().get("/v1/models")
        response.raise_for_status()
        cards = response.json().get("data") or []
        bases = [c for c in cards if not c.get("parent")]
        if not bases:
            raise LexloraError(f"the vLLM server at {self._url} lists no base model")
        self._base_name = bases[0]["id"]
        if self._child is None and bases[0].get("max_model_len"):
            self._model_len = int(bases[0]["max_model_len"])

    async def _relaunch(self) -> None:
        """A fresh child in place of the dead one, with every adapter loaded again."""
        await self._drop_client()
        if self._child is not None:
            await asyncio.to_thread(self._child.kill)
        await self._launch()
        await self._reload_adapters()

    async def _recover(self) -> None:
        """The attached server answers again: read it and load the adapters again."""
        await self._read_models()
        await self._reload_adapters()

    async def _reload_adapters(self) -> None:
        for name, path in list(self._adapters.items()):
            try:
                await self._load_into_vllm(name, path)
            except EngineError as exc:
                log.error("adapter %s could not be loaded again after a restart: %s", name, exc)
                self._adapters.pop(name, None)
                continue
            if name not in self._adapters:  # unloaded while it was being loaded again
                await self._post("/v1/unload_lora_adapter", {"lora_name": name})

    def _on_down(self, detail: str) -> None:
        self._flights.fail_all(lambda: EngineUnavailable(detail))

    async def _drop_client(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def close(self) -> None:
        self._state = CLOSED
        for task in self._watches:
            task.cancel()
        for task in self._watches:
            with contextlib.suppress(BaseException):
                await task
        self._watches = []
        self._flights.fail_all(lambda: EngineUnavailable("the vLLM engine is shutting down"))
        await self._drop_client()
        await self._stop_servers()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._adapters.clear()

    async def _stop_servers(self) -> None:
        """Stop what the engine started (the child; nothing when attached)."""
        if self._child is not None:
            await asyncio.to_thread(self._child.stop)

    def health(self) -> dict[str, Any]:
        mode = "attached" if self._attached_url else "child"
        if self._state != OK or self._supervisor is None:
            return {"state": self._state, "mode": mode}
        return {**self._supervisor.health(), "mode": mode}

    def _ensure_up(self) -> None:
        """EngineUnavailable unless the server takes requests now."""
        if self._state != OK or self._supervisor is None:
            raise EngineUnavailable(f"the vLLM engine is {self._state}; retry shortly")
        if self._supervisor.state != OK:
            raise EngineUnavailable(self._supervisor.detail)

    def _unreachable(self, why: str) -> EngineUnavailable:
        """What a request that the server could not serve gets (the supervisor looks now)."""
        if self._supervisor is not None:
            self._supervisor.poke()
        if self._child is not None and (code := self._child.exit_code()) is not None:
            why = f"died ({describe_exit(code)})"
        restart = "is restarting" if self._child is not None else "may be restarting"
        return EngineUnavailable(f"the vLLM engine {why} and {restart}; retry shortly")

    # -- adapters -------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineUnavailable("the vLLM engine is not running; retry shortly")
        return self._client

    async def load_adapter(self, name: str, path: Path) -> None:
        if name in self._adapters:
            return
        self._ensure_up()
        path = Path(path).resolve()
        self._check_method(name, path)
        self._check_rank(path)
        await self._load_into_vllm(name, path)
        self._adapters[name] = path

    async def _load_into_vllm(self, name: str, path: Path) -> None:
        body = {"lora_name": name, "lora_path": str(path)}
        response = await self._post("/v1/load_lora_adapter", body)
        if response.status_code == 400 and "already been loaded" in message(response):
            await self._post("/v1/unload_lora_adapter", {"lora_name": name})  # a stale copy
            response = await self._post("/v1/load_lora_adapter", body)
        if response.status_code == 404 and "lora" not in message(response).lower():
            raise EngineError(
                "the vLLM server does not allow runtime LoRA loading: start it with "
                "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
            )
        if response.status_code != 200:
            raise EngineError(f"vLLM could not load the adapter: {message(response)}")

    def _check_method(self, name: str, path: Path) -> None:
        """An :class:`EngineError` for an adapter whose method vLLM cannot serve (LoRA only)."""
        try:
            method = adapter_method(path)
        except LexloraError:
            return  # vLLM says what is wrong with the folder
        try:
            check_engine(method, "vllm", name)
        except LexloraError as exc:
            raise EngineError(str(exc)) from None

    def _check_rank(self, path: Path) -> None:
        try:
            rank = lora_rank(read_config(path / CONFIG_FILE))
        except (OSError, LexloraError):
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
        self._ensure_up()
        folder = self._tmp / name
        weighted = [(Path(p.path), p.weight) for p in parts]
        try:
            await asyncio.to_thread(compose_lora, weighted, folder, self.max_lora_rank)
        except LexloraError as exc:
            raise EngineError(str(exc)) from None
        try:
            await self.load_adapter(name, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    async def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            return
        await self._unload_from_vllm(name)
        self._adapters.pop(name, None)
        if self._tmp is not None:
            shutil.rmtree(self._tmp / name, ignore_errors=True)

    async def _unload_from_vllm(self, name: str) -> None:
        if self._supervisor is not None and self._supervisor.state == OK:
            response = await self._post("/v1/unload_lora_adapter", {"lora_name": name})
            if response.status_code not in (200, 404):  # 404: vLLM does not know it (any more)
                raise EngineError(f"vLLM could not unload the adapter: {message(response)}")
        # else the server is down: it is simply not loaded again

    async def _post(self, path: str, body: dict) -> httpx.Response:
        try:
            return await self._http().post(path, json=body, timeout=120.0)
        except httpx.HTTPError as exc:
            raise self._unreachable(f"did not answer ({exc!r})") from None

    # -- generation -----------------------------------------------------------------------------

    def completion_body(self, request: GenerationRequest) -> dict[str, Any]:
        """The vLLM /v1/completions body for ``request``."""
        return completion_body(request, request.adapter or self._base_name or self.base_path)

    def route_headers(self, request: GenerationRequest) -> dict[str, str]:
        """Extra HTTP headers of ``request``'s call to vLLM (none for one server)."""
        return {}

    def _compatible(self, a: str, b: str) -> bool:
        return compatible(a, b, base_scores_batch=self._base_scores_batch)

    def _validate(self, request: GenerationRequest) -> None:
        if not request.prompt_ids:
            raise EngineError("the prompt is empty")
        if len(request.prompt_ids) >= self.max_context:
            raise EngineError(f"the prompt is longer than the context ({self.max_context})")
        if request.adapter is not None and request.adapter not in self._adapters:
            raise EngineError(f"adapter {request.adapter!r} is not loaded")
        if request.sampling.max_tokens == 0 and request.prompt_logprobs is None:
            raise EngineError("max_tokens 0 only scores a prompt (prompt_logprobs)")
        self._ensure_up()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self._validate(request)
        async for event in self._flights.relay(self._run(request)):
            yield event

    async def _run(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """The request's events, once the gate lets it share vLLM's batch (its own task)."""
        async with self._gate.admit(kind(request)):
            self._ensure_up()
            self._running += 1
            self._peak = max(self._peak, self._running)
            try:
                if request.prompt_logprobs is None:
                    async for event in self._generate(request):
                        yield event
                else:
                    for event in score_events(request, await self._score(request), self._decode):
                        yield event
            except httpx.HTTPError as exc:
                raise self._unreachable(f"did not answer ({exc!r})") from None
            finally:
                self._running -= 1

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        row = RowEvents(request, self._decode)
        body = self.completion_body(request)
        headers = self.route_headers(request)
        http = self._http()
        async with http.stream("POST", "/v1/completions", json=body, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                raise self._error(response.status_code, message(response), request)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    error = chunk["error"]
                    code = int(error.get("code") or 500) if isinstance(error, dict) else 500
                    text = error.get("message", str(error)) if isinstance(error, dict) else error
                    raise self._error(code, str(text), request)
                for choice in chunk.get("choices") or []:
                    before = len(row.generated)
                    for event in row.feed(choice):
                        yield event
                    self._generated += len(row.generated) - before
                    if row.done:
                        return
            else:  # the stream ended without [DONE]: the server went away mid-answer
                raise self._unreachable("ended an answer early")
        for event in row.finish():
            yield event

    async def _score(self, request: GenerationRequest) -> dict[str, Any]:
        """vLLM's unstreamed answer for a row that scores its prompt."""
        body, headers = self.completion_body(request), self.route_headers(request)
        response = await self._http().post("/v1/completions", json=body, headers=headers)
        if response.status_code != 200:
            raise self._error(response.status_code, message(response), request)
        answer = response.json()
        if request.sampling.max_tokens > 0:
            for choice in answer.get("choices") or []:
                self._generated += len(choice.get("token_ids") or [])
        return answer

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _error(self, status: int, text: str, request: GenerationRequest) -> Exception:
        if status == 404 and request.adapter is not None:
            return EngineError(f"adapter {request.adapter!r} is not loaded")
        if 400 <= status < 500:
            return EngineError(text)
        if ENGINE_DEAD in text:  # its engine core died: the supervisor restarts the server
            return self._unreachable(f"failed ({text})")
        return RuntimeError(f"vLLM answered {status}: {text}")

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=self._gate.waiting,
            running=self._running,
            generated_tokens=self._generated,
            peak_batch=self._peak,  # most requests in flight at once (vLLM batches them)
            resident_adapters=sorted(self._adapters),
        )


class _Handle:
    """The engine's server as the :class:`Supervisor` drives it."""

    def __init__(self, engine: VllmEngine) -> None:
        self._engine = engine
        self.attached = engine._attached_url is not None

    def exit_code(self) -> int | None:
        child = self._engine._child
        return child.exit_code() if child is not None else None

    async def probe(self) -> bool:
        return await self._engine._probe()

    async def kill(self) -> None:
        if self._engine._child is not None:
            await asyncio.to_thread(self._engine._child.kill)

    async def start(self) -> None:
        await self._engine._relaunch()

    async def recover(self) -> None:
        await self._engine._recover()
