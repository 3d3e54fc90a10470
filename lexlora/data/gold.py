"""Hand-checked clause-presence labels (``eval/gold/*.jsonl``) and the detector's score on them.

A gold row is ``{"doc_id", "category", "label": "yes"|"no", "evidence", "note"}``, written by
reading the document. The detector is scored on the rows whose document it saw: precision and
recall of its ``yes`` labels, the precision of its ``no`` labels, and how often it abstained
(``ambiguous``, which the builder drops). Abstentions count as misses in recall.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from lexlora.errors import LexloraError
from lexlora.io import read_jsonl
from lexlora.recipe import REPO_ROOT

GoldKey = tuple[str, str]  # (doc_id, category)


def load_gold(path_text: str) -> tuple[Path, dict[GoldKey, str]]:
    """The gold labels of ``path_text`` (relative paths are tried from the repo root too)."""
    path = Path(path_text).expanduser()
    if not path.is_file() and not path.is_absolute() and (REPO_ROOT / path).is_file():
        path = REPO_ROOT / path
    if not path.is_file():
        raise LexloraError(f"{path}: gold label file not found")
    labels: dict[GoldKey, str] = {}
    for n, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row, dict) or row.get("label") not in ("yes", "no"):
            raise LexloraError(f"{path}:{n}: expected an object with label 'yes' or 'no'")
        labels[(str(row["doc_id"]), str(row["category"]))] = row["label"]
    return path, labels


def score_detector(gold: dict[GoldKey, str], detected: dict[GoldKey, str]) -> dict[str, Any]:
    """The detector's labels (``yes``/``no``/``ambiguous``) against the gold ones they cover."""
    overall: Counter[str] = Counter()
    by_category: dict[str, Counter[str]] = {}
    for key, truth in sorted(gold.items()):
        if key not in detected:
            overall["not seen"] += 1
            continue
        outcome = _outcome(truth, detected[key])
        overall[outcome] += 1
        by_category.setdefault(key[1], Counter())[outcome] += 1
    return {
        **_rates(overall),
        "not_seen": overall["not seen"],
        "by_category": {cat: _rates(c) for cat, c in sorted(by_category.items())},
    }


def _outcome(truth: str, label: str) -> str:
    if label == "ambiguous":
        return f"abstain_{truth}"
    return {("yes", "yes"): "tp", ("no", "yes"): "fp", ("yes", "no"): "fn"}.get(
        (truth, label), "tn"
    )


def _rates(c: Counter[str]) -> dict[str, Any]:
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    abstained = c["abstain_yes"] + c["abstain_no"]
    scored = tp + fp + fn + tn + abstained

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 3) if b else None

    return {
        "n": scored,
        "gold_yes": tp + fn + c["abstain_yes"],
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "abstained": abstained,
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn + c["abstain_yes"]),
        "no_precision": ratio(tn, tn + fn),
        "accuracy_when_labelled": ratio(tp + tn, tp + fp + fn + tn),
        "abstain_rate": ratio(abstained, scored),
    }
