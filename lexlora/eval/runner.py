"""``lexlora eval RECIPE``: base vs adapter on held-out documents, a strength sweep, a report.

Reads top to bottom: select held-out items (refusing any whose document trained the adapter) and
the fixed tracks (sanity, recall, general) → score the base and the adapter (option
log-likelihoods, answer loss, greedy generations) → sweep the adapter's strength (0 must equal
the base: verified) → aggregate with bootstrap intervals and paired differences → write
``reports/RECIPE/EVAL_ID/``.

Tracks (``EvalMetrics.tracks``, each a list of headline families): *reading* (held-out documents,
the text in the prompt), *recall* (training documents, closed-book, held-out wordings) and
*general* (out-of-domain questions: a drop is forgetting).
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lexlora.artifacts.metrics import (
    Comparison,
    EvalMetrics,
    Example,
    GeneralMetrics,
    ItemCounts,
    Perplexity,
    SweepPoint,
    YesNoMetrics,
)
from lexlora.errors import LexloraError
from lexlora.eval.gate import gate_verdict
from lexlora.eval.report import write_report
from lexlora.eval.scores import (
    choice_correct,
    comparison,
    generation_scores,
    perplexity,
)
from lexlora.eval.tasks import (
    EvalItem,
    load_general,
    load_recall,
    load_sanity,
    load_spec,
    select_items,
    spec_path,
)
from lexlora.eval.yesno import is_yes_no, yes_no_metrics
from lexlora.progress import Log
from lexlora.recipe import Recipe

SCALE0_TOLERANCE = 1e-4
# headline families → (metric, where its per-item scores are in raw[model])
FAMILIES = {
    "choice_accuracy": ("accuracy", lambda r: r["choice"]),
    "answer_nll": ("answer_nll", lambda r: r["nll"]),
    "token_f1": ("token_f1", lambda r: r["generation"]["token_f1"]),
    "exact_match": ("exact_match", lambda r: r["generation"]["exact_match"]),
    "rouge_l": ("rouge_l", lambda r: r["generation"]["rouge_l"]),
    "sanity_accuracy": ("accuracy", lambda r: r["sanity"]),
    "general_accuracy": ("accuracy", lambda r: r["general"]),
    "general_answer_nll": ("answer_nll", lambda r: r["general_nll"]),
}
# track → the headline families that measure it, in order of preference
TRACKS = {
    "reading": ("yes_no_balanced_accuracy", "choice_accuracy"),
    "recall": ("recall_balanced_accuracy", "recall_accuracy"),
    "general": ("general_accuracy", "general_answer_nll"),
}


@dataclass
class EvalResult:
    report_dir: Path
    metrics: EvalMetrics


def evaluate(
    recipe: Recipe,
    scorer,
    data_dir: Path,
    adapter_label: str,
    sweep: list[float] | None = None,
    out_root: Path = Path("reports"),
    log: Log = print,
) -> EvalResult:
    """Score ``scorer`` (a LocalScorer or EndpointScorer) and write the report."""
    started = time.time()
    spec = load_spec(spec_path(recipe.name, recipe.eval.tasks_file))
    seed = recipe.eval.seed
    items, refused = select_items(data_dir, spec, seed, recipe.eval.max_items)
    sanity, sanity_refused = load_sanity(spec, data_dir)
    recall = load_recall(spec, data_dir, _builder_options(recipe, spec))
    general, general_open, general_refused = load_general(spec, data_dir)
    if not items:
        raise LexloraError(f"{data_dir}/test.jsonl: no held-out items for the tasks in eval/")
    choice = [i for i in items if i.kind == "choice"]
    open_items = [i for i in items if i.kind == "open"]
    rng = random.Random(f"{seed}:generation")
    generated = sorted(
        rng.sample(range(len(open_items)), min(spec.generation_items, len(open_items)))
    )
    gen_items = [open_items[i] for i in generated]
    log(
        f"eval: {len(choice)} choice, {len(open_items)} open ({len(gen_items)} generated), "
        f"{len(sanity)} sanity, {len(recall)} recall, {len(general)} general items; "
        f"{refused + sanity_refused} refused (training documents)"
        + (f", {general_refused} general refused (in training prompts)" if general_refused else "")
    )

    raw = {}
    for label, scale in (("base", None), ("adapter", 1.0)):
        timer = _PartTimer()
        with scorer.variant(scale):
            raw[label] = {
                "choice": timer("choice", choice_correct, choice, scorer.choice_logprobs),
                "sanity": timer("sanity", choice_correct, sanity, scorer.choice_logprobs),
                "recall": timer("recall", choice_correct, recall, scorer.choice_logprobs),
                "general": timer("general", choice_correct, general, scorer.choice_logprobs),
                "general_nll": timer("general loss", None, general_open, scorer.answer_nll),
                "nll": timer("answer loss", None, open_items, scorer.answer_nll),
            }
            outputs = timer("generation", None, gen_items, scorer.generate, spec.max_new_tokens)
            raw[label] |= {"generation": generation_scores(gen_items, outputs), "outputs": outputs}
        log(f"eval: scored the {label} ({timer})")

    scales = sweep or recipe.eval.sweep
    if not getattr(scorer, "supports_scale", True):  # prompt tuning, new tokens: no strength
        scales = [1.0]
    sweep_rows = _sweep(scorer, scales, choice, open_items, raw, log)
    yes_no = _yes_no_subset(choice, raw, "choice", seed)
    recall_metrics = _yes_no_subset(recall, raw, "recall", seed)
    sanity_metrics = _yes_no_subset(sanity, raw, "sanity", seed)
    headline = (
        _headline(raw, seed)
        | _yes_no_headline(yes_no, "yes_no")
        | _yes_no_headline(recall_metrics, "recall")
    )
    metrics = EvalMetrics(
        recipe=recipe.name,
        adapter=adapter_label,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seed=seed,
        items=ItemCounts(
            choice=len(choice),
            open=len(open_items),
            generated=len(gen_items),
            sanity=len(sanity),
            recall=len(recall),
            general=len(general),
            refused_training_documents=refused + sanity_refused,
            refused_general_in_training=general_refused,
            by_task=_count_by(items, "task"),
        ),
        headline=headline,
        tracks=_tracks(headline),
        yes_no=yes_no,
        recall=recall_metrics,
        sanity_yes_no=sanity_metrics,
        general=_general_by_topic(general, general_open, raw, seed),
        tasks=_by_group(items, choice, open_items, raw, "task", seed),
        builders=_by_group(items, choice, open_items, raw, "builder", seed),
        sweep=sweep_rows,
        best_scale=_best_scale(sweep_rows),
        worst_examples=_worst(gen_items, raw),
    )
    metrics.gate = gate_verdict(
        metrics.tasks, metrics.headline, min_items=recipe.eval.gate_min_items
    )
    metrics.seconds = round(time.time() - started, 1)
    eval_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    report_dir = write_report(out_root / recipe.name / eval_id, metrics)
    return EvalResult(report_dir, metrics)


class _PartTimer:
    """Runs each scoring part and keeps its wall time, for one log line ("choice 41 s, …")."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, then, items: list, score, *args):
        if not items:
            return []
        started = time.perf_counter()
        result = score(items, *args)
        if then is not None:
            result = then(items, result)
        self.seconds[name] = time.perf_counter() - started
        return result

    def __str__(self) -> str:
        return ", ".join(f"{name} {s:.0f} s" for name, s in self.seconds.items())


