"""The embedded engine: transformers + PEFT in this process (fp32 on CPU).

One base model; every resident adapter lives in one ``PeftModel`` under its internal name. A worker
thread owns the model: it decodes a :class:`DecodeBatch` (rows for different adapters in one forward
pass, PEFT mixed-adapter batches via ``adapter_names``), takes new rows from the :class:`Batcher`
between steps, and runs adapter loads/unloads between steps too, so they never race a forward.

Exact weighted adapters (``load_weighted_adapter``, a strength or a composition): the weighted sum
is written as one LoRA folder by :func:`lexlora.artifacts.adapter.compose_lora` (the same maths the
vLLM engine loads) and loaded like any other adapter.

Adapter methods (:mod:`lexlora.adapter_methods`, read from the folder): LoRA adapters live in the
``PeftModel``; prompt-tuned and new-token adapters bring embedding rows that live beside the base
vocabulary (:mod:`lexlora.serve.engines.extensions`): a ``lora+new_tokens`` adapter is both (its
LoRA part loaded from a filtered copy under the same name). Ids in requests and events are in the
adapter's space (its tokenizer's); a prompt-tuned row's virtual tokens never leave the engine
(``prompt_tokens`` counts the user's tokens; they do count against the context). Only LoRA
adapters can be scaled or composed.

Rows are taken fairly across their owners (tenants): a free place in the batch goes to the owner
with the fewest running rows (:class:`Batcher`), so one tenant's queued rows never starve another's.

``max_adapters_per_batch`` (default: no limit) caps how many different adapters (the base counts as
one) share a running batch; rows for others wait. 1 is the naive one-adapter-at-a-time server
that ``scripts/bench_serve.py`` compares mixed batching with.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import queue
import tempfile
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from lexlora.adapter_methods import lora_part
from lexlora.artifacts.adapter import adapter_method, compose_lora, has_lora
from lexlora.errors import LexloraError
from lexlora.serve.batcher import Batcher
from lexlora.serve.engines.base import (
    AdapterPart,
    Engine,
    EngineError,
    EngineStats,
    Finished,
    GenerationRequest,
)
from lexlora.serve.engines.base import Event as EngineEvent
from lexlora.serve.engines.decode import DecodeBatch
from lexlora.serve.engines.extensions import Extensions
from lexlora.serve.engines.rows import PEFT_BASE, Event, Row

log = logging.getLogger("lexlora.serve")


def _owner(row: Row) -> str | None:
    return row.request.owner


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a completion: the config's, the generation config's, the tokenizer's."""
    ids: set[int] = set()
    for source in (model.config, getattr(model, "generation_config", None)):
        value = getattr(source, "eos_token_id", None)
        ids.update([value] if isinstance(value, int) else value or [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class EmbeddedEngine(Engine):
    name = "embedded"
    supports_scale = True
    supports_composition = True

    def __init__(
        self,
        base_path: str,
        *,
        max_batch_size: int = 8,
        batch_wait_ms: float = 5.0,
        max_context: int | None = None,
        threads: int | None = None,
        max_adapters_per_batch: int | None = None,
    ) -> None:
        if threads:  # process-wide; on a busy 2-core host 1 thread beats 2 for small matrices
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(base_path)
        self._model: Any = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        self._model.eval()
        self._peft: PeftModel | None = None
        self._adapters: set[str] = set()  # worker thread only
        self._lora: set[str] = set()  # the adapters with LoRA layers in ``_peft``
        self._extensions = Extensions(self._model, self.tokenizer)
        self._resident: tuple[str, ...] = ()  # a snapshot for other threads
        limit = getattr(self._model.config, "max_position_embeddings", None) or 2048
        self._max_context = min(max_context or limit, limit)
        self._max_batch_size = max_batch_size
        self._max_adapters = max_adapters_per_batch
        self._eos_ids = eos_token_ids(self._model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else min(self._eos_ids, default=0)
        self._batcher: Batcher[Row] = Batcher(batch_wait_ms / 1000, owner=_owner)
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future]] = (
            queue.SimpleQueue()
        )
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = 0
        self._generated = 0
        self._peak = 0

    @property
    def max_context(self) -> int:
        return self._max_context

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="lexlora-engine", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        self._stopping.set()
        self._batcher.wake()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
            self._thread = None

    # -- adapters (run on the worker thread, between decode steps) ------------------------------

    async def load_adapter(self, name: str, path: Path) -> None:
        await self._call(lambda: self._load(name, path))

    async def load_weighted_adapter(self, name: str, parts: Sequence[AdapterPart]) -> None:
        if not parts:
            raise EngineError("a weighted adapter needs at least one part")
        await self._call(lambda: self._load_weighted(name, list(parts)))

    async def unload_adapter(self, name: str) -> None:
        await self._call(lambda: self._unload(name))

    def _load(self, name: str, path: Path) -> None:
        if name in self._adapters:
            return
        method = adapter_method(path)
        if method != "lora":  # its rows beside the vocabulary; then its LoRA part, if any
            self._extensions.add(name, path, method)
            if has_lora(method):
                with lora_part(path) as lora_folder:
                    self._load_lora(name, lora_folder)
            self._adapters.add(name)
            return
        self._load_lora(name, path)

    def _load_lora(self, name: str, path: Path) -> None:
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(
                self._model, str(path), adapter_name=name, is_trainable=False
            )
        else:
            self._peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
        self._peft.eval()
        self._adapters.add(name)
        self._lora.add(name)

    def _load_weighted(self, name: str, parts: list[AdapterPart]) -> None:
        if name in self._adapters:
            return
        for part in parts:  # scaling and composition act on LoRA weights only
            method = adapter_method(part.path)
            if method != "lora":
                raise EngineError(
                    f"adapter {Path(part.path).name!r} is a {method} adapter: only LoRA adapters "
                    "can be scaled or composed"
                )
        with tempfile.TemporaryDirectory(prefix="lexlora-weighted-") as tmp:
            try:
                folder = compose_lora([(Path(p.path), p.weight) for p in parts], Path(tmp) / "a")
            except LexloraError as exc:
                raise EngineError(str(exc)) from None
            self._load_lora(name, folder)  # PEFT holds the weights in memory from here

    def _unload(self, name: str) -> None:
        if name not in self._adapters:
            return
        self._adapters.discard(name)
        self._extensions.remove(name)
        if name not in self._lora or self._peft is None:
            return
        self._lora.discard(name)
        if self._lora:
            self._peft.delete_adapter(name)
        else:  # the last one: back to the plain base model
            self._model = self._peft.unload()
            self._peft = None

    async def _call(self, fn: Callable[[], Any]) -> Any:
        if self._thread is None:
            raise RuntimeError("the engine is not started")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, future))
        self._batcher.wake()
        return await asyncio.wrap_future(future)

    def _run_jobs(self) -> None:
        while True:
            try:
                fn, future = self._jobs.get_nowait()
            except queue.Empty:
                self._resident = tuple(sorted(self._adapters))
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

    # -- generation -----------------------------------------------------------------------------

    async def stream(self, request: GenerationRequest) -> AsyncIterator[EngineEvent]:
        if not request.prompt_ids:
            raise EngineError("the prompt is empty")
        ext = self._extensions.by_adapter.get(request.adapter or "")
        if ext is not None:  # engine ids: its virtual tokens first, its terms in its range
            request = dataclasses.replace(request, prompt_ids=ext.to_engine(request.prompt_ids))
        if len(request.prompt_ids) >= self._max_context:
            raise EngineError(f"the prompt is longer than the context ({self._max_context})")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown)
                loop.call_soon_threadsafe(events.put_nowait, event)

        row = Row(request, emit)
        if ext is not None and ext.tokenizer is not None:  # its terms decode with its tokenizer
            row.decode = ext.decode
        self._batcher.put(row)
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event if ext is None else ext.event(event)
                if isinstance(event, Finished):
                    return
        finally:
            row.cancelled.set()  # a no-op for a finished row; stops one still running

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=len(self._batcher),
            running=self._running,
            generated_tokens=self._generated,
            peak_batch=self._peak,
            resident_adapters=list(self._resident),
        )

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        adapters: list[str],
        every_position: bool = False,
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {
            "attention_mask": mask,
            "position_ids": positions,
            "cache": cache,
            "use_cache": True,
            "logits_to_keep": 0 if every_position else 1,
        }
        extensions = self._extensions
        extended = any(a in extensions.by_adapter for a in adapters)  # such rows in this pass
        heads: list[torch.Tensor] = []
        if extended:  # their rows embedded by us; the head's input kept for their term columns
            kwargs["inputs_embeds"] = extensions.embed(ids)
            hook = self._model.get_output_embeddings().register_forward_pre_hook(
                lambda _module, args: heads.append(args[0])
            )
        else:
            kwargs["input_ids"] = ids
        try:
            if self._peft is None:
                out = self._model(**kwargs)
            else:  # an adapter without LoRA layers runs on the base weights (unknown: PEFT raises)
                own_rows_only = extensions.by_adapter.keys() - self._lora
                names = [PEFT_BASE if a in own_rows_only else a for a in adapters]
                out = self._peft(**kwargs, adapter_names=names)
        finally:
            if extended:
                hook.remove()
        logits = out.logits
        if extended:
            logits = extensions.logits(logits, heads[-1], adapters)
        return logits if every_position else logits[:, -1, :]

    def _accept(self, rows: list[Row]) -> list[Row]:
        """Rows whose adapter is resident; the others get an error (never base output)."""
        accepted = []
        for row in rows:
            adapter = row.request.adapter
            if adapter is not None and adapter not in self._adapters:
                row.fail(EngineError(f"adapter {adapter!r} is not loaded"))
            else:
                accepted.append(row)
        return accepted

    def _limit_adapters(self, running: list[Row], rows: list[Row]) -> list[Row]:
        """The rows that keep the batch within ``max_adapters_per_batch`` adapters; the others go
        back to the front of the queue."""
        assert self._max_adapters is not None
        groups = {r.request.adapter for r in running}
        keep, back = [], []
        for row in rows:
            adapter = row.request.adapter
            if adapter in groups or len(groups) < self._max_adapters:
                groups.add(adapter)
                keep.append(row)
            else:
                back.append(row)
        if back:
            self._batcher.put_back(back)
        return keep

    def new_batch(self) -> DecodeBatch:
        """An empty running batch on this engine's model (used by its worker thread only)."""
        return DecodeBatch(
            self._forward,
            self._decode,
            pad_id=self._pad_id,
            eos_ids=self._eos_ids,
            max_context=self._max_context,
        )

    def _serve(self) -> None:
        batch = self.new_batch()
        with torch.no_grad():
            while not self._stopping.is_set():
                self._run_jobs()
                room = self._max_batch_size - len(batch)
                if room > 0:
                    running = Counter(_owner(row) for row in batch.rows)
                    taken = self._batcher.take(room, block=not batch.rows, running=running)
                    new = self._accept(taken)
                    if self._max_adapters:
                        new = self._limit_adapters(batch.rows, new)
                    try:
                        batch.add(new)  # a row that fails alone leaves alone (DecodeBatch)
                    except Exception as exc:  # a bug outside per-row work: these rows only
                        log.exception("prefill failed")
                        for row in new:
                            row.fail(exc)
                try:
                    batch.step()
                except Exception as exc:  # a bug outside per-row work
                    log.exception("decode step failed")
                    batch.fail(exc)
                self._running = len(batch)
                self._generated = batch.generated_tokens
                self._peak = batch.peak_rows
        batch.fail(EngineError("the server is shutting down"))
