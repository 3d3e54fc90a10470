"""The evaluation report: ``metrics.json``, PNG plots, ``report.md`` and a self-contained
``report.html`` (plots embedded), written to a temporary folder and renamed into place."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lexlora.eval.gate import describe, describe_too_small
from lexlora.io import atomic_directory, write_json

LABELS = {
    "choice_accuracy": "option accuracy (log-likelihood)",
    "answer_nll": "answer loss (NLL per token, lower is better)",
    "token_f1": "token F1 of greedy answers",
    "exact_match": "exact match of greedy answers",
    "rouge_l": "ROUGE-L of greedy answers",
    "sanity_accuracy": "sanity set accuracy (independent labels)",
    "yes_no_accuracy": "yes/no accuracy (clause presence)",
    "yes_no_balanced_accuracy": "yes/no balanced accuracy (clause presence)",
    "recall_accuracy": "recall accuracy (closed-book, training documents, new wordings)",
    "recall_balanced_accuracy": "recall balanced accuracy (closed-book, new wordings)",
    "general_accuracy": "general option accuracy (out-of-domain questions)",
    "general_answer_nll": "general answer loss (out-of-domain, NLL per token, lower is better)",
}
TRACK_LABELS = {
    "reading": "reading (held-out documents, text in the prompt)",
    "recall": "recall (training documents, closed-book, new wordings)",
    "general": "general (out-of-domain questions: a drop is forgetting)",
}
FAMILY_SHORT = {  # a family's name inside its track's line
    "yes_no_balanced_accuracy": "clause presence balanced accuracy",
    "choice_accuracy": "option accuracy",
    "recall_balanced_accuracy": "balanced accuracy",
    "recall_accuracy": "accuracy",
    "general_accuracy": "option accuracy",
    "general_answer_nll": "answer NLL",
}
YES_NO_SETS = {
    "yes_no": "clause presence (reading)",
    "recall": "recall (closed-book)",
    "sanity_yes_no": "sanity set",
}


def yes_rate_text(metrics: dict) -> str:
    """How often base and adapter answer Yes on each yes/no set (a bias check), in one line."""
    parts = []
    for key, label in YES_NO_SETS.items():
        block = metrics.get(key)
        if block:
            rate = block["yes_rate"]
            parts.append(
                f"{label} {rate['base']:.0%} → {rate['adapter']:.0%} "
                f"(truth {block['n_yes'] / block['n']:.0%} of {block['n']})"
            )
    return "answers Yes, base → adapter: " + "; ".join(parts) if parts else ""


def write_report(report_dir: Path, metrics: dict) -> Path:
    with atomic_directory(report_dir, replace=True) as tmp:
        write_json(tmp / "metrics.json", metrics)
        plots = {
            "headline.png": plot_headline(metrics, tmp / "headline.png"),
            "strength.png": plot_sweep(metrics, tmp / "strength.png"),
            "tasks.png": plot_groups(metrics["tasks"], tmp / "tasks.png", "per task"),
        }
        plots = {name: path for name, path in plots.items() if path is not None}
        (tmp / "report.md").write_text(render_markdown(metrics, plots), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(metrics, plots), encoding="utf-8")
    return report_dir


def headline_text(metrics: dict) -> list[str]:
    """One line per metric family: base → adapter, difference with its 95% interval."""
    return [
        f"{LABELS.get(name, name)}: base {row['base']['mean']:.3f} → adapter "
        f"{row['adapter']['mean']:.3f} {_change(row)}"
        for name, row in metrics["headline"].items()
    ]


def track_text(metrics: dict) -> list[str]:
    """One line per track (reading, recall, general): each of its families base → adapter with
    the 95% interval of the difference."""
    lines = []
    for track, families in (metrics.get("tracks") or {}).items():
        parts = []
        for name in families:
            row = metrics["headline"][name]
            parts.append(
                f"{FAMILY_SHORT.get(name, name)} {row['base']['mean']:.3f} → "
                f"{row['adapter']['mean']:.3f} {_change(row)}"
            )
        lines.append(f"{TRACK_LABELS.get(track, track)}: " + "; ".join(parts))
    return lines


def _change(row: dict) -> str:
    """``(Δ +0.050, 95% CI [+0.010, +0.090], n=120: better)`` for a family's row."""
    diff = row["difference"]
    verdict = "better" if diff["improved"] else "WORSE" if diff["worse"] else "no clear change"
    return (
        f"(Δ {diff['mean']:+.3f}, 95% CI [{diff['low']:+.3f}, {diff['high']:+.3f}], "
        f"n={row['base']['n']}: {verdict})"
    )


