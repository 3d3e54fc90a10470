"""Turn raw model outputs into per-item scores, aggregates with intervals, and comparisons."""

from __future__ import annotations

import math
from collections.abc import Sequence

from lexlora.artifacts.metrics import Comparison, Difference, Stat
from lexlora.eval.metrics import (
    bootstrap_ci,
    exact_match,
    paired_difference,
    paired_p_worse,
    rouge_l,
    token_f1,
)
from lexlora.eval.tasks import EvalItem

# metric → True when higher is better
HIGHER_IS_BETTER = {
    "accuracy": True,
    "answer_nll": False,
    "exact_match": True,
    "token_f1": True,
    "rouge_l": True,
}


def choice_correct(items: Sequence[EvalItem], logprobs: Sequence[Sequence[float]]) -> list[float]:
    """1.0 where the highest-scoring option is the label."""
    correct = []
    for item, scores in zip(items, logprobs, strict=True):
        best = max(range(len(scores)), key=scores.__getitem__)
        correct.append(float(item.choices[best] == item.label))
    return correct


def generation_scores(items: Sequence[EvalItem], outputs: Sequence[str]) -> dict[str, list[float]]:
    pairs = list(zip(outputs, (i.reference for i in items), strict=True))
    return {
        "exact_match": [exact_match(p, r) for p, r in pairs],
        "token_f1": [token_f1(p, r) for p, r in pairs],
        "rouge_l": [rouge_l(p, r) for p, r in pairs],
    }


def summarize(values: Sequence[float], seed: int = 0) -> Stat:
    mean, low, high = bootstrap_ci(values, seed=seed)
    return Stat(mean=mean, low=low, high=high, n=len(values))


def compare(
    adapter: Sequence[float], base: Sequence[float], metric: str, seed: int = 0
) -> Difference:
    """Paired difference adapter − base, whether the interval excludes zero either way, and the
    one-sided p-value of "worse" that the gate corrects across families."""
    mean, low, high = paired_difference(adapter, base, seed=seed)
    better = HIGHER_IS_BETTER[metric]
    return Difference(
        mean=mean,
        low=low,
        high=high,
        improved=(low > 0) if better else (high < 0),
        worse=(high < 0) if better else (low > 0),
        p_worse=paired_p_worse(adapter, base, better, seed=seed),
    )


def comparison(
    adapter: Sequence[float], base: Sequence[float], metric: str, seed: int = 0
) -> Comparison:
    """One family's row: ``metric``, base and adapter (:func:`summarize`) and their paired
    difference (:func:`compare`), over the same items."""
    return Comparison(
        metric=metric,
        base=summarize(base, seed),
        adapter=summarize(adapter, seed),
        difference=compare(adapter, base, metric, seed),
    )


def perplexity(nll: Stat) -> Stat:
    """Answer perplexity from per-item mean NLL (exp of the mean and of its interval)."""
    return Stat(mean=math.exp(nll.mean), low=math.exp(nll.low), high=math.exp(nll.high), n=nll.n)
