"""Prometheus metrics (own registry per app) and the ASGI middleware that counts requests.

``lexlora_requests_total{route,status}``, ``lexlora_request_latency_seconds{route}`` (to the last
byte, streams included), ``lexlora_generated_tokens_total{tenant}``,
``lexlora_prompt_tokens_total{tenant}``, ``lexlora_adapter_requests_total{tenant,adapter}``,
``lexlora_queue_depth`` (admitted, unfinished requests) and the engine's live gauges
``lexlora_engine_waiting_rows``, ``lexlora_engine_running_rows``,
``lexlora_engine_generated_tokens`` (every token decoded, cancelled rows included),
``lexlora_engine_peak_batch_rows`` and ``lexlora_resident_adapters``; per adapter
``lexlora_adapter_generated_tokens_total{tenant,adapter}`` and
``lexlora_adapter_latency_seconds{tenant,adapter}`` (p50/p99 by ``histogram_quantile``); for a
scaled-out engine, per replica (its own ``/metrics`` and its supervisor):
``lexlora_replica_up{replica}``, ``lexlora_replica_restarts_total{replica}``,
``lexlora_replica_requests_total{replica}``, ``lexlora_replica_prompt_tokens_total{replica}``,
``lexlora_replica_generation_tokens_total{replica}`` and
``lexlora_replica_adapter_loads_total{replica,adapter}`` (cold loads by vLLM's resolver).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
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
        self.adapter_tokens = Counter(
            "lexlora_adapter_generated_tokens",
            "Completion tokens returned by tenant and adapter",
            ["tenant", "adapter"],
            registry=r,
        )
        self.adapter_latency = Histogram(
            "lexlora_adapter_latency_seconds",
            "Time from admission to the last token, by tenant and adapter",
            ["tenant", "adapter"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(ReplicaCollector(engine_stats))
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


class ReplicaCollector(Collector):
    """Each replica of a scaled-out engine (nothing for one engine process)."""

    def __init__(self, engine_stats: Callable[[], EngineStats]) -> None:
        self._stats = engine_stats

    def collect(self) -> Iterator[Metric]:
        replicas = self._stats().replicas
        up = GaugeMetricFamily("lexlora_replica_up", "1 while it serves", labels=["replica"])
        counters = {
            field: CounterMetricFamily(f"lexlora_replica_{field}", doc, labels=["replica"])
            for field, doc in REPLICA_COUNTERS.items()
        }
        loads = CounterMetricFamily(
            "lexlora_replica_adapter_loads",
            "Adapter cold loads by the replica's LoRA resolver",
            labels=["replica", "adapter"],
        )
        for replica in replicas:
            up.add_metric([replica.replica], float(replica.up))
            for field, family in counters.items():
                family.add_metric([replica.replica], float(getattr(replica, field)))
            for adapter, count in sorted(replica.adapter_loads.items()):
                loads.add_metric([replica.replica, adapter], count)
        if replicas:
            yield up
            yield from counters.values()
            yield loads


REPLICA_COUNTERS = {
    "restarts": "Times lexlora started the replica again",
    "requests": "Requests the replica finished (its vllm:request_success_total)",
    "prompt_tokens": "Prompt tokens the replica processed",
    "generation_tokens": "Tokens the replica generated",
}


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
