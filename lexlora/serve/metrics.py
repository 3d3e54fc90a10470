"""Prometheus metrics (own registry per app) and the ASGI middleware that counts requests.

``lexlora_requests_total{route,status}``, ``lexlora_request_latency_seconds{route}`` (to the last
byte, streams included), ``lexlora_generated_tokens_total{tenant}``,
``lexlora_prompt_tokens_total{tenant}``, ``lexlora_adapter_requests_total{tenant,adapter}``,
``lexlora_queue_depth`` (admitted, unfinished requests) and the engine's live gauges
``lexlora_engine_waiting_rows``, ``lexlora_engine_running_rows``,
``lexlora_engine_generated_tokens`` (every token decoded, cancelled rows included),
``lexlora_engine_peak_batch_rows`` and ``lexlora_resident_adapters``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lexlora.serve.engines.base import EngineStats

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], int], engine_stats: Callable[[], EngineStats]):
        disable_created_metrics()  # no *_created series next to each counter
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lexlora_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "lexlora_request_latency_seconds",
            "Time to the last byte of the response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter(
            "lexlora_generated_tokens", "Completion tokens returned", ["tenant"], registry=r
        )
        self.prompt_tokens = Counter(
            "lexlora_prompt_tokens", "Prompt tokens processed", ["tenant"], registry=r
        )
        self.adapter_requests = Counter(
            "lexlora_adapter_requests",
            "Generation requests by tenant and adapter (name:version, base, or a mix)",
            ["tenant", "adapter"],
            registry=r,
        )
        gauges = {
            "lexlora_queue_depth": ("Admitted requests not finished", queue_depth),
            "lexlora_engine_waiting_rows": ("Rows waiting for the engine", lambda: stats().waiting),
            "lexlora_engine_running_rows": ("Rows being decoded", lambda: stats().running),
            "lexlora_engine_generated_tokens": (
                "Tokens decoded by the engine (cancelled rows included)",
                lambda: stats().generated_tokens,
            ),
            "lexlora_engine_peak_batch_rows": (
                "Most rows decoded in one forward pass",
                lambda: stats().peak_batch,
            ),
            "lexlora_resident_adapters": (
                "Adapters loaded in the engine",
                lambda: len(stats().resident_adapters),
            ),
        }
        stats = engine_stats
        for name, (doc, fn) in gauges.items():
            Gauge(name, doc, registry=r).set_function(fn)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request by its route template and status, with its latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 0, "done": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                status["done"] = True

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            code = status["code"] or 500  # nothing sent: an unhandled error
            if status["code"] and not status["done"]:
                code = 499  # the client went away mid-response
            self.metrics.requests.labels(route, str(code)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