def plot_headline(metrics: dict, path: Path) -> Path | None:
    rows = metrics["headline"]
    if not rows:
        return None
    ncols = min(3, len(rows))
    nrows = -(-len(rows) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(rows) :]:
        ax.set_visible(False)
    for ax, (name, row) in zip(axes.flat, rows.items(), strict=False):
        means = [row["base"]["mean"], row["adapter"]["mean"]]
        errs = [
            [m - row[k]["low"] for m, k in zip(means, ("base", "adapter"), strict=True)],
            [row[k]["high"] - m for m, k in zip(means, ("base", "adapter"), strict=True)],
        ]
        ax.bar(["base", "adapter"], means, yerr=errs, capsize=6, color=["#9aa5b1", "#2f6fb0"])
        ax.set_title(LABELS.get(name, name), fontsize=8, wrap=True)
    fig.suptitle("Held-out documents: base vs adapter (95% bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(metrics: dict, path: Path) -> Path | None:
    rows = metrics["sweep"]
    if len(rows) < 2:
        return None
    scales = [r["scale"] for r in rows]
    fig, left = plt.subplots(figsize=(6, 3.4))
    nll = [float("nan") if r["answer_nll"] is None else r["answer_nll"] for r in rows]
    left.plot(scales, nll, "o-", color="#2f6fb0", label="answer NLL")
    left.set_xlabel("LoRA strength (0 = base, 1 = as trained)")
    left.set_ylabel("answer NLL (lower is better)", color="#2f6fb0")
    if any(r["choice_accuracy"] is not None for r in rows):
        right = left.twinx()
        accuracy = [r["choice_accuracy"] for r in rows]
        right.plot(scales, accuracy, "s--", color="#c0392b", label="option accuracy")
        right.set_ylabel("option accuracy", color="#c0392b")
    best = metrics.get("best_scale")
    if best is not None:
        left.axvline(best, color="grey", linestyle=":", label=f"best = {best}")
    left.set_title("Strength sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_groups(groups: dict, path: Path, title: str) -> Path | None:
    if not groups:
        return None
    names = list(groups)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.4))
    ys = range(len(names))
    for offset, key, color in ((-0.18, "base", "#9aa5b1"), (0.18, "adapter", "#2f6fb0")):
        means = [groups[n][key]["mean"] for n in names]
        lows = [m - groups[n][key]["low"] for m, n in zip(means, names, strict=True)]
        highs = [groups[n][key]["high"] - m for m, n in zip(means, names, strict=True)]
        ax.barh(
            [y + offset for y in ys],
            means,
            height=0.35,
            xerr=[lows, highs],
            color=color,
            label=key,
            capsize=3,
        )
    ax.set_yticks(list(ys), [f"{n} ({groups[n]['metric']})" for n in names], fontsize=8)
    ax.legend()
    ax.set_title(f"Base vs adapter, {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _group_table(groups: dict) -> list[list[str]]:
    rows = []
    for name, g in groups.items():
        d = g["difference"]
        mark = " ✔" if d["improved"] else " ✘" if d["worse"] else ""
        rows.append(
            [
                name,
                g["metric"],
                str(g["base"]["n"]),
                _interval(g["base"]),
                _interval(g["adapter"]),
                f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]{mark}",
            ]
        )
    return rows


def gate_text(metrics: dict) -> list[str]:
    gate = metrics.get("gate")
    if gate is None:
        return []
    gated = gate.get("gated")
    if gate["passed"] and gated == 0:
        lines = ["no-regression gate: passed, with nothing to gate (every family is too small)"]
    elif gate["passed"]:
        scope = "" if gated is None else f" of {gated} (Holm-corrected)"
        lines = [f"no-regression gate: passed (no task family{scope} significantly worse)"]
    else:
        lines = [f"no-regression gate: FLAGGED ({len(gate['flagged'])} of {gated} families)"]
        lines += [f"WORSE {describe(f)}" for f in gate["flagged"]]
    small = describe_too_small(gate)
    return [*lines, small] if small else lines


