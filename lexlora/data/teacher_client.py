"""The teacher's client: an OpenAI-compatible endpoint behind retries, a budget and a disk cache.

One :class:`TeacherClient` serves a whole ``lexlora data`` run. Every reply is cached on disk under
a key of (model, prompt id and version, prompt text, chunk hash, temperature, pairs per chunk), so a
re-run or a resumed run sends nothing twice. The budget (requests, tokens) counts only requests
really sent; once it is spent the client stops asking and reports ``None``. ``retried`` counts
every HTTP attempt beyond the first of each request, the ``openai`` client's own retries included.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lexlora.errors import LexloraError
from lexlora.io import atomic_write, dumps_canonical, sha256_text


@dataclass
class TeacherSettings:
    base_url: str
    model: str
    api_key: str
    temperature: float
    max_tokens: int | None
    max_requests: int | None
    max_tokens_budget: int | None
    cache_dir: Path
    timeout: float
    retries: int
    retry_backoff: float


@dataclass
class TeacherStats:
    requests: int = 0
    cache_hits: int = 0
    tokens: int = 0
    retried: int = 0
    budget_exhausted: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class TeacherClient:
    """Ask the teacher for one chunk's pairs; cached, budgeted, retried."""

    def __init__(self, settings: TeacherSettings) -> None:
        from openai import DefaultHttpxClient, OpenAI

        self.settings = settings
        self.stats = TeacherStats()
        self._attempts = threading.local()  # HTTP attempts of this thread's current request
        self._client = OpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key,
            timeout=settings.timeout,
            max_retries=settings.retries,
            http_client=DefaultHttpxClient(event_hooks={"request": [self._count_attempt]}),
        )

    def _count_attempt(self, _request: Any) -> None:
        """httpx calls this before every attempt it sends, retries included (same thread)."""
        self._attempts.n += 1

    def cache_key(self, prompt_key: dict[str, Any], chunk: str) -> str:
        s = self.settings
        return sha256_text(
            dumps_canonical(
                {
                    "model": s.model,
                    "prompt": prompt_key,
                    "chunk_sha256": sha256_text(chunk),
                    "temperature": s.temperature,
                }
            )
        )

    def ask(self, messages: list[dict[str, str]], prompt_key: dict[str, Any], chunk: str):
        """The reply text for ``messages``: from the cache, else from the endpoint.

        Returns ``None`` when the budget is spent (nothing is sent then).
        """
        key = self.cache_key(prompt_key, chunk)
        path = self.settings.cache_dir / key[:2] / f"{key}.json"
        if path.is_file():
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
                with self.stats._lock:
                    self.stats.cache_hits += 1
                return entry["content"]
            except (OSError, ValueError, KeyError):
                pass  # a damaged entry is asked again and rewritten
        if not self._reserve():
            return None
        content, tokens = self._send(messages)
        with self.stats._lock:
            self.stats.tokens += tokens
        entry = {"key": key, "model": self.settings.model, "content": content, "tokens": tokens}
        with atomic_write(path) as f:
            f.write(dumps_canonical(entry))
        return content

    def _reserve(self) -> bool:
        s, st = self.settings, self.stats
        with st._lock:
            over_requests = s.max_requests is not None and st.requests >= s.max_requests
            over_tokens = s.max_tokens_budget is not None and st.tokens >= s.max_tokens_budget
            if over_requests or over_tokens:
                st.budget_exhausted = True
                return False
            st.requests += 1
            return True

    def _send(self, messages: list[dict[str, str]]) -> tuple[str, int]:
        """One chat completion. The client retries 429/5xx/timeouts/connection errors itself
        (``retries``, exponential backoff); connection failures get a few more bounded tries."""
        s = self.settings
        kwargs: dict[str, Any] = {"model": s.model, "messages": messages}
        kwargs["temperature"] = s.temperature
        if s.max_tokens is not None:
            kwargs["max_tokens"] = s.max_tokens
        self._attempts.n = 0
        try:
            return self._send_retrying(kwargs)
        finally:
            with self.stats._lock:
                self.stats.retried += max(self._attempts.n - 1, 0)

    def _send_retrying(self, kwargs: dict[str, Any]) -> tuple[str, int]:
        import openai

        s = self.settings
        attempts = s.retries + 1
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                reply = self._client.chat.completions.create(**kwargs)
            except openai.APITimeoutError:  # the client already retried; a slow server stays slow
                raise LexloraError(
                    f"teacher endpoint {s.base_url} timed out after {s.retries + 1} tries of "
                    f"{s.timeout:g} s (options.timeout)"
                ) from None
            except openai.APIConnectionError as exc:  # refused/reset: the client retried too
                last = exc
            except openai.APIStatusError as exc:  # 429/5xx left after the client's retries, 4xx
                raise LexloraError(
                    f"teacher endpoint {s.base_url} failed for model '{s.model}': HTTP "
                    f"{exc.status_code} ({_short(exc)})"
                ) from None
            else:
                content = reply.choices[0].message.content if reply.choices else None
                usage = reply.usage.total_tokens if reply.usage is not None else 0
                return content or "", int(usage or 0)
            if attempt + 1 < attempts:
                time.sleep(s.retry_backoff * 2**attempt)
        raise LexloraError(
            f"teacher endpoint {s.base_url} unreachable after {attempts * (s.retries + 1)} tries "
            f"({type(last).__name__}: {_short(last)})"
        )

    def close(self) -> None:
        self._client.close()


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160]


def resolve_api_key(env_name: str | None) -> str:
    if not env_name:
        return "EMPTY"
    value = os.environ.get(env_name)
    if not value:
        raise LexloraError(
            f"data.builders.teacher.options.api_key_env: environment variable '{env_name}' is "
            "not set"
        )
    return value
