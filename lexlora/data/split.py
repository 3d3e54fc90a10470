"""Split documents (never pairs) into train/validation/test, seeded and stratified."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping

from lexlora.artifacts.manifest import SPLITS


def split_by_document(
    doc_strata: Mapping[str, str],
    validation: float,
    test: float,
    seed: int,
) -> dict[str, str]:
    """Assign every document id to one split.

    ``doc_strata`` maps document id → stratum (e.g. licence category). Within each stratum the
    documents are shuffled with ``seed`` and cut by the fractions, rounding so that the overall
    split sizes stay close to the requested fractions: a stratum's remainders go where the running
    total is furthest below its target. A stratum of one document goes to train.
    """
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for doc_id, stratum in doc_strata.items():
        by_stratum[stratum].append(doc_id)
    fractions = {"validation": validation, "test": test}
    assigned: dict[str, str] = {}
    totals = dict.fromkeys(SPLITS, 0.0)
    targets = dict.fromkeys(SPLITS, 0.0)
    for stratum in sorted(by_stratum):
        ids = sorted(by_stratum[stratum])
        random.Random(f"{seed}:{stratum}").shuffle(ids)
        counts = _stratum_counts(len(ids), fractions, totals, targets)
        start = 0
        for split in ("test", "validation", "train"):
            for doc_id in ids[start : start + counts[split]]:
                assigned[doc_id] = split
            start += counts[split]
    return assigned


def _stratum_counts(
    n: int, fractions: Mapping[str, float], totals: dict[str, float], targets: dict[str, float]
) -> dict[str, int]:
    counts = {"train": 0, "validation": 0, "test": 0}
    for split, frac in fractions.items():
        targets[split] += n * frac
        want = round(targets[split] - totals[split])
        counts[split] = max(0, min(want, n - 1 - sum(counts.values())))
        totals[split] += counts[split]
    counts["train"] = n - counts["validation"] - counts["test"]
    return counts