def _yes_no_summary(metrics: dict) -> str:
    yes_no = metrics.get("yes_no")
    if not yes_no:
        return ""
    rate = yes_no["yes_rate"]
    return (
        f"{yes_no['n']} held-out yes/no items ({yes_no['n_yes']} Yes, {yes_no['n_no']} No). "
        f"The base answers Yes to {rate['base']:.0%} of them, the adapter to {rate['adapter']:.0%}."
    )


def _track_notes(metrics: dict) -> list[str]:
    """What the recall and general tracks are, and the yes-rates: lines under the headline."""
    notes = []
    recall = metrics.get("recall")
    if recall:
        notes.append(
            f"recall: {recall['n']} closed-book questions about training documents, named by "
            "title, in wordings that no training pair uses (the only items from training "
            "documents)"
        )
    general = metrics.get("general")
    if general:
        topics = ", ".join(t.replace("_", " ") for t in general["by_topic"])
        notes.append(
            f"general: {general['n']} fixed out-of-domain questions ({topics}), each scored by "
            "option likelihood and by the loss of a short reference answer; never trained on, "
            "so a drop is forgetting"
        )
    rates = yes_rate_text(metrics)
    return [*notes, rates] if rates else notes


def _general_groups(metrics: dict) -> dict:
    """The general track per topic, as rows of a group table."""
    general = metrics.get("general") or {"by_topic": {}}
    return {
        f"{topic} ({'NLL' if metric == 'answer_nll' else metric})": row
        for topic, rows in general["by_topic"].items()
        for metric, row in rows.items()
    }


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _interval(stat: dict) -> str:
    return f"{stat['mean']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}]"


GROUP_HEADER = ["group", "metric", "n", "base [95% CI]", "adapter [95% CI]", "adapter − base"]


def render_markdown(metrics: dict, plots: dict[str, Path]) -> str:
    out = [f"# Evaluation: {metrics['recipe']}, adapter {metrics['adapter']}", ""]
    items = metrics["items"]
    out += [
        f"Held-out test documents only ({items['refused_training_documents']} items refused "
        f"because their document was in the training split). {items['choice']} option items, "
        f"{items['open']} open items ({items['generated']} answered by greedy generation), "
        f"{items['sanity']} sanity items, {items.get('general', 0)} general items. "
        f"Seed {metrics['seed']}.",
        "",
        "## Tracks (base → adapter)",
        "",
        *[f"- {line}" for line in track_text(metrics)],
        "",
        "## Headline",
        "",
    ]
    out += [f"- {line}" for line in headline_text(metrics)]
    out += [f"- {line}" for line in _track_notes(metrics)]
    out += ["", "![headline](headline.png)", ""] if "headline.png" in plots else [""]
    out += ["## No-regression gate", "", *[f"- {line}" for line in gate_text(metrics)], ""]
    if metrics.get("yes_no"):
        out += ["## Yes/no questions, per category", "", _yes_no_summary(metrics), ""]
        out += ["| " + " | ".join(GROUP_HEADER) + " |", "|---" * 6 + "|"]
        out += ["| " + " | ".join(r) + " |" for r in _group_table(metrics["yes_no"]["by_category"])]
        out.append("")
    if general := _general_groups(metrics):
        out += ["## General questions, per topic (reported, not gated)", ""]
        out += ["| " + " | ".join(GROUP_HEADER) + " |", "|---" * 6 + "|"]
        out += ["| " + " | ".join(r) + " |" for r in _group_table(general)]
        out.append("")
    out += ["## Strength sweep", "", "| strength | option accuracy | answer NLL |", "|---|---|---|"]
    for r in metrics["sweep"]:
        acc = "–" if r["choice_accuracy"] is None else f"{r['choice_accuracy']:.3f}"
        out.append(f"| {r['scale']} | {acc} | {_num(r['answer_nll'])} |")
    out += ["", f"Best strength: **{metrics['best_scale']}**", ""]
    if "strength.png" in plots:
        out += ["![strength](strength.png)", ""]
    for title, key in (("Per task", "tasks"), ("Per builder", "builders")):
        out += [f"## {title}", "", "| " + " | ".join(GROUP_HEADER) + " |", "|---" * 6 + "|"]
        out += ["| " + " | ".join(r) + " |" for r in _group_table(metrics[key])]
        out.append("")
    out += ["## 10 worst examples (adapter − base token F1)", ""]
    for ex in metrics["worst_examples"]:
        out += [
            f"**{ex['task']}** ({ex['doc_id']}): {ex['question'][:300]}",
            f"- reference: {ex['reference'][:300]}",
            f"- base (F1 {ex['base_f1']:.2f}): {ex['base'][:300]}",
            f"- adapter (F1 {ex['adapter_f1']:.2f}): {ex['adapter'][:300]}",
            "",
        ]
    return "\n".join(out)


