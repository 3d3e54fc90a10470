"""``lexlora export RUN_DIR``: validate, scale, combine, publish and merge, top to bottom.

1. read the run's recipe and final adapter; check the serving limits;
2. load the base in full precision (a run trained on a 4-bit base is exported onto the
   full-precision base: merging into 4-bit weights would lose precision);
3. optionally combine with other adapters (PEFT ``add_weighted_adapter``) and bake a strength;
4. check on a probe prompt that the result changes the base model's output;
5. publish it to the adapter store; optionally write a merged full model.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lexlora.adapter_methods import load_adapted
from lexlora.artifacts.adapter import (
    ENGINES,
    AdapterFolder,
    base_config_hash,
    check_serving_limits,
    has_new_tokens,
    read_adapter,
    read_new_tokens,
)
from lexlora.artifacts.gate import GATE_FILE, GateVerdict
from lexlora.artifacts.run import TrainSummary
from lexlora.errors import LexloraError
from lexlora.export.validate import (
    PROBE_PROMPT,
    check_changes_output,
    check_targets_exist,
    probe_logits,
)
from lexlora.io import atomic_directory, check_directory_target
from lexlora.models import resolve_base_model
from lexlora.progress import Log
from lexlora.quiet import quiet_libraries
from lexlora.recipe import Recipe, validate_recipe
from lexlora.registry import AdapterStore, AdapterVersion, validate_name
from lexlora.yaml_files import read_yaml

COMBINE_METHODS = ("linear", "cat", "svd", "ties")
SAME_RANK_METHODS = ("linear", "ties")


@dataclass(frozen=True)
class CombinePart:
    ref: str  # "tenant/name[:version|@alias]" in the store, or an adapter folder
    weight: float


@dataclass
class ExportResult:
    published: AdapterVersion
    merged_dir: Path | None
    probe_change: float


def parse_combine(spec: str) -> CombinePart:
    """``acme/contracts:2:0.4`` → ref ``acme/contracts:2``, weight 0.4 (the last ``:`` part)."""
    ref, sep, weight = spec.rpartition(":")
    try:
        value = float(weight)
    except ValueError:
        value = None
    if not sep or not ref or value is None or not math.isfinite(value):
        raise LexloraError(f"--combine {spec!r}: expected REF:WEIGHT, e.g. acme/contracts:1:0.4")
    return CombinePart(ref, value)


def load_run(run_dir: Path) -> tuple[Recipe, AdapterFolder]:
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.is_file():
        raise LexloraError(f"{run_dir}: not a lexlora run folder (no recipe.yaml)")
    recipe = validate_recipe(read_yaml(recipe_file, "run's recipe"), source=str(recipe_file))
    if not (run_dir / "adapter").is_dir():
        raise LexloraError(f"{run_dir}: the run has no adapter/ (unfinished or interrupted run)")
    return recipe, read_adapter(run_dir / "adapter")


def export_run(
    run_dir: Path,
    tenant: str,
    name: str,
    *,
    store: AdapterStore,
    version: int | None = None,
    scale: float = 1.0,
    weight: float = 1.0,
    combine: list[CombinePart] | None = None,
    combine_method: str = "linear",
    merge_dir: Path | None = None,
    overwrite: bool = False,
    max_rank: int | None = None,
    force: bool = False,
    log: Log = print,
) -> ExportResult:
    """Validate the run's adapter (optionally scaled, combined, merged) and publish it.

    A run flagged by the no-regression gate (``RUN_DIR/eval_gate.json``) is refused unless
    ``force``. ``merge_dir`` must be new, or a lexlora-made folder with ``overwrite``."""
    if merge_dir is not None:
        check_directory_target(merge_dir, replace=overwrite)
    validate_name("tenant", tenant)
    validate_name("adapter", name)
    quiet_libraries()
    recipe, adapter = load_run(run_dir)
    check_gate(run_dir, force, log)
    max_rank = max_rank or recipe.export.max_lora_rank
    if not (math.isfinite(scale) and scale > 0):  # NaN-safe: a NaN fails every comparison
        raise LexloraError(
            f"--scale {scale}: expected a finite number > 0 (scale 0 is the base model: serve "
            "the base)"
        )
    for what, value in [("--weight", weight), *(("--combine", p.weight) for p in combine or [])]:
        if not math.isfinite(value):
            raise LexloraError(f"{what} {value}: expected a finite number")
    if combine_method not in COMBINE_METHODS:
        raise LexloraError(f"--combine-method {combine_method!r}: expected {COMBINE_METHODS}")
    check_serving_limits(adapter, max_rank)
    if adapter.method != "lora":
        return _export_other_method(
            run_dir, recipe, adapter, tenant, name, store, version, (scale, combine, merge_dir), log
        )

    base_path = resolve_base_model(recipe.model.base)
    if recipe.model.quantization != "none":
        log("export: loading the base in full precision (the run may have used a 4-bit base)")
    model, tokenizer = load_full_precision(base_path)
    check_targets_exist(adapter, model)
    base_hash = base_config_hash(base_path)
    base_logits = probe_logits(model, tokenizer)

    with peft_loading(adapter.folder):
        peft_model = PeftModel.from_pretrained(model, str(adapter.folder), adapter_name="trained")
    final = "trained"
    parts = combine or []
    if parts:
        final = _combine(
            peft_model, adapter, parts, weight, combine_method, store, base_hash, max_rank
        )
    if scale != 1.0:
        bake_scale(peft_model, final, scale)
    peft_model.set_adapter(final)
    peft_model.eval()
    change = check_changes_output(base_logits, probe_logits(peft_model, tokenizer), run_dir)

    with tempfile.TemporaryDirectory(prefix="lexlora-export-") as tmp:
        peft_model.save_pretrained(tmp, selected_adapters=[final], safe_serialization=True)
        saved = Path(tmp) / final if (Path(tmp) / final).is_dir() else Path(tmp)
        exported = read_adapter(saved)
        check_serving_limits(exported, max_rank)
        metadata = _metadata(recipe, run_dir, exported, base_path, base_hash, scale, change)
        if parts:
            metadata["combination"] = {
                "method": combine_method,
                "parts": [{"ref": str(run_dir), "weight": weight}]
                + [{"ref": p.ref, "weight": p.weight} for p in parts],
            }
        published = store.publish(tenant, name, saved, metadata, version=version)
    log(f"published {published.ref} → {published.path}")

    merged = None
    if merge_dir is not None:
        merged = merge_into(peft_model, final, tokenizer, merge_dir, replace=overwrite)
        log(f"merged model → {merged}")
    return ExportResult(published, merged, change)


def _export_other_method(
    run_dir, recipe, adapter, tenant, name, store, version, lora_only, log
) -> ExportResult:
    """Publish a prompt-tuning or new-token adapter as trained (its files, tokenizer and
    ``new_tokens.json`` included) after the probe check; strength, combination and merging are
    LoRA operations and are refused for it."""
    scale, combine, merge_dir = lora_only
    if scale != 1.0 or combine or merge_dir is not None:
        option = "--scale" if scale != 1.0 else "--combine" if combine else "--merge"
        raise LexloraError(
            f"{option}: {run_dir} holds a {adapter.method} adapter; only LoRA adapters can be "
            "scaled, combined or merged"
        )
    base_path = resolve_base_model(recipe.model.base)
    model, tokenizer = load_full_precision(base_path)
    prompt = PROBE_PROMPT
    if has_new_tokens(adapter.method):  # the new rows act only where their terms occur
        prompt += " Terms: " + ", ".join(read_new_tokens(adapter.folder)["terms"])
    base_logits = probe_logits(model, tokenizer, prompt)[:, -1]
    with peft_loading(adapter.folder):
        adapted, adapted_tokenizer = load_adapted(base_path, adapter.folder)
    adapted_logits = probe_logits(adapted, adapted_tokenizer, prompt)[:, -1]
    change = check_changes_output(base_logits, adapted_logits[:, : base_logits.shape[-1]], run_dir)
    base_hash = base_config_hash(base_path)
    keep = shutil.ignore_patterns(".lexlora-made", "README.md")
    with tempfile.TemporaryDirectory(prefix="lexlora-export-") as tmp:
        saved = Path(tmp) / "adapter"
        shutil.copytree(adapter.folder, saved, ignore=keep)
        exported = read_adapter(saved)
        metadata = _metadata(recipe, run_dir, exported, base_path, base_hash, scale, change)
        published = store.publish(tenant, name, saved, metadata, version=version)
    log(f"published {published.ref} ({adapter.method}) → {published.path}")
    return ExportResult(published, None, change)


@contextmanager
def peft_loading(folder: Path) -> Iterator[None]:
    """Turn what PEFT raises on an adapter folder it cannot load into one LexloraError (the
    folder passed :func:`read_adapter`; this covers the config fields lexlora does not read)."""
    try:
        yield
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise LexloraError(f"{folder}: PEFT cannot load this adapter ({first})") from None


def load_full_precision(base_path: str) -> tuple[Any, Any]:
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    if cuda:
        model = model.to("cuda")
    model.eval()
    return model, AutoTokenizer.from_pretrained(base_path)


def bake_scale(model: PeftModel, adapter_name: str, scale: float) -> None:
    """Multiply the adapter's B matrices by ``scale``: ΔW = scale · B·A·(alpha/r) exactly as PEFT's
    run-time ``rescale_adapter_scale(model, scale)`` computes it."""
    with torch.no_grad():
        for module in model.modules():
            lora_b = getattr(module, "lora_B", None)
            if lora_b is not None and adapter_name in lora_b:
                lora_b[adapter_name].weight.mul_(scale)


def _combine(model, adapter, parts, weight, method, store, base_hash, max_rank) -> str:
    names, weights = ["trained"], [weight]
    sum_ranks = adapter.rank
    for i, part in enumerate(parts):
        folder, part_hash = _resolve_part(part.ref, store)
        other = read_adapter(folder)
        if part_hash is not None and part_hash != base_hash:
            raise LexloraError(f"--combine {part.ref}: adapter for another base model")
        if method in SAME_RANK_METHODS and other.rank != adapter.rank:
            raise LexloraError(
                f"--combine {part.ref}: rank {other.rank} differs from the run's rank "
                f"{adapter.rank}; '{method}' needs equal ranks (use --combine-method cat or svd)"
            )
        check_targets_exist(other, model)
        sum_ranks += other.rank
        with peft_loading(folder):
            model.load_adapter(str(folder), adapter_name=f"part{i}")
        names.append(f"part{i}")
        weights.append(part.weight)
    if method == "cat" and sum_ranks > max_rank:
        raise LexloraError(
            f"--combine-method cat: the combined adapter would have rank {sum_ranks} (the sum of "
            f"the ranks), above export.max_lora_rank={max_rank}; use linear or svd, or raise "
            "--max-lora-rank"
        )
    extra = {"density": 0.5} if method == "ties" else {}
    model.add_weighted_adapter(names, weights, "combined", combination_type=method, **extra)
    for name in names:
        model.delete_adapter(name)
    return "combined"


def _resolve_part(ref: str, store: AdapterStore) -> tuple[Path, str | None]:
    """An adapter folder and, for published adapters, the base config hash they recorded."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return (path / "adapter" if (path / "adapter").is_dir() else path), None
    tenant, sep, rest = ref.partition("/")
    if not sep:
        raise LexloraError(f"--combine {ref!r}: not a folder nor a TENANT/NAME[:VERSION] ref")
    published = store.resolve(tenant, rest)
    return published.path, published.base_config_hash


