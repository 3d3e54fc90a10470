"""Engines behind one interface (:mod:`lexlora.serve.engines.base`)."""

from __future__ import annotations

from lexlora.serve.config import ServeConfig
from lexlora.serve.engines.base import Engine


def create_engine(config: ServeConfig, base_path: str) -> Engine:
    """The engine ``config.engine`` names, for the base model at ``base_path``."""
    if config.engine == "embedded":
        from lexlora.serve.engines.embedded import EmbeddedEngine

        return EmbeddedEngine(
            base_path,
            max_batch_size=config.max_batch_size,
            batch_wait_ms=config.batch_wait_ms,
            max_context=config.max_context,
            threads=config.threads,
            max_adapters_per_batch=config.max_adapters_per_batch,
        )
    if config.engine == "vllm":
        vllm = {
            "python": config.vllm_python,
            "max_model_len": config.max_model_len,
            "max_context": config.max_context,
            "max_loras": config.max_loras,
            "max_lora_rank": config.max_lora_rank,
            "max_batch_size": config.max_batch_size,
            "kv_cache_gib": config.vllm_kv_cache_gib,
            "startup_timeout": config.vllm_startup_timeout,
            "extra_args": config.vllm_args,
        }
        if config.scaled_out:
            from lexlora.serve.engines.vllm_replicas import ReplicatedVllmEngine

            return ReplicatedVllmEngine(
                base_path,
                replicas=config.replicas,
                urls=config.vllm_urls,
                router_url=config.router_url,
                policy=config.router_policy,
                adapter_dir=config.adapter_dir,
                **vllm,
            )
        from lexlora.serve.engines.vllm import VllmEngine

        return VllmEngine(base_path, url=config.vllm_url, **vllm)
    raise ValueError(f"unknown engine {config.engine!r}")  # pragma: no cover - config validates