def _headline(raw: dict, seed: int) -> dict[str, Comparison]:
    """Pooled metric families: base, adapter (mean and 95% interval) and the paired difference."""
    out = {}
    for name, (metric, get) in FAMILIES.items():
        base, adapter = get(raw["base"]), get(raw["adapter"])
        if not base or any(math.isnan(v) for v in base + adapter):
            continue  # none scored, or the endpoint cannot give likelihoods
        row = comparison(adapter, base, metric, seed)
        if metric == "answer_nll":
            row.perplexity = Perplexity(base=perplexity(row.base), adapter=perplexity(row.adapter))
        out[name] = row
    return out


def _tracks(headline: dict[str, Comparison]) -> dict[str, list[str]]:
    """Each track's headline families that this evaluation has (a track with none is absent)."""
    tracks = {name: [f for f in families if f in headline] for name, families in TRACKS.items()}
    if {"recall_balanced_accuracy", "recall_accuracy"} <= set(tracks.get("recall", ())):
        tracks["recall"].remove("recall_accuracy")  # the balanced one says it better
    return {name: families for name, families in tracks.items() if families}


def _general_by_topic(
    choice: list[EvalItem], open_items: list[EvalItem], raw: dict, seed: int
) -> GeneralMetrics | None:
    """The general track per topic (option accuracy and answer NLL): where forgetting shows.
    Topics are small (~12 items): reported, not gated."""
    if not choice:
        return None
    out: dict[str, dict[str, Comparison]] = {}
    for subset, field, metric in (
        (choice, "general", "accuracy"),
        (open_items, "general_nll", "answer_nll"),
    ):
        index: dict[str, list[int]] = defaultdict(list)
        for n, item in enumerate(subset):
            index[item.category or "(none)"].append(n)
        for topic, rows in sorted(index.items()):
            base = [raw["base"][field][n] for n in rows]
            adapter = [raw["adapter"][field][n] for n in rows]
            if not any(math.isnan(v) for v in base + adapter):
                out.setdefault(topic, {})[metric] = comparison(adapter, base, metric, seed)
    return GeneralMetrics(n=len(choice), by_topic=out)


def _yes_no_subset(items: list[EvalItem], raw: dict, field: str, seed: int) -> YesNoMetrics | None:
    """Yes/no metrics over the Yes/No items of ``items`` (scored as ``raw[model][field]``)."""
    rows = [n for n, item in enumerate(items) if is_yes_no(item)]
    return yes_no_metrics(
        [items[n] for n in rows],
        [raw["base"][field][n] for n in rows],
        [raw["adapter"][field][n] for n in rows],
        seed,
    )