def _metadata(recipe, run_dir, exported, base_path, base_hash, scale, change) -> dict:
    loaded = TrainSummary.load(run_dir)
    summary = loaded.model_dump() if loaded is not None else {}
    return {
        "base_model": recipe.model.base,
        "base_model_path": base_path,
        "base_config_hash": base_hash,
        "method": exported.method,
        "engines": list(ENGINES[exported.method]),
        "rank": exported.rank,
        "lora_alpha": exported.config.get("lora_alpha"),
        "target_modules": exported.target_modules,
        "recipe": recipe.name,
        "recipe_hash": recipe.hash(),
        "run_id": run_dir.name,
        "run_dir": str(run_dir.resolve()),
        "strength": scale,
        "probe_logit_change": round(change, 6),
        "eval": {
            "eval_loss_base": summary.get("eval_loss_base"),
            "eval_loss_adapter": summary.get("eval_loss_adapter"),
        },
    }


def merge_into(model: PeftModel, adapter_name: str, tokenizer, out: Path, replace=False) -> Path:
    """Merge the adapter into the full-precision base and save it (safetensors), atomically."""
    merged = model.merge_and_unload(adapter_names=[adapter_name])
    with atomic_directory(out, replace=replace) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out


def check_gate(run_dir: Path, force: bool, log: Log = print) -> None:
    """Refuse (unless ``force``) to publish a run the gate flagged; warn when never evaluated."""
    verdict = GateVerdict.load(run_dir)
    if verdict is None:
        log(
            f"warning: {run_dir} has no held-out evaluation (no {GATE_FILE}); run "
            f"`lexlora eval RECIPE --run {run_dir}` to check it for regressions"
        )
        return
    if not verdict.flagged:
        return
    worst = verdict.flagged[0].describe()
    if not force:
        n = len(verdict.flagged)
        raise LexloraError(
            f"{run_dir}: the no-regression gate flagged {n} task "
            f"famil{'y' if n == 1 else 'ies'} ({worst}); see {verdict.report}; "
            "pass --force to publish anyway"
        )
    log(f"warning: publishing a run the gate flagged ({worst}) because of --force")
