"""Trainer callbacks: metrics file, progress bar with tokens/s, the last step's loss, and
Ctrl-C → checkpoint → exit."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from rich.console import Console
from transformers import TrainerCallback

from lexlora.io import atomic_write
from lexlora.progress import Bar


class MetricsFileCallback(TrainerCallback):
    """Append every log (train loss, eval loss, learning rate, tokens seen) to ``metrics.jsonl``.

    On a resume, the rows logged after the checkpoint's step go first (and a last row a crash
    cut short): those steps run again and log again, so each step keeps one row of each kind.
    """

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if _step(line) <= state.global_step]
        if len(kept) < len(lines):
            with atomic_write(self.path) as f:
                f.writelines(kept)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        row["num_input_tokens_seen"] = state.num_input_tokens_seen
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _step(line: str) -> float:
    """The step of a ``metrics.jsonl`` line; infinite for a line that is not a whole row."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return float("inf")
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) and line.endswith("\n") else float("inf")


class ProgressCallback(TrainerCallback):
    """Training progress (:class:`~lexlora.progress.Bar`): steps, last loss, tokens/s, time left."""

    def __init__(self, console: Console):
        self.console = console
        self.bar: Bar | None = None
        self.start = 0.0
        self.start_tokens = 0
        self.loss = float("nan")

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.bar = Bar(
            "train",
            state.max_steps,
            console=self.console,
            template="loss {loss:.4f}  {tps:.0f} tok/s",
            transient=False,
            loss=self.loss,
            tps=0.0,
        )
        self.bar.update(completed=state.global_step)
        self.start, self.start_tokens = time.time(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        elapsed = max(time.time() - self.start, 1e-6)
        tps = (state.num_input_tokens_seen - self.start_tokens) / elapsed
        self.bar.update(completed=state.global_step, loss=self.loss, tps=tps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            self.loss = logs.get("loss", self.loss)
            self.bar.update(loss=self.loss)
            if "eval_loss" in logs:
                self.bar.print(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LastStepLogCallback(TrainerCallback):
    """Log the training loss at the last step (``max_steps`` or Ctrl-C) even between
    ``logging_steps``, so every run records its final loss, however short."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps or control.should_training_stop:
            control.should_log = True


class InterruptCallback(TrainerCallback):
    """First Ctrl-C: finish the current step, save a checkpoint and stop. Second: abort."""

    def __init__(self):
        self.interrupted = False
        self._previous = None

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True
