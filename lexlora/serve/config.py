"""``serve.yaml``: which base model to serve, with which engine and limits, and to whom.

Keys are never stored in clear: a tenant lists the sha256 hex digests of its API keys
(``lexlora serve keygen TENANT`` prints a new key and the line to paste). Example::

    base_model: smollm2-135m-instruct     # built-in alias, model folder or hub id
    model_name: base                      # the base model's id in /v1/models
    store: ~/.cache/lexlora/adapters      # adapter store (default LEXLORA_HOME/adapters)
    engine: embedded                      # or vllm (a vLLM server: child process or vllm_url)
    max_loras: 8                          # resident adapters (LRU beyond that)
    max_batch_size: 8                     # rows decoded together in one forward pass
    max_queue: 64                         # admitted requests (running + waiting); more → 429
    max_queue_per_tenant: 32              # places reserved per tenant (default: max_queue //
                                          #   tenants); beyond it a tenant borrows free places
                                          #   only while every other tenant's reserve stays free
    max_tokens: 2048                      # most completion tokens a request may ask for (→ 400)
    default_max_tokens: 256               # completion tokens when a request names none
    max_body_bytes: 2097152               # larger request bodies → 413 (2 MiB: a 128k-token
                                          #   prompt is ~0.5 MB of text, ~1.5 MB JSON-escaped)
    batch_wait_ms: 5                      # how long a batch waits for companions
    max_context: 2048                     # optional cap (default: the model's)
    threads: 2                            # optional torch threads (1 is best on busy 2-core hosts)
    max_adapters_per_batch: 1             # embedded: optional cap on adapters per batch (1 = naive
                                          #   one-adapter-at-a-time scheduling, for benchmarks)
    # engine: vllm only (see lexlora.serve.engines.vllm)
    vllm_python: .venv-vllm/bin/python    # default: .venv-vllm (make setup-vllm) here or in the
                                          #   lexlora checkout
    vllm_url: http://127.0.0.1:8001       # attach to a running vLLM server instead of starting one
    max_model_len: 2048                   # --max-model-len (default: max_context, else
                                          #   min(model's positions, 2048))
    max_lora_rank: 16                     # --max-lora-rank (1, 8, 16, 32, 64, 128, 256, 320, 512)
    vllm_kv_cache_gib: 1                  # VLLM_CPU_KVCACHE_SPACE (CPU builds)
    vllm_startup_timeout: 300             # seconds to wait for the child's /health
    vllm_args: [--max-num-seqs, "16"]     # extra arguments for the child server
    # engine: vllm scaled out (lexlora.serve.engines.vllm_replicas): replicas behind vllm-router
    replicas: 2                           # start N vLLM children (each on its share of the CPU
                                          #   cores or GPUs) and a vllm-router in front
    vllm_urls: [http://10.0.0.5:8000, …]  # or: replicas that already run (the router too, with
    router_url: http://10.0.0.4:30000     #   router_url; without it lexlora starts one)
    router_policy: consistent_hash        # or round_robin (no adapter affinity; benchmarks)
    adapter_dir: /shared/lexlora-adapters # the resolver folder lexlora fills and the replicas read
                                          #   (VLLM_LORA_RESOLVER_CACHE_DIR); default: a private
                                          #   temporary folder (children only)
    admin_key_sha256: 9f86d08…            # optional: enables /admin/*
    runs_dir: runs                        # training runs on /ui's dashboard (admin key)
    reports_dir: reports                  # evaluation reports /ui serves read-only (relative
                                          #   paths: to the server's working directory)
    tenants:
      acme:
        api_key_sha256: [2c26b46b…]
        adapters: [contracts@prod]        # loaded at start-up
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from lexlora.config_errors import validated
from lexlora.errors import LexloraError
from lexlora.registry import parse_ref, validate_name
from lexlora.yaml_files import read_yaml

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed --max-lora-rank values


def _check_hash(value: str) -> str:
    if not SHA256_HEX.fullmatch(value):
        raise ValueError("expected a sha256 hex digest (64 lowercase hex characters)")
    return value


class TenantConfig(BaseModel):
    """One tenant: the hashes of its API keys and the adapters to load at start-up."""

    model_config = ConfigDict(extra="forbid")

    api_key_sha256: list[str] = Field(min_length=1)
    adapters: list[str] = []

    @field_validator("api_key_sha256")
    @classmethod
    def _hashes(cls, values: list[str]) -> list[str]:
        return [_check_hash(v) for v in values]

    @field_validator("adapters")
    @classmethod
    def _refs(cls, values: list[str]) -> list[str]:
        for ref in values:
            try:
                parse_ref(ref)
            except LexloraError as exc:
                raise ValueError(str(exc)) from None
        return values


class ServeConfig(BaseModel):
    """The whole of ``serve.yaml``."""

    model_config = ConfigDict(extra="forbid")

    base_model: str
    model_name: str = "base"
    store: Path | None = None
    engine: Literal["embedded", "vllm"] = "embedded"
    max_loras: int = Field(8, ge=1)
    max_batch_size: int = Field(8, ge=1, le=256)
    max_queue: int = Field(64, ge=1)
    max_queue_per_tenant: int | None = Field(None, ge=1)
    max_tokens: int = Field(2048, ge=1)
    default_max_tokens: int = Field(256, ge=1)
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    batch_wait_ms: float = Field(5.0, ge=0, le=1000)
    max_context: int | None = Field(None, ge=2)
    threads: int | None = Field(None, ge=1)
    max_adapters_per_batch: int | None = Field(None, ge=1)
    vllm_python: Path | None = None
    vllm_url: str | None = None
    max_model_len: int | None = Field(None, ge=2)
    max_lora_rank: int = 16
    vllm_kv_cache_gib: float = Field(1.0, gt=0)
    vllm_startup_timeout: float = Field(300.0, gt=0)
    vllm_args: list[str] = []
    replicas: int | None = Field(None, ge=1, le=64)
    vllm_urls: list[str] = []
    router_url: str | None = None
    router_policy: Literal["consistent_hash", "round_robin"] = "consistent_hash"
    adapter_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    admin_key_sha256: str | None = None
    runs_dir: Path = Path("runs")
    reports_dir: Path = Path("reports")
    tenants: dict[str, TenantConfig] = {}

    @field_validator("admin_key_sha256")
    @classmethod
    def _admin_hash(cls, value: str | None) -> str | None:
        return None if value is None else _check_hash(value)

    @field_validator("max_lora_rank")
    @classmethod
    def _lora_rank(cls, value: int) -> int:
        if value not in VLLM_LORA_RANKS:
            raise ValueError(f"expected one of {', '.join(map(str, VLLM_LORA_RANKS))}")
        return value

    @field_validator("vllm_url", "router_url")
    @classmethod
    def _vllm_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("vllm_urls")
    @classmethod
    def _vllm_urls(cls, values: list[str]) -> list[str]:
        urls = [_check_url(v) for v in values]
        if len(set(urls)) != len(urls):
            raise ValueError("a replica is listed twice")
        return urls

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError("expected a non-empty id without spaces")
        return value

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, tenants: dict[str, TenantConfig]) -> dict[str, TenantConfig]:
        for name in tenants:
            check_tenant_name(name)
        return tenants

    @model_validator(mode="after")
    def _limits(self) -> ServeConfig:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) is above max_tokens "
                f"({self.max_tokens})"
            )
        self._check_scale_out()
        tenants = max(1, len(self.tenants))
        if self.queue_share * tenants > self.max_queue:
            raise ValueError(
                f"max_queue ({self.max_queue}) cannot reserve {self.queue_share} places for each "
                f"of {tenants} tenants: raise max_queue or lower max_queue_per_tenant"
            )
        return self

    def _check_scale_out(self) -> None:
        scale_out = {"replicas", "vllm_urls", "router_url", "adapter_dir"} & self.model_fields_set
        if not scale_out:
            return
        first = sorted(scale_out)[0]
        if self.engine != "vllm":
            raise ValueError(f"{first} needs engine: vllm")
        if self.vllm_url:
            raise ValueError(f"{first} and vllm_url exclude each other (vllm_url is one server)")
        if self.replicas and self.vllm_urls:
            raise ValueError("replicas (children lexlora starts) and vllm_urls exclude each other")
        if not self.replicas and not self.vllm_urls:
            raise ValueError(f"{first} needs replicas: N or vllm_urls: [...]")
        if self.router_url and not self.vllm_urls:
            raise ValueError("router_url needs vllm_urls (the replicas behind it)")
        if self.vllm_urls and self.adapter_dir is None:
            raise ValueError(
                "vllm_urls needs adapter_dir: the folder those replicas read as "
                "VLLM_LORA_RESOLVER_CACHE_DIR"
            )

    @property
    def scaled_out(self) -> bool:
        """Replicas behind a router (``replicas`` or ``vllm_urls``)."""
        return bool(self.replicas or self.vllm_urls)

    @property
    def queue_share(self) -> int:
        """Queue places reserved for each tenant."""
        return self.max_queue_per_tenant or max(1, self.max_queue // max(1, len(self.tenants)))


def _check_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError("expected an http(s)://HOST:PORT URL")
    return value.rstrip("/")


def check_tenant_name(name: str) -> str:
    """A registry tenant name that also keeps internal adapter names (``T--NAME--vN``)
    unambiguous: no ``--`` inside and no trailing ``-``."""
    try:
        validate_name("tenant", name)
    except LexloraError as exc:
        raise ValueError(str(exc)) from None
    if "--" in name or name.endswith("-"):
        raise ValueError(f"tenant name {name!r}: '--' and a trailing '-' are reserved")
    return name


def load_config(path: Path) -> ServeConfig:
    """Read and validate ``serve.yaml``; every mistake is one LexloraError naming the key."""
    path = Path(path)
    if not path.is_file():
        raise LexloraError(f"{path}: no such serve config")
    raw = read_yaml(path, "serve config") or {}
    if not isinstance(raw, dict):
        raise LexloraError(f"{path}: expected a mapping of keys (base_model, tenants, …)")
    return validate_config(raw, str(path))


def validate_config(raw: dict[str, Any], source: str = "<serve config>") -> ServeConfig:
    return validated(ServeConfig, raw, source, noun="key")
