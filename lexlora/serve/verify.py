"""``lexlora serve verify``: is a served model exactly the model it claims to be?

Sends the same greedy completions to an OpenAI-compatible endpoint (``lexlora serve`` with either
engine, or anything that speaks ``/v1/completions``) and computes them offline with HF
transformers (+ PEFT for an adapter, fp32): the base from ``--base`` or the config's
``base_model``; each adapter from the store by the name the gateway shows that tenant
(``contracts``, ``contracts:2``, ``contracts@prod``). A model matches when, for every prompt, the
served text and its number of completion tokens equal the offline greedy decoding (text decoded
as the server does: special tokens skipped). The served requests are sent a few at a time, so
that rows for different models share the server's batches (where mixed-batch bugs show).
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lexlora.adapter_methods import load_adapted
from lexlora.artifacts.adapter import adapter_method
from lexlora.errors import LexloraError

PROMPTS = (
    "The Customer shall pay",
    "Under the agreement, what must the Customer do?",
    "Either party may terminate this Agreement",
    "The Recipient shall not disclose",
)


@dataclass
class Sample:
    prompt: str
    served_text: str
    served_tokens: int
    offline_text: str = ""
    offline_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.served_text == self.offline_text and self.served_tokens == self.offline_tokens


@dataclass
class ModelCheck:
    """One served model id and how its samples compare."""

    model: str
    target: str  # "base" or "NAME:VERSION"
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.samples) and all(s.ok for s in self.samples)

    @property
    def matched(self) -> int:
        return sum(s.ok for s in self.samples)

    def first_mismatch(self) -> Sample | None:
        return next((s for s in self.samples if not s.ok), None)


def _tenant_of(config: Any, api_key: str) -> str | None:
    from lexlora.serve.tenants import hash_key

    digest = hash_key(api_key)
    for name, tenant in config.tenants.items():
        if digest in tenant.api_key_sha256:
            return name
    return None


def served_models(endpoint: str, api_key: str) -> tuple[str, list[str]]:
    """The base model's id and every model id the endpoint lists for this key."""
    response = httpx.get(
        f"{endpoint}/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    )
    if response.status_code != 200:
        raise LexloraError(f"{endpoint}/v1/models answered {response.status_code}: {response.text}")
    cards = response.json()["data"]
    if not cards:
        raise LexloraError(f"{endpoint}/v1/models lists no model")
    base = next((c["id"] for c in cards if not c.get("parent")), cards[0]["id"])
    return base, [c["id"] for c in cards]


def complete(endpoint: str, api_key: str, model: str, prompt: str, max_tokens: int) -> Sample:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
    response = httpx.post(
        f"{endpoint}/v1/completions",
        json=body,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=300,
    )
    if response.status_code != 200:
        status = response.status_code
        raise LexloraError(f"{model}: the endpoint answered {status}: {response.text}")
    data = response.json()
    return Sample(prompt, data["choices"][0]["text"], int(data["usage"]["completion_tokens"]))


def greedy(model: Any, tokenizer: Any, prompt: str, max_tokens: int, eos: set[int]) -> list[int]:
    """Greedy completion ids of ``prompt`` (the final EOS, if any, included): what the gateway's
    engines generate at temperature 0."""
    import torch
    from transformers import DynamicCache

    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    out: list[int] = []
    cache = DynamicCache()
    step = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(max_tokens):
            result = model(input_ids=step, cache=cache, use_cache=True)
            token = int(result.logits[0, -1].argmax())
            out.append(token)
            if token in eos:
                break
            step = torch.tensor([[token]])
    return out


def uncached_greedy(model: Any, tokenizer: Any, prompt: str, max_tokens: int, eos: set[int]):
    """:func:`greedy` by a whole forward pass per token, without a cache: PEFT's own forward
    for prompt tuning (its virtual tokens prepended each pass) and new tokens. PEFT's cached
    ``generate`` of a prompt-tuned tiny model was seen to flip a near tie (a 1e-3 logit gap)
    that this and the embedded engine agree on."""
    import torch

    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_tokens):
            token = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(token)
            if token in eos:
                break
    return out


