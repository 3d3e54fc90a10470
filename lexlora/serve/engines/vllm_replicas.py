"""The vLLM engine scaled out: several vLLM replicas behind vLLM's own router (``vllm-router``).

``engine: vllm`` with ``replicas: N`` starts N vLLM servers (children of the gateway, each pinned
to its share of the CPU cores, or of the GPUs with tensor parallelism over its share) and a
``vllm-router`` in front of them, all on 127.0.0.1; with ``vllm_urls`` (and ``router_url``) it
uses replicas (and a router) that already run. Routing and batching stay in vLLM's hands; the
gateway keeps what only it knows (keys, tenants, names, versions, strength, composition).

- **Adapters by resolver.** Every replica runs vLLM's filesystem LoRA resolver over one folder
  that lexlora owns and fills (:class:`~lexlora.serve.engines.adapter_dir.AdapterDirectory`):
  loading an adapter publishes ``DIR/INTERNAL_NAME``, and whichever replica first gets a request
  for that name loads it from there, so any replica serves any adapter, after a failover too,
  and a version published after start-up is served without restarting anything. Only names the
  gateway generated reach a replica. Unloading reaches every replica
  (``/v1/unload_lora_adapter`` on each, since the router forwards it to one).
- **Affinity.** Each adapter request carries its internal name as the router's hash key
  (``X-Session-ID``; ``router_policy: consistent_hash``), so one adapter's traffic lands on one
  replica and its cold load happens once; base-model requests carry none.
- **Health.** Each child (replicas and router) has its own
  :class:`~lexlora.serve.engines.vllm_process.Supervisor`: a dead replica is started again on its
  port while the router's circuit breaker routes around it; a request that fails before its
  first token is retried once through the router, one that fails later is a 503. The engine takes
  requests while the router and at least one replica do. ``/metrics`` has each replica's
  requests, tokens, state, restarts and adapter cold loads (``refresh_stats``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from lexlora.errors import LexloraError
from lexlora.serve.engines.adapter_dir import AdapterDirectory
from lexlora.serve.engines.base import (
    EngineError,
    EngineStats,
    EngineUnavailable,
    Event,
    GenerationRequest,
    ReplicaStats,
)
from lexlora.serve.engines.vllm import PLUGIN_ACTIVE, PROBE_TIMEOUT_S, VllmEngine
from lexlora.serve.engines.vllm_client import message
from lexlora.serve.engines.vllm_process import (
    OK,
    ChildServer,
    Supervisor,
    find_vllm_python,
    wait_healthy,
)
from lexlora.serve.launch import free_port

log = logging.getLogger("lexlora.serve")

ROUTE_KEY_HEADER = "X-Session-ID"  # the first header vllm-router's consistent_hash reads
RESOLVED = re.compile(r"Resolved and loaded LoRA adapter '([^']+)'")  # a replica's cold load
RETRY_WAIT_S = 1.0  # before the one retry of a request that failed before its first token
ROUTER_HEALTH = (  # quick failover on a small deployment; vllm_args cannot reach these
    "--health-check-interval-secs",
    "2",
    "--health-failure-threshold",
    "2",
    "--cb-failure-threshold",
    "2",
    "--cb-timeout-duration-secs",
    "5",
)
SCRAPED = {
    "vllm:request_success_total": "requests",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:generation_tokens_total": "generation_tokens",
}


def gpu_count() -> int:
    """GPUs ``nvidia-smi -L`` lists (0 without one)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    if out.returncode != 0:
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def device_shares(replicas: int, gpus: int, cores: Sequence[int]) -> list[dict[str, Any]]:
    """Each replica's share: ``{"env": {...}, "args": [...], "cpus": frozenset | None}``.

    With GPUs, replica i gets ``gpus // replicas`` of them (tensor parallel over its share); on a
    CPU, replica i gets its contiguous slice of ``cores`` (a core each at least, shared round
    robin when there are more replicas than cores), bound with ``VLLM_CPU_OMP_THREADS_BIND``.
    """
    shares = []
    for i in range(replicas):
        if gpus >= replicas:
            per = gpus // replicas
            ids = list(range(i * per, (i + 1) * per))
            args = ["--tensor-parallel-size", str(per)] if per > 1 else []
            env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, ids))}
            shares.append({"env": env, "args": args, "cpus": None})
            continue
        per = max(1, len(cores) // replicas)
        mine = list(cores[i * per : (i + 1) * per]) or [cores[i % len(cores)]]
        env = {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, mine))}
        shares.append({"env": env, "args": [], "cpus": frozenset(mine)})
    return shares


