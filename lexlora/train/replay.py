"""Self-distilled replay, a guard against forgetting: the base model's own answers to general
prompts, trained alongside the domain rows.

At training start, before the LoRA is attached, the base model answers every prompt of
``train.replay.prompts`` (greedy, up to ``max_new_tokens``, batched). The answers are cached in
``LEXLORA_HOME/replay/<sha256 of checkpoint, prompts and settings>.jsonl``, so a second run reads
them instead of generating. ``ratio`` of the training rows are then replay chat pairs (a seeded
choice, repeated when there are fewer prompts than needed), trained like any pair: loss on the
answer. No outside data and no teacher: what the adapter is pulled back towards is the base
model's own behaviour on everyday requests.

An answer cut off at ``max_new_tokens`` is shortened to its last full sentence, when it has one,
so that the adapter does not learn to stop mid-sentence.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import GenerationConfig

from lexlora.artifacts.pairs import Pair, make_pair
from lexlora.config_errors import validated
from lexlora.errors import LexloraError
from lexlora.home import lexlora_home
from lexlora.io import dumps_canonical, read_jsonl, sha256_file, sha256_text, write_jsonl
from lexlora.progress import Log
from lexlora.recipe import REPO_ROOT, Recipe, ReplayConfig
from lexlora.train.model_setup import LoadedBase

BUILDER = "replay"
FIELD = "train.replay.prompts"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


class ReplayPrompt(BaseModel):
    """One line of a replay prompts file."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", max_length=80)
    prompt: str = Field(min_length=1, max_length=4000)


@dataclass(frozen=True)
class ReplayAnswer:
    id: str
    prompt: str
    answer: str
    finished: bool  # the model stopped by itself within max_new_tokens


def replay_pairs(recipe: Recipe, base: LoadedBase, n_train: int, log: Log = print) -> list[Pair]:
    """The replay pairs to add to ``n_train`` training rows (none when ``ratio`` is 0): the base
    model's cached or freshly generated answers. Call before the LoRA is attached."""
    cfg = recipe.train.replay
    if cfg.ratio == 0:
        return []
    path, prompts = load_prompts(cfg.prompts)
    cache = lexlora_home() / "replay" / f"{cache_key(base, path, cfg)}.jsonl"
    answers = read_cache(cache, prompts)
    if answers is not None:
        how = f"read {len(answers)} base-model answers from the cache {cache}"
    else:
        started = time.monotonic()
        answers = generate_answers(base, prompts, cfg.max_new_tokens, cfg.batch_size)
        write_jsonl(cache, (asdict(a) for a in answers))
        seconds = time.monotonic() - started
        how = f"wrote {len(answers)} base-model answers ({seconds:.0f} s) to {cache}"
    pairs = [
        make_pair("", a.prompt, a.answer, doc_id=a.id, builder=BUILDER, span=(0, 0), task=BUILDER)
        for a in answers
        if a.answer
    ]
    mixed = mix(pairs, replay_count(cfg.ratio, n_train), recipe.train.seed)
    log(
        f"replay: {how}; {len(mixed)} replay pairs mixed into {n_train} training rows "
        f"(train.replay.ratio={cfg.ratio:g})"
    )
    return mixed


def load_prompts(name: str) -> tuple[Path, list[ReplayPrompt]]:
    """The prompts file (relative paths: from the working directory, then the repository), read
    and validated; every mistake is one line naming the field, the file and the line."""
    path = Path(name).expanduser()
    if not path.is_absolute() and not path.is_file():
        path = REPO_ROOT / path
    if not path.is_file():
        raise LexloraError(f"{FIELD}: {name} not found (a JSONL file of {{id, prompt}} lines)")
    prompts: list[ReplayPrompt] = []
    seen: set[str] = set()
    try:
        rows = list(read_jsonl(path))
    except LexloraError as exc:  # not JSON lines: say which recipe field named the file
        raise LexloraError(f"{FIELD}: {exc}") from None
    for n, row in enumerate(rows, 1):
        prompt = validated(ReplayPrompt, row, f"{FIELD}: {path}:{n}")
        if prompt.id in seen:
            raise LexloraError(f"{FIELD}: {path}:{n}: duplicate id '{prompt.id}'")
        seen.add(prompt.id)
        prompts.append(prompt)
    if not prompts:
        raise LexloraError(f"{FIELD}: {path} has no prompts")
    return path, prompts


