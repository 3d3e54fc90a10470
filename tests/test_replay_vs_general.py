"""The replay prompts (trained on) and the general evaluation set (scored) are different questions:
a forgetting measure on questions the adapter rehearsed would measure nothing."""

from __future__ import annotations

import json
import re

from lexlora.recipe import REPO_ROOT

WORDS = re.compile(r"[a-z0-9]+")


def _phrases(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = WORDS.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_replay_prompts_share_no_phrase_with_the_general_set():
    replay = _lines(REPO_ROOT / "recipes" / "replay" / "general_prompts.jsonl")
    general = _lines(REPO_ROOT / "eval" / "general" / "general.jsonl")
    assert len(replay) >= 60 and len(general) >= 60
    rehearsed = set().union(*(_phrases(r["prompt"]) for r in replay))
    for item in general:
        shared = _phrases(item["question"]) & rehearsed
        assert not shared, f"{item['id']} shares {shared} with a replay prompt"
        assert not any(item["question"].lower() in r["prompt"].lower() for r in replay)