def render_html(metrics: dict, plots: dict[str, Path]) -> str:
    esc = html.escape

    def img(name: str) -> str:
        if name not in plots:
            return ""
        data = base64.b64encode(plots[name].read_bytes()).decode()
        return f'<img alt="{name}" src="data:image/png;base64,{data}">'

    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{esc(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    sweep_rows = [
        [
            str(r["scale"]),
            "–" if r["choice_accuracy"] is None else f"{r['choice_accuracy']:.3f}",
            _num(r["answer_nll"]),
        ]
        for r in metrics["sweep"]
    ]
    worst = [
        [
            ex["task"],
            ex["question"][:400],
            ex["reference"][:300],
            ex["base"][:300],
            ex["adapter"][:300],
            f"{ex['base_f1']:.2f} → {ex['adapter_f1']:.2f}",
        ]
        for ex in metrics["worst_examples"]
    ]
    items = metrics["items"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>lexlora eval: {esc(metrics['recipe'])}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
        "line-height:1.4}table{border-collapse:collapse;margin:1em 0;font-size:90%}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}img{max-width:100%}"
        "</style></head><body>",
        f"<h1>Evaluation: {esc(metrics['recipe'])}, adapter {esc(metrics['adapter'])}</h1>",
        f"<p>Held-out test documents only: {items['refused_training_documents']} items refused "
        f"because their document trained the adapter. {items['choice']} option items, "
        f"{items['open']} open items ({items['generated']} generated), {items['sanity']} "
        f"sanity items, {items.get('general', 0)} general items.</p>",
        "<h2>Tracks (base → adapter)</h2><ul>",
        *(f"<li>{esc(line)}</li>" for line in track_text(metrics)),
        "</ul>",
        "<h2>Headline</h2><ul>",
        *(f"<li>{esc(line)}</li>" for line in headline_text(metrics)),
        *(f"<li>{esc(line)}</li>" for line in _track_notes(metrics)),
        "</ul>",
        img("headline.png"),
        "<h2>No-regression gate</h2><ul>",
        *(f"<li>{esc(line)}</li>" for line in gate_text(metrics)),
        "</ul>",
        *(
            [
                "<h2>Yes/no questions, per category</h2>",
                f"<p>{esc(_yes_no_summary(metrics))}</p>",
                table(GROUP_HEADER, _group_table(metrics["yes_no"]["by_category"])),
            ]
            if metrics.get("yes_no")
            else []
        ),
        *(
            [
                "<h2>General questions, per topic (reported, not gated)</h2>",
                table(GROUP_HEADER, _group_table(_general_groups(metrics))),
            ]
            if _general_groups(metrics)
            else []
        ),
        "<h2>Strength sweep</h2>",
        table(["strength", "option accuracy", "answer NLL"], sweep_rows),
        f"<p>Best strength: <b>{metrics['best_scale']}</b></p>",
        img("strength.png"),
        "<h2>Per task</h2>",
        table(GROUP_HEADER, _group_table(metrics["tasks"])),
        img("tasks.png"),
        "<h2>Per builder</h2>",
        table(GROUP_HEADER, _group_table(metrics["builders"])),
        "<h2>10 worst examples</h2>",
        table(["task", "question", "reference", "base", "adapter", "token F1"], worst),
        "</body></html>",
    ]
    return "\n".join(parts)