def cache_key(base: LoadedBase, prompts_file: Path, cfg: ReplayConfig) -> str:
    """sha256 of what the answers depend on: the checkpoint (path, or hub id and revision, and
    its weight files' sizes and times), chat template, precision, prompts and settings."""
    return sha256_text(
        dumps_canonical(
            {
                "checkpoint": checkpoint_id(base),
                "chat_template": sha256_text(str(base.tokenizer.chat_template)),
                "precision": [base.description, str(base.model.dtype)],
                "prompts": sha256_file(prompts_file),
                "max_new_tokens": cfg.max_new_tokens,
                "batch_size": cfg.batch_size,  # padding changes greedy outputs in the last bits
            }
        )
    )


def checkpoint_id(base: LoadedBase) -> dict[str, Any]:
    folder = Path(base.path)
    if not folder.is_dir():  # a hub id
        return {"hub_id": base.path, "revision": getattr(base.model.config, "_commit_hash", None)}
    weights = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    stats = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights]
    return {"path": str(folder.resolve()), "weights": stats}


def read_cache(path: Path, prompts: list[ReplayPrompt]) -> list[ReplayAnswer] | None:
    """The cached answers to exactly ``prompts``, or None (no cache, or one that does not fit)."""
    if not path.is_file():
        return None
    try:
        answers = [ReplayAnswer(**row) for row in read_jsonl(path)]
    except (LexloraError, TypeError):
        return None
    if [(a.id, a.prompt) for a in answers] != [(p.id, p.prompt) for p in prompts]:
        return None
    return answers


@torch.no_grad()
def generate_answers(
    base: LoadedBase, prompts: list[ReplayPrompt], max_new_tokens: int, batch_size: int
) -> list[ReplayAnswer]:
    """The base model's greedy answer to each prompt (a user message, the chat template's
    generation prompt), ``batch_size`` prompts per ``generate`` call."""
    model, tokenizer = base.model, base.tokenizer
    stop = _stop_ids(model, tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(stop),
        pad_token_id=tokenizer.pad_token_id,
    )
    device = next(model.parameters()).device
    side, training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    answers = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            batch = tokenizer.apply_chat_template(
                [[{"role": "user", "content": p.prompt}] for p in chunk],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                padding=True,
                return_tensors="pt",
            ).to(device)
            out = model.generate(**batch, generation_config=config)
            new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()
            for prompt, ids in zip(chunk, new_tokens, strict=True):
                ends = [i for i, token in enumerate(ids) if token in stop]
                finished = bool(ends)
                text = tokenizer.decode(ids[: ends[0]] if ends else ids, skip_special_tokens=True)
                answer = text.strip() if finished else last_full_sentences(text.strip())
                answers.append(ReplayAnswer(prompt.id, prompt.prompt, answer, finished))
    finally:
        tokenizer.padding_side = side
        model.train(training)
    return answers


def last_full_sentences(text: str) -> str:
    """``text`` up to its last sentence end, or all of it when it has none."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()] if ends else text


def replay_count(ratio: float, n_train: int) -> int:
    """Replay rows so that they are ``ratio`` of all training rows (domain + replay)."""
    return round(ratio * n_train / (1 - ratio)) if ratio > 0 else 0


def mix(pairs: list[Pair], count: int, seed: int) -> list[Pair]:
    """``count`` replay pairs: each pair ``count // len(pairs)`` times, plus a seeded sample."""
    if not pairs or count <= 0:
        return []
    whole, extra = divmod(count, len(pairs))
    rng = random.Random(f"{seed}:{BUILDER}")
    keep = set(rng.sample(range(len(pairs)), extra))
    return [p for i, p in enumerate(pairs) for _ in range(whole + (i in keep))]


def _stop_ids(model, tokenizer) -> set[int]:
    """The end-of-turn ids: the generation config's and the tokenizer's EOS."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {i for i in ids if i is not None}
