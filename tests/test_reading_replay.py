"""Issue 13 (3, 4): reading-comprehension rows (trained on every token) next to chat pairs (trained
on the answer) in one packed dataset, and the base model's own answers to general prompts as
replay (greedy, cached, mixed at the recipe's ratio)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from support import folder_recipe, make_recipe

from lexlora.artifacts.pairs import Pair
from lexlora.data.build import build_dataset
from lexlora.data.builders.reading import TASK
from lexlora.data.clean import flatten
from lexlora.errors import LexloraError
from lexlora.io import read_jsonl
from lexlora.recipe import REPO_ROOT, validate_recipe
from lexlora.train.dataset import IGNORE, read_pairs, tokenized_dataset
from lexlora.train.model_setup import load_base
from lexlora.train.replay import (
    generate_answers,
    load_prompts,
    replay_count,
    replay_pairs,
)

READING = {"options": {"passage_chars": 400, "tasks_per_passage": 3}}


@pytest.fixture(autouse=True)
def lexlora_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("LEXLORA_HOME", str(home))
    return home


def write_prompts(path: Path, n: int = 6) -> Path:
    rows = [{"id": f"p{i}", "prompt": f"What is {i} plus {i}?"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def mixed_recipe(tmp: Path, model: Path, **train):
    """Chat builders, the reading builder and replay of 6 prompts at ratio 0.2."""
    replay = {"prompts": str(write_prompts(tmp / "prompts.jsonl")), "ratio": 0.2}
    replay |= {"max_new_tokens": 8, "batch_size": 4}
    builders = {"definitions": {}, "section_qa": {}, "reading": READING}
    return make_recipe(tmp, model, data={"builders": builders}, train={"replay": replay, **train})


def split_reading(text: str) -> tuple[str, list[tuple[str, str]]]:
    """A reading row → (its passage, its (question, answer) tasks)."""
    passage, *blocks = text.split("\n\nQuestion: ")
    tasks = [tuple(b.removesuffix("\n").split("\nAnswer: ", 1)) for b in blocks]
    return passage.split("\n\n", 1)[1], tasks


# --- the reading builder -------------------------------------------------------------------------


def test_reading_rows_are_passages_of_training_documents_with_tasks_answered_from_them(
    contract_folder, tmp_path
):
    builders = {
        "definitions": {},
        "reading": {
            "max_per_document": 3,
            "options": {"passage_chars": 400, "taxonomy": "commercial_contracts"},
        },
    }
    recipe = folder_recipe(contract_folder, tmp_path / "data", builders=builders)
    manifest = build_dataset(recipe)
    folder = recipe.dataset_dir
    splits = {d["id"]: d["split"] for d in read_jsonl(folder / "documents.jsonl")}
    texts = {d["id"]: d["text"] for d in read_jsonl(folder / "documents.jsonl")}

    counts = manifest.pairs.by_builder["reading"]
    assert counts["train"] > 0 and counts["validation"] == counts["test"] == 0
    for split in ("validation", "test"):  # evaluation reads chat pairs only
        assert all("messages" in row for row in read_jsonl(folder / f"{split}.jsonl"))
    rows = [p for p in read_pairs(folder, "train") if p.meta.builder == "reading"]
    assert rows and all(p.is_text and p.messages is None and p.meta.task == TASK for p in rows)

    kinds = set()
    for row in rows:
        assert splits[row.meta.doc_id] == "train"
        passage, tasks = split_reading(row.text)
        start, end = row.meta.span
        assert flatten(passage) == flatten(texts[row.meta.doc_id][start:end])
        assert len(flatten(passage)) <= 400 and 1 <= len(tasks) <= 3
        for question, answer in tasks:
            if question.startswith("Does this passage contain"):
                kinds.add("presence")
                assert answer == "No." or answer.startswith('Yes: "')
                answer = answer.removeprefix('Yes: "').removesuffix('"')
            elif question.startswith("Under which heading"):
                kinds.add("section")
                answer = answer.removeprefix('Under the heading "').removesuffix('".')
            elif question.startswith("How does this passage define"):
                kinds.add("definition")
            else:
                assert question.startswith("How does the passage complete")
                kinds.add("completion")
            assert answer == "No." or flatten(answer) in flatten(passage), (answer, passage)
    assert kinds == {"presence", "section", "definition", "completion"}
    assert manifest.leakage.passed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"passage_chars": 10},
            "data.builders.reading.options: option 'passage_chars': input should be greater",
        ),
        (
            {"tasks_per_passage": 0},
            "option 'tasks_per_passage': input should be greater than or equal to 1",
        ),
        ({"passages": 3}, "data.builders.reading.options: unknown key 'passages'"),
        ({"taxonomy": "commercial_contracts", "categories": ["nope"]}, "categories: unknown"),
    ],
)
def test_reading_options_are_one_line_errors(contract_folder, tmp_path, options, message):
    builders = {"reading": {"options": options}}
    recipe = folder_recipe(contract_folder, tmp_path / "data", builders=builders)
    with pytest.raises(LexloraError, match=message) as err:
        build_dataset(recipe)
    assert "\n" not in str(err.value)


# --- one dataset, two kinds of loss -------------------------------------------------------------


def test_chat_rows_train_on_the_answer_and_reading_rows_on_every_token(tiny_model, tmp_path):
    """Through the trainer's own assembly: TRL's prepared rows and collated batch."""
    from lexlora.train.trainer import setup_training

    recipe = mixed_recipe(tmp_path, tiny_model, packing=False, max_length=1024)
    session = setup_training(recipe, resume=False, console=Console(width=1000))
    trainer, tok = session.trainer, session.base.tokenizer
    rows = [*read_pairs(recipe.dataset_dir, "train")]
    prepared = trainer.train_dataset
    assert len(prepared) > len(rows)  # + the replay pairs, mixed in after the domain rows
    kinds = {"chat": 0, "text": 0, "replay": 0}
    for i, pair in enumerate(rows):
        batch = trainer.data_collator([prepared[i]])
        ids, labels = batch["input_ids"][0], batch["labels"][0]
        if pair.is_text:
            kinds["text"] += 1
            assert (labels == ids).all()  # every token, the first included
            assert tok.decode(ids) == f"{pair.text}<|im_end|>"
            assert "<|im_start|>" not in tok.decode(ids)  # no chat template, no system prompt
        else:
            kinds["chat"] += 1
            trained = tok.decode(ids[labels != IGNORE])
            prompt = tok.decode(ids[labels == IGNORE])
            assert trained == f"{pair.answer}<|im_end|>\n"
            assert prompt.endswith("<|im_start|>assistant\n") and pair.question in prompt
    for i in range(len(rows), len(prepared)):
        kinds["replay"] += 1
        ids, labels = (prepared[i][k] for k in ("input_ids", "labels"))
        masked = tok.decode([t for t, label in zip(ids, labels, strict=True) if label == IGNORE])
        assert masked.startswith("<|im_start|>user\nWhat is ") and "system" not in masked
        assert masked.endswith("<|im_start|>assistant\n")
    assert all(kinds.values()), kinds
    assert kinds["replay"] == replay_count(0.2, len(rows))


def test_packing_keeps_each_rows_labels_and_the_mixed_dataset_trains(tiny_model, tmp_path):
    from lexlora.train.trainer import run_training, setup_training

    steps = {"max_steps": 10, "eval_steps": 10, "save_steps": 10}
    recipe = mixed_recipe(tmp_path, tiny_model, max_length=256, **steps)
    session = setup_training(recipe, resume=False, console=Console(width=1000))
    rows = read_pairs(recipe.dataset_dir, "train")
    rows += replay_pairs(recipe, session.base, len(rows))  # from the cache the setup wrote
    unpacked = tokenized_dataset(rows, session.base.tokenizer)
    packed = session.trainer.train_dataset
    assert len(packed) < len(unpacked) and max(map(len, packed["input_ids"])) <= 256
    # every row's labels are packed as they were (rows beyond max_length cut to it)
    loss_tokens = sum(sum(label != IGNORE for label in row) for row in packed["labels"])
    expected = sum(sum(label != IGNORE for label in row[:256]) for row in unpacked["labels"])
    assert loss_tokens == expected
    batch = session.trainer.data_collator([packed[0], packed[1]])
    assert "position_ids" in batch  # padding-free packing: positions restart at each row
    summary = run_training(session)
    assert summary.steps == 10
    assert summary.train_loss_last < summary.train_loss_first


# --- replay --------------------------------------------------------------------------------------


class CountingGenerate:
    def __init__(self, model):
        self.calls, self._generate = 0, model.generate

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._generate(*args, **kwargs)


def test_replay_answers_come_from_the_base_greedily_and_are_cached(
    tiny_model, tmp_path, lexlora_home
):
    recipe = mixed_recipe(tmp_path, tiny_model)
    base = load_base(recipe)
    counter = base.model.generate = CountingGenerate(base.model)
    logged: list[str] = []
    first = replay_pairs(recipe, base, 40, log=logged.append)
    assert counter.calls == 2  # 6 prompts, 4 per batch
    (cache,) = (lexlora_home / "replay").glob("*.jsonl")
    assert len(logged) == 1 and "wrote 6 base-model answers" in logged[0]
    assert "10 replay pairs mixed into 40 training rows" in logged[0]

    second = replay_pairs(recipe, base, 40, log=logged.append)
    assert counter.calls == 2  # read from the cache: no generation
    assert f"read 6 base-model answers from the cache {cache}" in logged[1]
    assert second == first

    # greedy and deterministic: a fresh base model gives the cached answers again
    _, prompts = load_prompts(recipe.train.replay.prompts)
    again = generate_answers(load_base(recipe), prompts, max_new_tokens=8, batch_size=4)
    cached = [json.loads(line) for line in cache.read_text().splitlines()]
    assert [a.answer for a in again] == [row["answer"] for row in cached]

    # mixed at the ratio: replay / (domain + replay) = 0.2, every pair a chat pair on a prompt
    assert len(first) == replay_count(0.2, 40) == 10
    assert {p.question for p in first} <= {p.prompt for p in prompts}
    assert all(p.meta.builder == "replay" and p.messages[0]["role"] == "user" for p in first)
    assert len(replay_pairs(recipe, base, 400, log=logged.append)) == 100  # repeats past 6
    assert counter.calls == 2

    # another setting is another cache entry
    other = recipe.model_copy(deep=True)
    other.train.replay.max_new_tokens = 4
    replay_pairs(other, base, 40, log=logged.append)
    assert counter.calls == 4 and len(list((lexlora_home / "replay").glob("*.jsonl"))) == 2


def test_replay_off_by_default_generates_nothing(tiny_model, tmp_path, lexlora_home):
    recipe = make_recipe(tmp_path, tiny_model)
    assert recipe.train.replay.ratio == 0
    base = load_base(recipe)
    counter = base.model.generate = CountingGenerate(base.model)
    assert replay_pairs(recipe, base, 40) == [] and counter.calls == 0
    assert not (lexlora_home / "replay").exists()


def test_the_shipped_general_prompts_are_valid_and_varied():
    path, prompts = load_prompts("recipes/replay/general_prompts.jsonl")
    assert path.resolve() == REPO_ROOT / "recipes" / "replay" / "general_prompts.jsonl"
    assert 60 <= len(prompts) <= 100
    assert len({p.prompt.lower() for p in prompts}) == len(prompts)


@pytest.mark.parametrize(
    ("replay", "message"),
    [
        ({"ratio": 0.9}, "field 'train.replay.ratio': input should be less than or equal to 0.5"),
        ({"ratio": -0.1}, "field 'train.replay.ratio'"),
        ({"max_new_tokens": 0}, "field 'train.replay.max_new_tokens'"),
        ({"ratoi": 0.1}, "unknown key 'train.replay.ratoi' (did you mean 'ratio'?)"),
    ],
)
def test_bad_replay_settings_are_one_line_errors(tiny_model, tmp_path, replay, message):
    raw = make_recipe(tmp_path, tiny_model).model_dump(mode="json")
    raw["train"]["replay"] = replay
    with pytest.raises(LexloraError) as err:
        validate_recipe(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (None, "train.replay.prompts: .*missing.jsonl not found"),
        (['{"id": "a", "prompt": "Hi?"}', '{"id": "b"}'], r":2: missing required field 'prompt'"),
        (['{"id": "a", "prompt": "Hi?"}', '{"id": "a", "prompt": "Yo?"}'], "duplicate id 'a'"),
        (['{"id": "a", "prompt": "Hi?", "answer": "x"}'], "unknown key 'answer'"),
        (["[1]"], r"train.replay.prompts: .*prompts.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_prompt_files_are_one_line_errors_and_leave_no_run(
    tiny_model, tmp_path, lines, message
):
    from lexlora.train.trainer import train

    path = tmp_path / ("missing.jsonl" if lines is None else "prompts.jsonl")
    if lines is not None:
        path.write_text("\n".join(lines) + "\n")
    recipe = make_recipe(
        tmp_path, tiny_model, train={"replay": {"prompts": str(path), "ratio": 0.1}}
    )
    with pytest.raises(LexloraError, match=message) as err:
        train(recipe)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_rows_have_one_form():
    with pytest.raises(ValueError, match="either 'messages' or 'text'"):
        Pair.model_validate({"meta": {"doc_id": "d", "builder": "b", "span": [0, 1], "task": "t"}})
