"""``lexlora train RECIPE``: fit a LoRA adapter with TRL's SFTTrainer, reading top to bottom.

1. data: build ``data/RECIPE`` if missing or stale;
2. model: resolve the base, load it (4-bit NF4 on CUDA with ``quantization: auto``, full
   precision on CPU) and say which;
3. LoRA: a new adapter on ``lora.target_modules``, or continue ``train.init_adapter``;
4. train with SFTTrainer on chat pairs (loss on the answer), reading rows (loss on every token)
   and, with ``train.replay``, the base model's own answers to general prompts (generated in
   step 2, before the LoRA; cached), packed; checkpointing; Ctrl-C saves and stops;
5. evaluate the adapter and the base model on the held-out validation pairs;
6. write ``adapter/`` atomically and ``summary.json``.
"""

from __future__ import annotations

import hashlib
import math
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from rich.console import Console
from transformers import EarlyStoppingCallback
from transformers.trainer_callback import PrinterCallback
from trl import SFTConfig, SFTTrainer

from lexlora.artifacts.adapter import write_new_tokens
from lexlora.artifacts.run import TrainSummary, latest_run_dir
from lexlora.errors import LexloraError
from lexlora.io import atomic_directory
from lexlora.quiet import quiet_libraries
from lexlora.recipe import Recipe
from lexlora.train.callbacks import (
    InterruptCallback,
    LastStepLogCallback,
    MetricsFileCallback,
    ProgressCallback,
)
from lexlora.train.dataset import ensure_dataset, read_pairs, tokenized_dataset
from lexlora.train.loss_positions import score_labelled_positions_only
from lexlora.train.memory import check_max_length
from lexlora.train.methods import add_new_terms
from lexlora.train.model_setup import LoadedBase, load_base, prepare_for_training
from lexlora.train.replay import replay_pairs
from lexlora.train.run_dir import latest_checkpoint, starting_run


@dataclass
class TrainingSession:
    """Everything :func:`run_training` needs; built by :func:`setup_training`."""

    recipe: Recipe
    trainer: SFTTrainer
    run_dir: Path
    base: LoadedBase
    checkpoint: Path | None
    interrupt: InterruptCallback
    terms: list[str]
    state: PartialState
    started: float


def train(recipe: Recipe, resume: bool = False, console: Console | None = None) -> TrainSummary:
    """Train the recipe's adapter (or resume its newest run) and return the summary."""
    return run_training(setup_training(recipe, resume, console or Console()))


def setup_training(recipe: Recipe, resume: bool, console: Console) -> TrainingSession:
    """Data, base model, LoRA and an SFTTrainer; validates all input before creating the run,
    and a run that fails to start leaves no folder behind."""
    quiet_libraries()
    started = time.time()
    # One process, or one rank of `accelerate launch` (gloo when there is no CUDA device).
    state = PartialState(cpu=not torch.cuda.is_available())
    resumed = checkpoint = None
    if resume:
        resumed = latest_run_dir(recipe)
        checkpoint = latest_checkpoint(resumed, log=console.print)
        console.print(f"resuming {resumed} from {checkpoint.name}")
    check_max_length(recipe, cuda=torch.cuda.is_available())

    with state.main_process_first():
        data_dir = ensure_dataset(recipe, log=console.print)
    base = load_base(recipe)
    console.print(f"model: {recipe.model.base} → {base.description}")
    if not base.cuda and not base.quantized:
        console.print("no CUDA GPU: training on the CPU in full precision (float32)")

    t = recipe.train
    train_rows = read_pairs(data_dir, "train")
    if len(train_rows) < t.batch_size:
        raise LexloraError(
            f"train.batch_size={t.batch_size} is larger than the {len(train_rows)} training pairs"
        )
    with state.main_process_first():  # the base model answers, before the LoRA is attached
        replay = replay_pairs(recipe, base, len(train_rows), log=console.print)
    terms = add_new_terms(recipe, base.model, base.tokenizer, train_rows)
    if terms:
        console.print(
            f"adapter: {len(terms)} new tokens: {', '.join(terms[:8])}"
            + (" …" if len(terms) > 8 else "")
        )
    token_ids = base.tokenizer.convert_tokens_to_ids(terms) if terms else []
    model, peft_config = prepare_for_training(base, recipe, token_ids)
    if recipe.adapter.method == "prompt_tuning" and recipe.train.packing:
        console.print("adapter: prompt tuning trains on unpacked rows (train.packing is ignored)")
    train_data = tokenized_dataset([*train_rows, *replay], base.tokenizer)
    eval_data = tokenized_dataset(
        read_pairs(data_dir, "validation"), base.tokenizer, limit=t.max_eval_samples, seed=t.seed
    )
    cut = sum(len(ids) > t.max_length for ids in train_data["input_ids"])
    if cut:
        console.print(
            f"train: {cut} of {len(train_data)} training rows are longer than "
            f"train.max_length={t.max_length} and are cut to it"
        )

    score_labelled_positions_only()
    interrupt = InterruptCallback()
    with _run_folder(recipe, data_dir, state, resumed) as run_dir:
        console.print(f"run: {run_dir}")
        trainer = SFTTrainer(
            model=model,
            args=sft_config(recipe, run_dir, base),
            train_dataset=train_data,
            eval_dataset=eval_data,
            processing_class=base.tokenizer,
            peft_config=peft_config,
            callbacks=_callbacks(recipe, run_dir, console, interrupt),
        )
    trainer.remove_callback(PrinterCallback)
    return TrainingSession(
        recipe, trainer, run_dir, base, checkpoint, interrupt, terms, state, started
    )


