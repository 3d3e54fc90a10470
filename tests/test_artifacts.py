"""The typed files stages hand each other: read back as written, a damaged one is a one-line
error naming the file and the field, and the report says the same in markdown and HTML."""

from __future__ import annotations

import html
import json
import re

import pytest

from lexlora.artifacts.gate import GATE_FILE, GateVerdict
from lexlora.artifacts.manifest import MANIFEST, REQUIRED_FILES, DataManifest
from lexlora.artifacts.metrics import EvalMetrics, Example, ItemCounts, SweepPoint
from lexlora.errors import LexloraError
from lexlora.eval.gate import gate_verdict
from lexlora.eval.report import render_html, render_markdown, report_blocks
from lexlora.eval.scores import comparison


def metrics() -> EvalMetrics:
    worse = comparison([0.0] * 20 + [1.0] * 20, [1.0] * 40, "accuracy")
    better = comparison([1.0] * 40, [0.0] * 10 + [1.0] * 30, "accuracy")
    headline = {"choice_accuracy": better, "sanity_accuracy": worse}
    m = EvalMetrics(
        recipe="r",
        adapter="run x",
        created_at="2026-12-02T00:00:00+00:00",
        seed=0,
        items=ItemCounts(
            choice=40,
            open=0,
            generated=1,
            sanity=40,
            recall=0,
            general=0,
            refused_training_documents=0,
            refused_general_in_training=0,
            by_task={"clause": 40},
        ),
        headline=headline,
        tracks={"reading": ["choice_accuracy"]},
        tasks={"clause": better},
        builders={"clause_presence (choice)": better},
        sweep=[SweepPoint(scale=0.0, answer_nll=1.0), SweepPoint(scale=1.0, answer_nll=0.9)],
        best_scale=1.0,
        worst_examples=[
            Example(
                task="t",
                doc_id="d",
                question="Is it | yes?",
                reference="Yes.",
                base="No.",
                adapter="<b>Yes</b>",
                base_f1=0.0,
                adapter_f1=1.0,
            )
        ],
    )
    m.gate = gate_verdict(m.tasks, m.headline)
    return m


def test_metrics_round_trip_and_the_gate_flags_the_worse_family(tmp_path):
    m = metrics()
    assert not m.gate.passed and [f.family for f in m.gate.flagged] == ["headline sanity_accuracy"]
    m.save(tmp_path)
    assert EvalMetrics.load(tmp_path / "metrics.json") == m
    m.gate.save(tmp_path, tmp_path / "report")
    assert GateVerdict.load(tmp_path).report == str(tmp_path / "report")


def test_markdown_and_html_reports_say_the_same():
    """Every line of the markdown report (its text, without markdown syntax) is in the HTML."""
    m = metrics()
    md, page = render_markdown(m, {}), render_html(m, {})
    text = html.unescape(re.sub(r"<[^>]+>", "\n", page))
    for block in report_blocks(m):
        for piece in getattr(block, "lines", None) or [getattr(block, "text", "")]:
            if piece:
                assert piece in text, piece
                assert " ".join(piece.split()) in md.replace("\\|", "|"), piece
    assert "| Is it \\| yes? |" in md  # a pipe inside a table cell is escaped
    assert "&lt;b&gt;Yes&lt;/b&gt;" in page and "<b>Yes</b>" not in page


def test_a_damaged_gate_file_is_one_line_naming_it(tmp_path):
    assert GateVerdict.load(tmp_path) is None  # never evaluated
    (tmp_path / GATE_FILE).write_text('{"passed": true}')  # no "flagged"
    with pytest.raises(LexloraError, match=rf"{GATE_FILE}: unreadable gate verdict"):
        GateVerdict.load(tmp_path)


def test_a_manifest_of_another_shape_names_its_field(tmp_path):
    for name in REQUIRED_FILES:
        (tmp_path / name).write_text("")
    files = {name: "0" * 64 for name in REQUIRED_FILES}
    (tmp_path / MANIFEST).write_text(json.dumps({"recipe": "r", "files": files}))
    with pytest.raises(LexloraError) as err:
        DataManifest.load(tmp_path, "r")
    message = str(err.value)
    assert "\n" not in message and MANIFEST in message and "recipe_hash" in message
    assert "lexlora data r" in message