def offline(
    base_path: str, adapters: dict[str, Path], prompts: list[str], max_tokens: int
) -> dict[str | None, list[tuple[str, int]]]:
    """``{adapter key or None (base): [(text, completion tokens) per prompt]}`` with HF + PEFT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lexlora.serve.engines.embedded import eos_token_ids

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval()
    eos = eos_token_ids(model, tokenizer)

    def run(m: Any, tok: Any = tokenizer, solve=greedy) -> list[tuple[str, int]]:
        rows = []
        for prompt in prompts:
            ids = solve(m, tok, prompt, max_tokens, eos)
            text_ids = ids[:-1] if ids and ids[-1] in eos else ids
            text = tok.decode(
                text_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            rows.append((text, len(ids)))
        return rows

    results: dict[str | None, list[tuple[str, int]]] = {None: run(model)}
    for key, path in adapters.items():
        if adapter_method(path) != "lora":  # its own vocabulary or virtual tokens: PEFT's forward
            adapted, adapted_tokenizer = load_adapted(base_path, path)
            results[key] = run(adapted, adapted_tokenizer, uncached_greedy)
            continue
        peft = PeftModel.from_pretrained(model, str(path), is_trainable=False).eval()
        results[key] = run(peft)
        model = peft.unload()  # back to the plain base for the next adapter
    return results


def run_verify(
    endpoint: str,
    api_key: str,
    *,
    models: list[str] | None = None,
    store: Path | None = None,
    config: Path | None = None,
    base: str | None = None,
    tenant: str | None = None,
    max_tokens: int = 16,
    prompts: list[str] | None = None,
    concurrency: int = 4,
) -> list[ModelCheck]:
    """Compare every model in ``models`` (default: the base and each adapter's latest) served at
    ``endpoint`` with HF + PEFT offline."""
    from lexlora.models import resolve_base_model
    from lexlora.registry import AdapterStore

    endpoint = endpoint.rstrip("/")
    cfg = None
    if config is not None:
        from lexlora.serve.config import load_config

        cfg = load_config(config)
        base = base or cfg.base_model
        store = store or cfg.store
        tenant = tenant or _tenant_of(cfg, api_key)
    base_id, listed = served_models(endpoint, api_key)
    if models is None:
        models = [base_id] + [m for m in listed[1:] if ":" not in m and "@" not in m]
    prompts = list(prompts or PROMPTS)
    adapter_store = AdapterStore(store)
    checks: list[ModelCheck] = []
    paths: dict[str, Path] = {}
    for model in models:
        if model == base_id:
            checks.append(ModelCheck(model, "base"))
            continue
        if tenant is None:
            raise LexloraError(
                f"model {model!r} is an adapter: give --tenant, or --config to find the tenant"
            )
        av = adapter_store.resolve(tenant, model)
        checks.append(ModelCheck(model, f"{av.name}:{av.version}"))
        paths[f"{av.name}:{av.version}"] = av.path
        if base is None:
            base = av.base_model
    if base is None:
        raise LexloraError("the base model is unknown: give --base or --config")
    base_path = resolve_base_model(base)

    jobs = [(check, prompt) for prompt in prompts for check in checks]  # interleaved models

    def send(job: tuple[ModelCheck, str]) -> Sample:
        return complete(endpoint, api_key, job[0].model, job[1], max_tokens)

    with concurrent.futures.ThreadPoolExecutor(max(1, concurrency)) as pool:
        served = list(pool.map(send, jobs))
    for (check, _), sample in zip(jobs, served, strict=True):
        check.samples.append(sample)
    reference = offline(base_path, paths, prompts, max_tokens)
    for check in checks:
        rows = reference[None if check.target == "base" else check.target]
        for sample, (text, count) in zip(check.samples, rows, strict=True):
            sample.offline_text, sample.offline_tokens = text, count
    return checks
