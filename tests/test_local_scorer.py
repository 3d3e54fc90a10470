"""The in-process scorer: batched option scoring equals each option's own unpadded pass."""

from __future__ import annotations

import pytest
import torch

from lexlora.eval.tasks import EvalItem, option_texts


def _item(n: int, question: str, choices: tuple[str, ...], label: str, reference: str) -> EvalItem:
    return EvalItem(
        id=f"t:{n}",
        doc_id=f"d{n}",
        task="t",
        builder="b",
        kind="choice",
        prompt=[
            *([{"role": "system", "content": "You answer about contracts."}] if n > 3 else []),
            {"role": "user", "content": question},
        ],
        reference=reference,
        choices=choices,
        label=label,
    )


@pytest.fixture(scope="module")
def scorer(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lexlora.eval.local import LocalScorer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    return LocalScorer(model, tokenizer, batch_size=3)


def unpadded(scorer, item: EvalItem) -> list[float]:
    """Each option's log-probability from one forward pass over prompt + option alone."""
    prompt = scorer._ids(scorer.prompt_text(item))
    scores = []
    for text in option_texts(item, scorer.end):
        option = scorer._ids(text)
        with torch.no_grad():
            logits = scorer.model(input_ids=torch.tensor([prompt + option])).logits[0]
        logprobs = torch.log_softmax(logits.float(), -1)
        scores.append(sum(logprobs[len(prompt) - 1 + j, t].item() for j, t in enumerate(option)))
    return scores


def test_batched_options_match_one_by_one(scorer):
    """Prompts of different lengths, with and without a shared system turn, share batches (the
    common prefix encoded once, the rest right-padded), and so do options of one token and of
    several; each item's option scores are those of its own unpadded forward pass."""
    # Options that open the answer are scored alone: "A"/"B" are one byte-level token each.
    assert len(scorer._ids("A")) == len(scorer._ids("B")) == 1
    questions = ["Does it?", "Does the Customer pay the fees within thirty days of invoice?"]
    items = [
        _item(n, questions[n % 2] * (1 + n % 3), ("A", "B"), "A", "A. It does.") for n in range(7)
    ]
    terms = ("Payment terms", "Termination", "Governing law of the Agreement")
    items.append(_item(7, "Which clause is it?", terms, "Termination", "Termination"))
    items.append(_item(8, "And this one? " * 4, terms[::-1], "Termination", "Termination"))
    batched = scorer.choice_logprobs(items)
    for item, scores in zip(items, batched, strict=True):
        assert scores == pytest.approx(unpadded(scorer, item), abs=1e-4)
    assert batched[0] != batched[1]  # different prompts, different scores
