"""Yes/no questions (clause presence): accuracy, balanced accuracy and per-category accuracy.

Balanced accuracy is the mean of the accuracy on Yes items and on No items, so a model that
always answers Yes scores 0.5 however the items are split. Intervals are percentile bootstraps
that resample Yes and No items separately (each resample keeps both classes); the adapter − base
difference resamples the same items for both. Items of one ``group`` (a recall fact asked in
several wordings) are resampled together, so a fact counts once however many wordings ask it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from lexlora.artifacts.metrics import Comparison, Difference, Stat, YesNoMetrics, YesRate
from lexlora.eval.metrics import p_worse
from lexlora.eval.scores import comparison
from lexlora.eval.tasks import EvalItem

YES_NO = ("Yes", "No")
N_RESAMPLES = 2000


def is_yes_no(item: EvalItem) -> bool:
    return item.kind == "choice" and tuple(item.choices) == YES_NO


def yes_no_metrics(
    items: Sequence[EvalItem], base: Sequence[float], adapter: Sequence[float], seed: int
) -> YesNoMetrics | None:
    """Metrics over the yes/no items; ``base``/``adapter`` are their per-item correctness (1/0).
    ``None`` when there are no such items."""
    if not items:
        return None
    is_yes = np.array([item.label == "Yes" for item in items])
    b, a = np.asarray(base, dtype=float), np.asarray(adapter, dtype=float)
    by_category: dict[str, list[int]] = defaultdict(list)
    for n, item in enumerate(items):
        by_category[item.category or "(none)"].append(n)
    one_class = is_yes.all() or not is_yes.any()
    return YesNoMetrics(
        n=len(items),
        n_yes=int(is_yes.sum()),
        n_no=int((~is_yes).sum()),
        accuracy=_accuracy(items, b, a, seed),
        balanced_accuracy=None if one_class else _balanced(is_yes, b, a, seed, groups(items)),
        yes_rate=YesRate(base=_yes_rate(is_yes, b), adapter=_yes_rate(is_yes, a)),
        by_category={
            cat: comparison([adapter[n] for n in rows], [base[n] for n in rows], "accuracy", seed)
            for cat, rows in sorted(by_category.items())
        },
    )


def balanced_accuracy(is_yes: np.ndarray, correct: np.ndarray) -> float:
    return float((correct[is_yes].mean() + correct[~is_yes].mean()) / 2)


def groups(items: Sequence[EvalItem]) -> np.ndarray:
    """Each item's resampling unit, numbered in order of first appearance: its ``group`` (a
    recall fact), else the item itself."""
    seen: dict[str, int] = {}
    return np.array(
        [seen.setdefault(i.group or f"item:{n}", len(seen)) for n, i in enumerate(items)]
    )


def _accuracy(items: Sequence[EvalItem], b: np.ndarray, a: np.ndarray, seed: int) -> Comparison:
    """Accuracy; items of one group (a recall fact's wordings) are resampled together."""
    if not any(item.group for item in items):
        return comparison(list(a), list(b), "accuracy", seed)
    every = np.ones(len(items), dtype=bool)
    return _stratified([every], b, a, seed, groups(items), "accuracy")


def _balanced(
    is_yes: np.ndarray, b: np.ndarray, a: np.ndarray, seed: int, units: np.ndarray
) -> Comparison:
    """Balanced accuracy of base and adapter: bootstraps that resample Yes and No units (items,
    or the groups of ``units``) apart, the same draws for both (so the difference is paired)."""
    return _stratified([is_yes, ~is_yes], b, a, seed, units, "balanced_accuracy")


def _stratified(
    strata: list[np.ndarray],
    b: np.ndarray,
    a: np.ndarray,
    seed: int,
    units: np.ndarray,
    metric: str,
) -> Comparison:
    """The mean over ``strata`` (item masks) of each stratum's accuracy, for base and adapter,
    with bootstraps that resample each stratum's units apart, the same draws for both."""
    rng = np.random.default_rng(seed)
    size = np.bincount(units)
    pools = [np.unique(units[mask]) for mask in strata]
    draws = [pool[rng.integers(0, pool.size, size=(N_RESAMPLES, pool.size))] for pool in pools]

    def resampled(correct: np.ndarray) -> np.ndarray:
        total = np.bincount(units, weights=correct, minlength=size.size)
        means = [total[d].sum(axis=1) / size[d].sum(axis=1) for d in draws]
        return np.mean(means, axis=0)

    def point(correct: np.ndarray) -> float:
        return float(np.mean([correct[mask].mean() for mask in strata]))

    rb, ra = resampled(b), resampled(a)

    def interval(samples: np.ndarray) -> tuple[float, float]:
        low, high = np.quantile(samples, [0.025, 0.975])
        return float(low), float(high)

    def stat(mean: float, samples: np.ndarray) -> Stat:
        low, high = interval(samples)
        return Stat(mean=mean, low=low, high=high, n=int(units.size))

    base_ba, adapter_ba = point(b), point(a)
    low, high = interval(ra - rb)
    return Comparison(
        metric=metric,
        base=stat(base_ba, rb),
        adapter=stat(adapter_ba, ra),
        difference=Difference(
            mean=adapter_ba - base_ba,
            low=low,
            high=high,
            improved=low > 0,
            worse=high < 0,
            p_worse=p_worse(ra - rb, higher_is_better=True),
        ),
    )


def _yes_rate(is_yes: np.ndarray, correct: np.ndarray) -> float:
    """Share of items answered Yes: correct Yes items plus wrong No items."""
    said_yes = np.where(is_yes, correct, 1 - correct)
    return float(said_yes.mean())