def run_training(session: TrainingSession) -> TrainSummary:
    """Train (Ctrl-C saves a checkpoint and stops), evaluate adapter and base, save the adapter."""
    trainer, run_dir, state = session.trainer, session.run_dir, session.state
    session.interrupt.install()
    try:
        checkpoint = session.checkpoint
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        session.interrupt.uninstall()
    if session.interrupt.interrupted:
        return _summary(session, None, None, None)

    adapter_metrics = _final_eval(trainer) or trainer.evaluate()
    with trainer.model.disable_adapter():
        base_metrics = trainer.evaluate(metric_key_prefix="base")
    checksums = gather_object([lora_checksum(trainer.model)])
    adapter_dir = run_dir / "adapter"
    if state.is_main_process:
        save_adapter(trainer, adapter_dir, session)
    state.wait_for_everyone()
    summary = _summary(
        session, adapter_dir, base_metrics.get("base_loss"), adapter_metrics.get("eval_loss")
    )
    summary.rank_checksums = checksums
    if state.is_main_process:
        summary.save()
    return summary


def _final_eval(trainer: SFTTrainer) -> dict | None:
    """The evaluation the trainer already ran at the last step, if it did (no need to repeat it)."""
    if trainer.args.load_best_model_at_end:  # the best checkpoint was reloaded: evaluate it
        return None
    for row in reversed(trainer.state.log_history):
        if "eval_loss" in row and row.get("step") == trainer.state.global_step:
            return row
    return None


@contextmanager
def _run_folder(
    recipe: Recipe, data_dir: Path, state: PartialState, resumed: Path | None
) -> Iterator[Path]:
    """The run folder to set up in: the resumed one, or a new one the main process creates (and
    removes again if the setup fails); other ranks receive its name."""
    if resumed is not None:
        yield resumed
        return
    if not state.is_main_process:
        names = [None]
        broadcast_object_list(names)
        yield Path(names[0])
        return
    with starting_run(recipe, data_dir) as run_dir:
        if state.num_processes > 1:
            broadcast_object_list([str(run_dir)])
        yield run_dir


def lora_checksum(model) -> str:
    """sha256 over the LoRA parameters: equal on every rank when data-parallel replicas agree."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if "lora_" in name:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def sft_config(recipe: Recipe, run_dir: Path, base: LoadedBase) -> SFTConfig:
    t = recipe.train
    gradient_checkpointing = t.gradient_checkpointing
    if gradient_checkpointing is None:
        gradient_checkpointing = base.quantized
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    early_stopping = t.early_stopping_patience is not None
    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        max_length=t.max_length,
        packing=t.packing and recipe.adapter.method != "prompt_tuning",
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        logging_steps=t.logging_steps,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False if early_stopping else None,
        seed=t.seed,
        data_seed=t.seed,
        bf16=base.cuda and torch.cuda.is_bf16_supported(),
        fp16=False,
        use_cpu=not base.cuda,
        activation_checkpointing=gradient_checkpointing,
        optim="paged_adamw_8bit" if base.quantized and base.cuda else "adamw_torch",
        report_to=["tensorboard"],
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _callbacks(recipe, run_dir, console, interrupt) -> list:
    callbacks = [MetricsFileCallback(run_dir / "metrics.jsonl"), ProgressCallback(console)]
    if recipe.train.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(recipe.train.early_stopping_patience))
    return [*callbacks, interrupt, LastStepLogCallback()]  # the last sees the interrupt's stop


def save_adapter(trainer: SFTTrainer, target: Path, session: TrainingSession) -> Path:
    """Write the final adapter (``adapter_model.safetensors`` + config) atomically; a new-token
    adapter also gets its tokenizer and ``new_tokens.json`` (its weights: the new rows only)."""
    with atomic_directory(target, replace=True) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        if session.terms:
            tokenizer = session.base.tokenizer
            ids = tokenizer.convert_tokens_to_ids(session.terms)
            tokenizer.save_pretrained(tmp)
            write_new_tokens(tmp, session.terms, ids, len(tokenizer) - len(session.terms))
    return target


def _summary(session: TrainingSession, adapter_dir, base_loss, adapter_loss) -> TrainSummary:
    trainer, base = session.trainer, session.base
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if base.cuda else None
    return TrainSummary(
        run_dir=str(session.run_dir),
        adapter_dir=str(adapter_dir) if adapter_dir else None,
        interrupted=adapter_dir is None,
        steps=trainer.state.global_step,
        train_loss_first=losses[0] if losses else None,
        train_loss_last=losses[-1] if losses else None,
        eval_loss_base=_finite(base_loss),
        eval_loss_adapter=_finite(adapter_loss),
        tokens_seen=int(trainer.state.num_input_tokens_seen),
        wall_seconds=round(time.time() - session.started, 1),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        peak_cuda_mb=round(peak_cuda, 1) if peak_cuda is not None else None,
        precision=base.description,
        method=session.recipe.adapter.method,
        trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