class ServedProcess:
    """One server of the deployment (a vLLM replica or the router), started by lexlora (a
    ``command``) or attached by URL: what its :class:`Supervisor` drives."""

    def __init__(
        self,
        label: str,
        url: str,
        *,
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        cpus: frozenset[int] | None = None,
        startup_timeout: float = 300.0,
        headers: dict[str, str] | None = None,
        health_path: str = "/health",
    ) -> None:
        self.label = label
        self.health_path = health_path
        self.url = url
        self.command = list(command) if command is not None else None
        self.attached = command is None
        self._env = env or {}
        self._cpus = cpus
        self._startup_timeout = startup_timeout
        self._headers = headers or {}
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self.child: ChildServer | None = None
        self.loads: collections.Counter[str] = collections.Counter()  # cold loads per adapter
        self.scraped: dict[str, float] = {}

    def _count_loads(self, line: str) -> None:
        if match := RESOLVED.search(line):
            self.loads[match[1]] += 1

    def output_tail(self, lines: int = 60) -> str:
        return "\n".join(list(self.tail)[-lines:])

    async def launch(self) -> None:
        """Start the child (if lexlora runs it) and wait until ``/health`` answers."""
        if self.command is not None:
            self.child = ChildServer(
                self.command,
                self._env,
                self.tail,
                markers=(PLUGIN_ACTIVE,),
                label=self.label,
                prefix=self.label.replace(" ", "-"),
                cpus=self._cpus,
                on_line=self._count_loads,
            )
        await wait_healthy(
            self.probe,
            self.exit_code,
            self.output_tail,
            self._startup_timeout,
            f"{self.label} ({self.url})",
        )

    @property
    def plugin_active(self) -> bool:
        return self.child is not None and PLUGIN_ACTIVE in self.child.seen

    # -- the Supervisor's Server ------------------------------------------------------------------

    def exit_code(self) -> int | None:
        return self.child.exit_code() if self.child is not None else None

    async def probe(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
                response = await client.get(self.url + self.health_path, headers=self._headers)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def kill(self) -> None:
        if self.child is not None:
            await asyncio.to_thread(self.child.kill)

    async def start(self) -> None:
        """A fresh child on the same port (the router knows the replicas by URL)."""
        await self.kill()
        await self.launch()

    async def recover(self) -> None:
        """An attached server answers again: nothing to reload (adapters come by resolver)."""

    async def stop(self) -> None:
        if self.child is not None:
            await asyncio.to_thread(self.child.stop)

    # -- metrics ----------------------------------------------------------------------------------

    async def scrape(self) -> None:
        """Read the replica's own counters from its ``/metrics`` (kept when it does not answer)."""
        try:
            async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
                response = await client.get(self.url + "/metrics", headers=self._headers)
        except httpx.HTTPError:
            return
        if response.status_code != 200:
            return
        totals = dict.fromkeys(SCRAPED.values(), 0.0)
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name in SCRAPED:
                    totals[SCRAPED[sample.name]] += sample.value
        self.scraped = totals


class ReplicatedVllmEngine(VllmEngine):
    """vLLM replicas behind ``vllm-router``; adapters by the filesystem resolver."""

    def __init__(
        self,
        base_path: str,
        *,
        replicas: int | None = None,
        urls: Sequence[str] = (),
        router_url: str | None = None,
        policy: str = "consistent_hash",
        adapter_dir: Path | None = None,
        python: Path | None = None,
        **kwargs: Any,
    ) -> None:
        if bool(replicas) == bool(urls):
            raise ValueError("give replicas (children) or urls (running replicas), not both")
        self._replica_count = replicas or len(urls)
        self._replica_urls = [u.rstrip("/") for u in urls]
        self._router_url = router_url.rstrip("/") if router_url else None
        self._policy = policy
        self._adapter_dir_setting = adapter_dir
        self._wants_python = bool(replicas) or router_url is None
        super().__init__(base_path, python=python, **kwargs)
        self._api_key = os.environ.get("VLLM_API_KEY") if urls else secrets.token_urlsafe(24)
        self._replicas: list[ServedProcess] = []
        self._router: ServedProcess | None = None
        self._dir: AdapterDirectory | None = None
        self._private_dir: Path | None = None
        self._supervisors: list[Supervisor] = []  # one per replica (the router's: _supervisor)

    def _find_python(self, python: Path | None, url: str | None) -> Path | None:
        return find_vllm_python(python) if self._wants_python else None

    # -- life cycle -----------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def replica_command(self, port: int, extra: Sequence[str] = ()) -> list[str]:
        """Replica ``port``'s command line: the single server's, on that port."""
        return self.command(port)[: -len(self._extra_args) or None] + list(extra) + self._extra_args

    def router_command(self, port: int, metrics_port: int) -> list[str]:
        assert self._python is not None
        router = self._python.parent / "vllm-router"
        if not router.exists():
            raise LexloraError(
                f"engine vllm with replicas: {router} does not exist; run `make setup-vllm` "
                "(it installs vllm-router) or set router_url"
            )
        urls = [r.url for r in self._replicas]
        return [
            str(router),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--worker-urls",
            *urls,
            "--policy",
            self._policy,
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            str(metrics_port),
            "--worker-startup-timeout-secs",
            str(int(self._startup_timeout)),
            "--log-level",
            "warning",
            *ROUTER_HEALTH,
        ]

    def _build(self) -> None:
        """The replicas and the router, with their ports (kept across restarts)."""
        if self._dir is None:
            if self._adapter_dir_setting is None:
                self._private_dir = Path(tempfile.mkdtemp(prefix="lexlora-adapters-"))
            root = self._adapter_dir_setting or self._private_dir
            self._dir = AdapterDirectory(root, self.base_path)
        if self._replicas:
            return
        headers = self._auth()
        if self._replica_urls:
            self._replicas = [
                ServedProcess(
                    f"vLLM replica {i}",
                    url,
                    startup_timeout=self._startup_timeout,
                    headers=headers,
                )
                for i, url in enumerate(self._replica_urls)
            ]
        else:
            cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
            shares = device_shares(self._replica_count, gpu_count(), cores or [0])
            for i, share in enumerate(shares):
                port = free_port()
                env = {
                    **self.environment(),
                    **share["env"],
                    "VLLM_LORA_RESOLVER_CACHE_DIR": str(self._dir.root),
                }
                self._replicas.append(
                    ServedProcess(
                        f"vLLM replica {i}",
                        f"http://127.0.0.1:{port}",
                        command=self.replica_command(port, share["args"]),
                        env=env,
                        cpus=share["cpus"],
                        startup_timeout=self._startup_timeout,
                        headers=headers,
                    )
                )
        # the router's /health is 503 while any replica is down: /liveness says it runs
        if self._router_url:
            self._router = ServedProcess(
                "vllm-router",
                self._router_url,
                startup_timeout=self._startup_timeout,
                health_path="/liveness",
            )
        else:
            port = free_port()
            self._router = ServedProcess(
                "vllm-router",
                f"http://127.0.0.1:{port}",
                command=self.router_command(port, free_port()),
                env=dict(os.environ),
                startup_timeout=self._startup_timeout,
                health_path="/liveness",
            )

    async def _launch(self) -> None:
        self._build()
        assert self._router is not None
        await asyncio.gather(*(r.launch() for r in self._replicas))
        await self._router.launch()
        self._url = self._router.url
        self._client = httpx.AsyncClient(
            base_url=self._url, headers=self._auth(), timeout=httpx.Timeout(600.0, connect=10.0)
        )
        await self._read_models()
        started = [r for r in self._replicas if not r.attached]
        self._base_scores_batch = bool(started) and all(r.plugin_active for r in started)

    def _watch_servers(self) -> None:
        assert self._router is not None
        self._supervisors = [
            Supervisor(r, self._replica_down(r), **self._supervision) for r in self._replicas
        ]
        self._supervisor = Supervisor(self._router, self._on_down, **self._supervision)
        everyone = [*self._supervisors, self._supervisor]
        self._watches = [asyncio.create_task(s.run()) for s in everyone]

    def _replica_down(self, replica: ServedProcess) -> Callable[[str], None]:
        def down(detail: str) -> None:  # the router routes around it; its requests fail alone
            log.error("%s (%s) is down: %s", replica.label, replica.url, detail)

        return down

    def output_tail(self, lines: int = 400) -> str:
        return "\n\n".join(
            f"[{r.label}]\n{r.output_tail(lines)}" for r in [*self._replicas, self._router] if r
        )

    async def _stop_servers(self) -> None:
        """The router and the replicas lexlora started, and its private adapter folder."""
        servers = [s for s in (self._router, *self._replicas) if s is not None]
        await asyncio.gather(*(s.stop() for s in servers))
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    def health(self) -> dict[str, Any]:
        mode = "attached replicas" if self._replica_urls else "replicas"
        if self._state != OK or self._supervisor is None:
            return {"state": self._state, "mode": mode}
        pairs = zip(self._replicas, self._supervisors, strict=True)
        replicas = [{"url": r.url, **s.health()} for r, s in pairs]
        up = sum(r["state"] == OK for r in replicas)
        router = self._supervisor.health()
        state = OK if self._supervisor.state == OK and up else "unavailable"
        body: dict[str, Any] = {
            "state": state,
            "mode": mode,
            "policy": self._policy,
            "replicas_up": up,
            "replicas": replicas,
            "router": {"url": self._router.url if self._router else None, **router},
        }
        if state != OK:
            body["detail"] = self._down_detail()
        return body

    def _down_detail(self) -> str:
        if self._supervisor is not None and self._supervisor.state != OK:
            return f"the vllm-router is {self._supervisor.state}; retry shortly"
        return "no vLLM replica is serving; retry shortly"

    def _ensure_up(self) -> None:
        if self._state != OK or self._supervisor is None:
            raise EngineUnavailable(f"the vLLM engine is {self._state}; retry shortly")
        replicas = self._supervisors
        if self._supervisor.state != OK or not any(s.state == OK for s in replicas):
            raise EngineUnavailable(self._down_detail())

    def _unreachable(self, why: str) -> EngineUnavailable:
        for supervisor in [*self._supervisors, self._supervisor]:
            if supervisor is not None:
                supervisor.poke()
        return EngineUnavailable(f"a vLLM replica or the router {why}; retry shortly")

    # -- adapters -------------------------------------------------------------------------------

    async def _load_into_vllm(self, name: str, path: Path) -> None:
        if self._dir is None:
            raise RuntimeError("the vLLM engine is not started")
        try:
            await asyncio.to_thread(self._dir.publish, name, path)
        except LexloraError as exc:
            raise EngineError(str(exc)) from None

    async def _reload_adapters(self) -> None:
        """Nothing: a restarted replica loads adapters from the folder on demand."""

    async def _unload_from_vllm(self, name: str) -> None:
        """``/v1/unload_lora_adapter`` on every replica that runs (its folder stays: names are
        content-addressed, and another gateway may serve it)."""
        up = [r for r, s in zip(self._replicas, self._supervisors, strict=True) if s.state == OK]
        answers = await asyncio.gather(*(self._unload_on(r, name) for r in up))
        for replica, response in zip(up, answers, strict=True):
            if response is not None and response.status_code not in (200, 404):
                raise EngineError(
                    f"{replica.label} could not unload the adapter: {message(response)}"
                )

    async def _unload_on(self, replica: ServedProcess, name: str) -> httpx.Response | None:
        body = {"lora_name": name}
        try:
            async with httpx.AsyncClient(timeout=120.0) as client:
                return await client.post(
                    replica.url + "/v1/unload_lora_adapter", json=body, headers=self._auth()
                )
        except httpx.HTTPError:
            return None  # it is down: it loads the folder again if it ever gets the name

    # -- requests -------------------------------------------------------------------------------

    def route_headers(self, request: GenerationRequest) -> dict[str, str]:
        """The router's hash key: the adapter's internal name (base requests carry none)."""
        return {ROUTE_KEY_HEADER: request.adapter} if request.adapter else {}

    def _error(self, status: int, text: str, request: GenerationRequest) -> Exception:
        if status >= 500:  # the router lost the replica it chose (or every retry failed)
            return self._unreachable(f"failed ({status}: {text[:200]})")
        return super()._error(status, text, request)

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        for retry in (False, True):
            started = False
            try:
                async for event in super()._generate(request):
                    started = True
                    yield event
                return
            except EngineUnavailable:
                if started or retry:
                    raise
                await asyncio.sleep(RETRY_WAIT_S)

    async def _score(self, request: GenerationRequest) -> dict[str, Any]:
        try:
            return await super()._score(request)
        except EngineUnavailable:
            await asyncio.sleep(RETRY_WAIT_S)
            return await super()._score(request)

    # -- metrics --------------------------------------------------------------------------------

    async def refresh_stats(self) -> None:
        await asyncio.gather(*(r.scrape() for r in self._replicas))

    def stats(self) -> EngineStats:
        stats = super().stats()
        stats.replicas = [
            ReplicaStats(
                replica=str(i),
                url=r.url,
                up=s.state == OK,
                restarts=s.restarts,
                requests=r.scraped.get("requests", 0.0),
                prompt_tokens=r.scraped.get("prompt_tokens", 0.0),
                generation_tokens=r.scraped.get("generation_tokens", 0.0),
                adapter_loads=dict(r.loads),
            )
            for i, (r, s) in enumerate(zip(self._replicas, self._supervisors, strict=True))
        ]
        return stats
