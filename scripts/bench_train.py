"""Benchmark training throughput: a plain TRL script vs lexlora's trainer, same data and model.

Three configurations, each in its own process (so peak RSS is its own), for the same number of
optimizer steps on the recipe's training pairs:

- ``trl-baseline``: what one writes by hand: ``SFTTrainer(model=path, train_dataset=messages,
  peft_config=LoraConfig(q_proj, v_proj))`` with TRL's defaults (no packing);
- ``lexlora``: lexlora's trainer with ``train.packing=false``;
- ``lexlora-packed``: lexlora's trainer with packing (the recipe default);
- ``lexlora-packed-all-positions``: the same, with TRL's own choice on a CPU of projecting every
  position onto the vocabulary in the loss (lexlora projects only the labelled ones,
  ``lexlora/train/loss_positions.py``): the speed-up of that one change, same data and steps.

Tokens are counted in the data collator: all tokens in the batch (padding included) and effective
(non-padding) tokens. Prints a table with the ratios to the baseline and writes
reports/bench/bench_train.json. Targets (issue 3): lexlora ≥ 1.0x the baseline's tokens/s unpacked,
≥ 1.5x its effective tokens/s with packing.

    python scripts/bench_train.py [--recipe legal_contracts] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ("trl-baseline", "lexlora", "lexlora-packed", "lexlora-packed-all-positions")


class TokenCounter:
    """Wraps a data collator; counts all and non-padding tokens of every batch it builds."""

    def __init__(self, collator):
        self.collator = collator
        self.total = 0
        self.effective = 0

    def __call__(self, examples):
        batch = self.collator(examples)
        ids = batch["input_ids"]
        self.total += ids.numel()
        mask = batch.get("attention_mask")
        self.effective += int(mask.sum()) if mask is not None else ids.numel()
        return batch


def measure(trainer, counter: TokenCounter) -> dict:
    trainer.data_collator = counter
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "steps": trainer.state.global_step,
        "tokens": counter.total,
        "effective_tokens": counter.effective,
        "tokens_per_s": round(counter.total / seconds, 1),
        "effective_tokens_per_s": round(counter.effective / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_baseline(recipe, steps: int, out: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from lexlora.io import read_jsonl
    from lexlora.models import resolve_base_model

    rows = read_jsonl(recipe.dataset_dir / "train.jsonl")
    # A hand-written TRL script trains chat messages; plain-text reading rows are left out.
    data = Dataset.from_list([{"messages": row["messages"]} for row in rows if "messages" in row])
    args = SFTConfig(
        output_dir=str(out),
        max_length=recipe.train.max_length,
        per_device_train_batch_size=recipe.train.batch_size,
        learning_rate=recipe.train.learning_rate,
        max_steps=steps,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=recipe.train.seed,
    )
    lora = LoraConfig(
        r=recipe.lora.rank,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=recipe.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    base = resolve_base_model(recipe.model.base)
    trainer = SFTTrainer(model=base, args=args, train_dataset=data, peft_config=lora)
    return measure(trainer, TokenCounter(trainer.data_collator))


def run_lexlora(recipe, steps: int, packing: bool, out: Path, all_positions: bool = False) -> dict:
    from rich.console import Console

    from lexlora.recipe import load_recipe
    from lexlora.train.trainer import setup_training

    recipe = load_recipe(
        recipe.name,
        [
            f"train.max_steps={steps}",
            f"train.packing={str(packing).lower()}",
            f"train.output_dir={out}",
            f"train.eval_steps={steps * 10}",
            f"train.save_steps={steps * 10}",
        ],
    )
    session = setup_training(recipe, resume=False, console=Console(quiet=True))
    if all_positions:  # undo lexlora's choice: TRL's own decision for this device
        import trl.kernels.chunked_logprob as chunked
        import trl.trainer.utils as trl_utils

        trl_utils._use_triton = chunked._use_triton
    trainer = session.trainer
    return measure(trainer, TokenCounter(trainer.data_collator))


def child(name: str, recipe_name: str, steps: int) -> None:
    from lexlora.quiet import quiet_libraries
    from lexlora.recipe import load_recipe
    from lexlora.train.dataset import ensure_dataset

    quiet_libraries()
    recipe = load_recipe(recipe_name)
    ensure_dataset(recipe)
    with tempfile.TemporaryDirectory() as tmp:
        if name == "trl-baseline":
            result = run_baseline(recipe, steps, Path(tmp))
        else:
            packed = name.startswith("lexlora-packed")
            all_positions = name == "lexlora-packed-all-positions"
            result = run_lexlora(recipe, steps, packed, Path(tmp), all_positions)
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="legal_contracts")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default="reports/bench/bench_train.json")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.recipe, args.steps)
        return

    from rich.console import Console
    from rich.table import Table

    from lexlora.io import write_json

    results = {}
    for name in CONFIGS:
        cmd = [sys.executable, __file__, "--child", name, "--recipe", args.recipe]
        proc = subprocess.run([*cmd, "--steps", str(args.steps)], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        results[name] = json.loads(line[len("RESULT ") :])
    base = results["trl-baseline"]
    for r in results.values():
        r["tokens_per_s_ratio"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
        r["effective_tokens_per_s_ratio"] = round(
            r["effective_tokens_per_s"] / base["effective_tokens_per_s"], 2
        )
    table = Table(
        "config",
        "steps",
        "tokens/s",
        "ratio",
        "effective tok/s",
        "ratio",
        "peak RSS MB",
        title=f"training throughput, {args.recipe}, {args.steps} steps",
    )
    for name, r in results.items():
        table.add_row(
            name,
            str(r["steps"]),
            f"{r['tokens_per_s']:.0f}",
            f"{r['tokens_per_s_ratio']:.2f}x",
            f"{r['effective_tokens_per_s']:.0f}",
            f"{r['effective_tokens_per_s_ratio']:.2f}x",
            f"{r['peak_rss_mb']:.0f}",
        )
    Console().print(table)
    summary = {
        "recipe": args.recipe,
        "steps": args.steps,
        "results": results,
        "targets": {
            "unpacked_tokens_per_s_ratio_min": 1.0,
            "packed_effective_tokens_per_s_ratio_min": 1.5,
        },
        "meets_targets": results["lexlora"]["tokens_per_s_ratio"] >= 1.0
        and results["lexlora-packed"]["effective_tokens_per_s_ratio"] >= 1.5,
    }
    write_json(Path(args.out), summary)


if __name__ == "__main__":
    main()