def _yes_no_headline(yes_no: YesNoMetrics | None, prefix: str) -> dict[str, Comparison]:
    """A yes/no set's accuracy and balanced accuracy as headline families ``PREFIX_…``."""
    if yes_no is None:
        return {}
    rows = {f"{prefix}_accuracy": yes_no.accuracy}
    if yes_no.balanced_accuracy is not None:
        rows[f"{prefix}_balanced_accuracy"] = yes_no.balanced_accuracy
    return rows


def _builder_options(recipe: Recipe, spec) -> dict[str, dict]:
    """The options of the enabled builders whose facts the recall track asks, by name."""
    if spec.recall is None:
        return {}
    builders = recipe.data.builders
    return {
        name: dict(builders[name].options)
        for name in spec.recall.builders
        if name in builders and builders[name].enabled
    }


def _by_group(items, choice, open_items, raw, key: str, seed: int) -> dict[str, Comparison]:
    """Per task (or builder): accuracy for choice items, answer NLL for open items."""
    groups: dict[str, Comparison] = {}
    for kind, subset, metric, field in (
        ("choice", choice, "accuracy", "choice"),
        ("open", open_items, "answer_nll", "nll"),
    ):
        index: dict[str, list[int]] = defaultdict(list)
        for n, item in enumerate(subset):
            index[getattr(item, key)].append(n)
        for name, rows in index.items():
            base = [raw["base"][field][n] for n in rows]
            adapter = [raw["adapter"][field][n] for n in rows]
            if any(math.isnan(v) for v in base + adapter):
                continue
            name = f"{name}" if key == "task" else f"{name} ({kind})"
            groups[name] = comparison(adapter, base, metric, seed).model_copy(update={"kind": kind})
    return dict(sorted(groups.items()))


def _sweep(scorer, scales, choice, open_items, raw, log, n_check: int = 6) -> list[SweepPoint]:
    """Choice accuracy and answer NLL at each strength. Strength 1 is the adapter already scored;
    strength 0 must reproduce the base: checked on a few items, then the base's scores are used."""
    rows = []
    for scale in sorted(set(scales)):
        checked = None
        if scale == 1.0:
            acc, nll = raw["adapter"]["choice"], raw["adapter"]["nll"]
        elif scale == 0.0:
            with scorer.variant(0.0):
                check_nll = scorer.answer_nll(open_items[:n_check])
                check_acc = choice_correct(
                    choice[:n_check], scorer.choice_logprobs(choice[:n_check])
                )
            pairs = zip(check_nll, raw["base"]["nll"], strict=False)
            diff = max((abs(a - b) for a, b in pairs if not math.isnan(a)), default=0.0)
            if diff > SCALE0_TOLERANCE or check_acc != raw["base"]["choice"][:n_check]:
                raise LexloraError(f"strength 0 does not reproduce the base model (Δ={diff:.2e})")
            checked = diff
            acc, nll = raw["base"]["choice"], raw["base"]["nll"]
        else:
            log(f"eval: sweep, strength {scale}")
            with scorer.variant(scale):
                acc = choice_correct(choice, scorer.choice_logprobs(choice))
                nll = scorer.answer_nll(open_items)
        rows.append(
            SweepPoint(
                scale=scale,
                choice_accuracy=_mean(acc),
                answer_nll=_mean(nll),
                max_abs_diff_vs_base=checked,
            )
        )
    return rows


def _best_scale(rows: list[SweepPoint]) -> float | None:
    if not rows:
        return None

    def rank(row: SweepPoint) -> tuple[float, float]:
        nll = row.answer_nll if row.answer_nll is not None else math.inf
        return (-(row.choice_accuracy or 0), nll) if nll == math.inf else (nll, 0.0)

    return min(rows, key=rank).scale


def _worst(gen_items: list[EvalItem], raw: dict, k: int = 10) -> list[Example]:
    base_f1, adapter_f1 = (
        raw["base"]["generation"]["token_f1"],
        raw["adapter"]["generation"]["token_f1"],
    )
    order = sorted(range(len(gen_items)), key=lambda n: (adapter_f1[n] - base_f1[n], adapter_f1[n]))
    return [
        Example(
            task=gen_items[n].task,
            doc_id=gen_items[n].doc_id,
            question=gen_items[n].prompt[-1]["content"],
            reference=gen_items[n].reference,
            base=raw["base"]["outputs"][n],
            adapter=raw["adapter"]["outputs"][n],
            base_f1=base_f1[n],
            adapter_f1=adapter_f1[n],
        )
        for n in order[:k]
    ]


def _count_by(items: list[EvalItem], key: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[getattr(item, key)] += 1
    return dict(sorted(counts.items()))


def _mean(values: list[float]) -> float | None:
    if not values or any(math.isnan(v) for v in values):
        return None
    return sum(values) / len(values)
