"""Metrics and their uncertainty: exact match, token F1, ROUGE-L, bootstrap intervals.

Exact match and token F1 follow the SQuAD conventions (lower-case, strip punctuation and the
articles a/an/the, collapse whitespace). ROUGE-L is the F-measure of ``rouge-score``.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np
from rouge_score import rouge_scorer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    return _ROUGE.score(reference, prediction)["rougeL"].fmeasure


def bootstrap_means(values: Sequence[float], n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Means of ``n_resamples`` seeded resamples (with replacement) of ``values``."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    return data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)


def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval of the mean."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    means = bootstrap_means(data, n_resamples, seed)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(data.mean()), float(low), float(high)


def p_worse(differences: np.ndarray, higher_is_better: bool) -> float:
    """One-sided bootstrap p-value that the adapter is *not* worse, from resampled mean
    differences (adapter − base): the share of resamples on the not-worse side of zero, with the
    usual +1 correction. Below 0.025 exactly when the 95% percentile interval excludes zero on the
    worse side."""
    not_worse = differences >= 0 if higher_is_better else differences <= 0
    return float((1 + np.count_nonzero(not_worse)) / (1 + differences.size))


def paired_difference(
    adapter: Sequence[float], base: Sequence[float], n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of adapter − base over the same items, with a paired bootstrap interval."""
    return bootstrap_ci(_differences(adapter, base), n_resamples=n_resamples, seed=seed)


def paired_p_worse(
    adapter: Sequence[float],
    base: Sequence[float],
    higher_is_better: bool,
    n_resamples: int = 2000,
    seed: int = 0,
) -> float:
    """:func:`p_worse` of the paired resamples that :func:`paired_difference` draws."""
    diffs = _differences(adapter, base)
    if not diffs:
        return float("nan")
    return p_worse(bootstrap_means(diffs, n_resamples, seed), higher_is_better)


def _differences(adapter: Sequence[float], base: Sequence[float]) -> list[float]:
    if len(adapter) != len(base):
        raise ValueError("paired difference needs the same items for both models")
    return [a - b for a, b in zip(adapter, base, strict=True)]
