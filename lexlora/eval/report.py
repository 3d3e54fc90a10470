"""The evaluation report: ``metrics.json``, PNG plots, ``report.md`` and a self-contained
``report.html`` (plots embedded), written to a temporary folder and renamed into place.

The report is built once as a list of blocks (:func:`report_blocks`: headings, paragraphs,
bullet lines, tables, plots) and rendered to markdown and to HTML from those same blocks, so the
two always say the same. Each summary line carries its tone (better, worse, neutral), which the
terminal uses for colour.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lexlora.artifacts.metrics import Comparison, EvalMetrics, Stat
from lexlora.artifacts.metrics_text import (
    LABELS,
    gate_text,
    headline_text,
    track_text,
    yes_rate_text,
)
from lexlora.io import atomic_directory


def write_report(report_dir: Path, metrics: EvalMetrics) -> Path:
    with atomic_directory(report_dir, replace=True) as tmp:
        metrics.save(tmp)
        plots = {
            "headline.png": plot_headline(metrics, tmp / "headline.png"),
            "strength.png": plot_sweep(metrics, tmp / "strength.png"),
            "tasks.png": plot_groups(metrics.tasks, tmp / "tasks.png", "per task"),
        }
        plots = {name: path for name, path in plots.items() if path is not None}
        (tmp / "report.md").write_text(render_markdown(metrics, plots), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(metrics, plots), encoding="utf-8")
    return report_dir


def plot_headline(metrics: EvalMetrics, path: Path) -> Path | None:
    rows = metrics.headline
    if not rows:
        return None
    ncols = min(3, len(rows))
    nrows = -(-len(rows) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(rows) :]:
        ax.set_visible(False)
    for ax, (name, row) in zip(axes.flat, rows.items(), strict=False):
        stats = (row.base, row.adapter)
        means = [stat.mean for stat in stats]
        errs = [[stat.mean - stat.low for stat in stats], [stat.high - stat.mean for stat in stats]]
        ax.bar(["base", "adapter"], means, yerr=errs, capsize=6, color=["#9aa5b1", "#2f6fb0"])
        ax.set_title(LABELS.get(name, name), fontsize=8, wrap=True)
    fig.suptitle("Held-out documents: base vs adapter (95% bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(metrics: EvalMetrics, path: Path) -> Path | None:
    rows = metrics.sweep
    if len(rows) < 2:
        return None
    scales = [r.scale for r in rows]
    fig, left = plt.subplots(figsize=(6, 3.4))
    nll = [float("nan") if r.answer_nll is None else r.answer_nll for r in rows]
    left.plot(scales, nll, "o-", color="#2f6fb0", label="answer NLL")
    left.set_xlabel("LoRA strength (0 = base, 1 = as trained)")
    left.set_ylabel("answer NLL (lower is better)", color="#2f6fb0")
    if any(r.choice_accuracy is not None for r in rows):
        right = left.twinx()
        accuracy = [r.choice_accuracy for r in rows]
        right.plot(scales, accuracy, "s--", color="#c0392b", label="option accuracy")
        right.set_ylabel("option accuracy", color="#c0392b")
    best = metrics.best_scale
    if best is not None:
        left.axvline(best, color="grey", linestyle=":", label=f"best = {best}")
    left.set_title("Strength sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_groups(groups: dict[str, Comparison], path: Path, title: str) -> Path | None:
    if not groups:
        return None
    names = list(groups)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.4))
    ys = range(len(names))
    for offset, key, color in ((-0.18, "base", "#9aa5b1"), (0.18, "adapter", "#2f6fb0")):
        stats = [getattr(groups[n], key) for n in names]
        means = [stat.mean for stat in stats]
        lows = [stat.mean - stat.low for stat in stats]
        highs = [stat.high - stat.mean for stat in stats]
        ax.barh(
            [y + offset for y in ys],
            means,
            height=0.35,
            xerr=[lows, highs],
            color=color,
            label=key,
            capsize=3,
        )
    ax.set_yticks(list(ys), [f"{n} ({groups[n].metric})" for n in names], fontsize=8)
    ax.legend()
    ax.set_title(f"Base vs adapter, {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _group_table(groups: dict[str, Comparison]) -> list[list[str]]:
    rows = []
    for name, g in groups.items():
        d = g.difference
        mark = " ✔" if d.improved else " ✘" if d.worse else ""
        rows.append(
            [
                name,
                g.metric,
                str(g.base.n),
                _interval(g.base),
                _interval(g.adapter),
                f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]{mark}",
            ]
        )
    return rows


def _yes_no_summary(metrics: EvalMetrics) -> str:
    yes_no = metrics.yes_no
    if not yes_no:
        return ""
    rate = yes_no.yes_rate
    return (
        f"{yes_no.n} held-out yes/no items ({yes_no.n_yes} Yes, {yes_no.n_no} No). "
        f"The base answers Yes to {rate.base:.0%} of them, the adapter to {rate.adapter:.0%}."
    )


def _track_notes(metrics: EvalMetrics) -> list[str]:
    """What the recall and general tracks are, and the yes-rates: lines under the headline."""
    notes = []
    recall = metrics.recall
    if recall:
        notes.append(
            f"recall: {recall.n} closed-book questions about training documents, named by "
            "title, in wordings that no training pair uses (the only items from training "
            "documents)"
        )
    general = metrics.general
    if general:
        topics = ", ".join(t.replace("_", " ") for t in general.by_topic)
        notes.append(
            f"general: {general.n} fixed out-of-domain questions ({topics}), each scored by "
            "option likelihood and by the loss of a short reference answer; never trained on, "
            "so a drop is forgetting"
        )
    rates = yes_rate_text(metrics)
    return [*notes, rates] if rates else notes


def _general_groups(metrics: EvalMetrics) -> dict[str, Comparison]:
    """The general track per topic, as rows of a group table."""
    by_topic = metrics.general.by_topic if metrics.general else {}
    return {
        f"{topic} ({'NLL' if metric == 'answer_nll' else metric})": row
        for topic, rows in by_topic.items()
        for metric, row in rows.items()
    }


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _interval(stat: Stat) -> str:
    return f"{stat.mean:.3f} [{stat.low:.3f}, {stat.high:.3f}]"


GROUP_HEADER = ["group", "metric", "n", "base [95% CI]", "adapter [95% CI]", "adapter − base"]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    lines: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Plot:
    name: str  # a file name in the report folder


Block = Heading | Paragraph | Bullets | Table | Plot


def report_blocks(metrics: EvalMetrics) -> list[Block]:
    """The whole report, once, as blocks (rendered by :func:`render_markdown` and
    :func:`render_html`)."""
    items = metrics.items
    blocks: list[Block] = [
        Heading(f"Evaluation: {metrics.recipe}, adapter {metrics.adapter}", 1),
        Paragraph(
            f"Held-out test documents only ({items.refused_training_documents} items refused "
            f"because their document was in the training split). {items.choice} option "
            f"items, {items.open} open items ({items.generated} answered by greedy "
            f"generation), {items.sanity} sanity items, {items.general} general "
            f"items. Seed {metrics.seed}."
        ),
        Heading("Tracks (base → adapter)"),
        Bullets([line.text for line in track_text(metrics)]),
        Heading("Headline"),
        Bullets([line.text for line in headline_text(metrics)] + _track_notes(metrics)),
        Plot("headline.png"),
        Heading("No-regression gate"),
        Bullets([line.text for line in gate_text(metrics.gate)]),
    ]
    if metrics.yes_no:
        blocks += [
            Heading("Yes/no questions, per category"),
            Paragraph(_yes_no_summary(metrics)),
            Table(GROUP_HEADER, _group_table(metrics.yes_no.by_category)),
        ]
    if general := _general_groups(metrics):
        blocks += [
            Heading("General questions, per topic (reported, not gated)"),
            Table(GROUP_HEADER, _group_table(general)),
        ]
    sweep = [
        [
            str(r.scale),
            "–" if r.choice_accuracy is None else f"{r.choice_accuracy:.3f}",
            _num(r.answer_nll),
        ]
        for r in metrics.sweep
    ]
    blocks += [
        Heading("Strength sweep"),
        Table(["strength", "option accuracy", "answer NLL"], sweep),
        Paragraph(f"Best strength: {metrics.best_scale}"),
        Plot("strength.png"),
        Heading("Per task"),
        Table(GROUP_HEADER, _group_table(metrics.tasks)),
        Plot("tasks.png"),
        Heading("Per builder"),
        Table(GROUP_HEADER, _group_table(metrics.builders)),
        Heading("10 worst examples (adapter − base token F1)"),
        Table(
            ["task", "document", "question", "reference", "base", "adapter", "token F1"],
            [
                [
                    ex.task,
                    ex.doc_id,
                    ex.question[:300],
                    ex.reference[:300],
                    ex.base[:300],
                    ex.adapter[:300],
                    f"{ex.base_f1:.2f} → {ex.adapter_f1:.2f}",
                ]
                for ex in metrics.worst_examples
            ],
        ),
    ]
    return blocks


def render_markdown(metrics: EvalMetrics, plots: dict[str, Path]) -> str:
    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|")

    out: list[str] = []
    for block in report_blocks(metrics):
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            out += [block.text, ""]
        elif isinstance(block, Bullets):
            out += [*(f"- {line}" for line in block.lines), ""]
        elif isinstance(block, Table):
            out += ["| " + " | ".join(block.header) + " |", "|---" * len(block.header) + "|"]
            out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in block.rows]
            out.append("")
        elif block.name in plots:
            out += [f"![{Path(block.name).stem}]({block.name})", ""]
    return "\n".join(out)


def render_html(metrics: EvalMetrics, plots: dict[str, Path]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>lexlora eval: {esc(metrics.recipe)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
        "line-height:1.4}table{border-collapse:collapse;margin:1em 0;font-size:90%}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}img{max-width:100%}"
        "</style></head><body>",
    ]
    for block in report_blocks(metrics):
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts.append(
                "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in block.lines) + "</ul>"
            )
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows
            )
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif block.name in plots:
            data = base64.b64encode(plots[block.name].read_bytes()).decode()
            parts.append(f'<img alt="{esc(block.name)}" src="data:image/png;base64,{data}">')
    parts.append("</body></html>")
    return "\n".join(parts)
