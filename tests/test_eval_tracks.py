"""Evaluation tracks: the general (forgetting) set, the sanity sets, the ICD-10-CM recall track."""

from __future__ import annotations

import json
import re
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from lexlora.artifacts.manifest import DataManifest
from lexlora.corpora.document import Document
from lexlora.errors import LexloraError
from lexlora.eval.tasks import (
    CODE_CATEGORY,
    EvalSpec,
    GeneralItem,
    RecallSpec,
    SanityRow,
    load_general,
    load_recall,
    load_spec,
    read_rows,
    spec_path,
)
from lexlora.recipe import REPO_ROOT, load_recipe, validate_recipe

GENERAL = REPO_ROOT / "eval" / "general" / "general.jsonl"
RECIPES = ("legal_contracts", "medical_icd10")
GOOD = {
    "id": "g1",
    "topic": "science",
    "question": "Which planet is closest to the Sun?",
    "choices": ["Venus", "Mercury", "Mars"],
    "answer": "Mercury",
    "reference": "Mercury is closest to the Sun.",
}


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9{}-]+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_shipped_general_set_is_valid_varied_and_used_by_both_recipes():
    rows = read_rows(GENERAL, GeneralItem, unique=("id", "question"))
    assert 60 <= len(rows) <= 80
    topics = Counter(r.topic for r in rows)
    assert len(topics) == 6 and min(topics.values()) >= 8
    positions = Counter(r.choices.index(r.answer) for r in rows)
    assert set(positions) == {0, 1, 2, 3} and max(positions.values()) < 0.4 * len(rows)
    assert all(3 <= len(r.choices) <= 4 and r.reference for r in rows)
    for recipe in RECIPES:
        spec = load_spec(spec_path(recipe, None))
        assert Path(spec.general).resolve() == GENERAL.resolve()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({**GOOD, "answer": "Pluto"}, r":2: field 'answer': expected one of the options"),
        ({**GOOD, "choices": ["Venus", "Mercury"]}, r":2: field 'choices': expected 3 or 4"),
        ({**GOOD, "choices": ["Mars", "mars", "Mercury"]}, r":2: field 'choices': .*distinct"),
        ({**GOOD, "topic": "sport"}, r":2: field 'topic': input should be"),
        ({**GOOD, "colour": "red"}, r":2: unknown key 'colour'"),
        ({**GOOD, "id": "g2"}, r":2: field 'question': same as line 1"),
        ('{"id": "g2",', r":2: invalid JSON"),
    ],
)
def test_a_malformed_general_line_is_a_one_line_error(tmp_path, line, message):
    path = tmp_path / "general.jsonl"
    bad = line if isinstance(line, str) else json.dumps(line)
    path.write_text(json.dumps(GOOD) + "\n" + bad + "\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("")
    with pytest.raises(LexloraError, match=re.escape(str(path)) + message) as err:
        load_general(EvalSpec(tasks={}, general=str(path)), data)
    assert "\n" not in str(err.value)


def test_general_questions_found_in_training_prompts_are_refused(tmp_path):
    rows = read_rows(GENERAL, GeneralItem)
    data = tmp_path / "data"
    data.mkdir()
    chat = {"messages": [{"role": "user", "content": f"Quiz: {rows[0].question}"}], "meta": {}}
    text = {"text": f"Q: {rows[-1].question}\nA: {rows[-1].reference}", "meta": {}}  # plain text
    (data / "train.jsonl").write_text(json.dumps(chat) + "\n" + json.dumps(text) + "\n")
    choice, open_items, refused = load_general(EvalSpec(tasks={}, general=str(GENERAL)), data)
    assert refused == 2 and len(choice) == len(open_items) == len(rows) - 2
    first = rows[1]
    assert choice[0].label == first.answer and choice[0].choices == tuple(first.choices)
    assert "; ".join(first.choices) in choice[0].prompt[-1]["content"]
    assert open_items[0].kind == "open" and open_items[0].reference == first.reference
    assert open_items[0].prompt[-1]["content"] == first.question


class ForgetfulScorer:
    """No model: base and adapter agree on the domain items; on the general items the base is
    right and the adapter wrong, with a higher answer loss (an adapter that forgot)."""

    def __init__(self):
        self.scale: float | None = None

    @contextmanager
    def variant(self, scale):
        previous, self.scale = self.scale, scale
        try:
            yield
        finally:
            self.scale = previous

    def _forgot(self, item) -> bool:
        return self.scale is not None and item.task == "general"

    def choice_logprobs(self, items):
        return [
            [0.0 if (c == i.label) != self._forgot(i) else -5.0 for c in i.choices] for i in items
        ]

    def answer_nll(self, items):
        return [3.0 if self._forgot(i) else 1.0 + 0.1 * (n % 5) for n, i in enumerate(items)]

    def generate(self, items, max_new_tokens):
        return [i.reference for i in items]


def eval_recipe(run: Path, tmp_path: Path, general: Path = GENERAL):
    spec = {
        "tasks": {
            "modality": {"kind": "choice", "max_items": 8},
            "definition": {"kind": "open", "max_items": 6},
        },
        "generation_items": 2,
        "max_new_tokens": 8,
        "general": str(general),
    }
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump(spec))
    raw = yaml.safe_load((run / "recipe.yaml").read_text())
    raw["eval"] = {**raw["eval"], "tasks_file": str(tmp_path / "tasks.yaml"), "sweep": [1.0]}
    return validate_recipe(raw)


def test_forgetting_on_general_questions_is_a_gated_headline_family(tiny_run, tmp_path):
    from lexlora.artifacts.metrics_text import track_text
    from lexlora.cli.common import console, print_headline
    from lexlora.eval.runner import evaluate

    recipe = eval_recipe(tiny_run, tmp_path)
    result = evaluate(
        recipe, ForgetfulScorer(), recipe.dataset_dir, "stub", out_root=tmp_path / "r"
    )
    m = result.metrics
    accuracy, nll = m.headline["general_accuracy"], m.headline["general_answer_nll"]
    assert accuracy.base.mean == 1.0 and accuracy.adapter.mean == 0.0
    assert accuracy.base.n == m.items.general == 72
    assert accuracy.difference.high < 0 and nll.difference.low > 0
    assert nll.perplexity.adapter.mean > nll.perplexity.base.mean
    flagged = {f.family for f in m.gate.flagged}
    assert {"headline general_accuracy", "headline general_answer_nll"} <= flagged
    assert not any(f.startswith("task") for f in flagged)  # domain items: no change
    assert m.tracks["general"] == ["general_accuracy", "general_answer_nll"]
    assert m.tracks["reading"] == ["choice_accuracy"]
    assert set(m.general.by_topic["science"]) == {"accuracy", "answer_nll"}
    saved = json.loads((result.report_dir / "metrics.json").read_text())
    assert saved["headline"]["general_accuracy"]["difference"]["worse"]
    general = next(line for line in track_text(m) if line.text.startswith("general"))
    general_line = general.text
    assert general.tone == "worse"
    assert "option accuracy 1.000 → 0.000" in general_line and "WORSE" in general_line
    report = (result.report_dir / "report.md").read_text()
    assert "## Tracks (base → adapter)" in report and general_line in report
    assert "General questions, per topic" in report and "never trained on" in report
    assert "general option accuracy" in (result.report_dir / "report.html").read_text()
    with console.capture() as capture:
        print_headline(result)
    summary = capture.get()
    assert "tracks (base → adapter, 95% CI of the change)" in summary
    assert "reading (held-out documents" in summary and "general (out-of-domain" in summary


def test_general_track_on_a_tiny_model_has_intervals_and_is_gated(tiny_run, tmp_path):
    from lexlora.eval.local import load_local_scorer
    from lexlora.eval.runner import evaluate

    subset = tmp_path / "general.jsonl"  # 12 of the questions, gated from 10 items: quick
    subset.write_text("".join(GENERAL.read_text().splitlines(keepends=True)[::6]))
    recipe = eval_recipe(tiny_run, tmp_path, subset)
    recipe = recipe.model_copy(
        update={"eval": recipe.eval.model_copy(update={"gate_min_items": 10})}
    )
    scorer = load_local_scorer(recipe.model.base, tiny_run / "adapter")
    m = evaluate(recipe, scorer, recipe.dataset_dir, "tiny", out_root=tmp_path / "r").metrics
    for name in ("general_accuracy", "general_answer_nll"):
        row = m.headline[name]
        for side in (row.base, row.adapter):
            assert side.low <= side.mean <= side.high
        diff = row.difference
        assert diff.low <= diff.mean <= diff.high and 0 < diff.p_worse <= 1
        assert row.base.n == 12
    small = {s.family for s in m.gate.too_small}
    assert not small & {"headline general_accuracy", "headline general_answer_nll"}
    assert m.gate.min_items == 10


def corpus_ids(recipe: str) -> set[str]:
    if recipe == "legal_contracts":
        from lexlora.corpora.licenses import find_licenses_dir

        return {f"licenses:{p.stem}" for p in find_licenses_dir().glob("*.LICENSE")}
    from lexlora.corpora.icd10cm import read_icd10cm_documents

    return {d.id for d in read_icd10cm_documents()}


@pytest.mark.parametrize("recipe", RECIPES)
def test_sanity_sets_are_large_balanced_and_about_held_out_documents(recipe):
    spec = load_spec(spec_path(recipe, None))
    rows = read_rows(Path(spec.sanity), SanityRow, unique=("question",))
    assert len(rows) >= 200
    counts = Counter((r.about, r.answer) for r in rows)
    abouts = {r.about for r in rows}
    assert len(abouts) >= 3
    assert all(counts[(a, "Yes")] == counts[(a, "No")] for a in abouts)
    assert all(r.choices == ["Yes", "No"] for r in rows)
    assert {r.doc_id for r in rows} <= corpus_ids(recipe)
    manifest = REPO_ROOT / "data" / recipe / "manifest.json"
    if manifest.is_file():  # a local build: what load_sanity refuses
        try:
            train = set(json.loads(manifest.read_text())["split"]["doc_ids"]["train"])
        except (OSError, ValueError, KeyError):
            return  # a build being written
        assert sum(r.doc_id not in train for r in rows) >= 200


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_sanity_documents_are_held_out_by_the_default_split(recipe, tmp_path):
    """The split is recomputed as `lexlora data` computes it (~10-20 s per corpus)."""
    import importlib.util

    path = REPO_ROOT / "scripts" / "make_sanity_sets.py"
    module_spec = importlib.util.spec_from_file_location("make_sanity_sets", path)
    script = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(script)
    cfg = load_recipe(recipe)
    corpora = REPO_ROOT / "corpora"  # fetched there, or else into tmp_path
    corpora = corpora if (corpora / cfg.data.corpus / "documents.jsonl").is_file() else tmp_path
    held_out = {d.id for d in script.held_out_documents(cfg, corpora)}
    rows = read_rows(REPO_ROOT / "eval" / "sanity" / f"{recipe}.jsonl", SanityRow)
    assert sum(r.doc_id in held_out for r in rows) == len(rows) >= 200


def template_questions() -> set[str]:
    """What the builders ask, with placeholder values: the knowledge templates, the taxonomy's
    questions and the ICD builders' questions about a document with one code and every note."""
    from lexlora.data.builders import BuildContext, DocumentView, icd10
    from lexlora.data.builders.knowledge import LABEL_TEMPLATES, PRESENCE_TEMPLATES
    from lexlora.recipe import BuilderConfig
    from lexlora.taxonomy import load_taxonomy

    out = {t.format(title="T", absent="A", value="V", noun="N") for t in PRESENCE_TEMPLATES}
    out |= {t.format(title="T", value="V", noun="N") for t in LABEL_TEMPLATES}
    out |= {c.question("T") for c in load_taxonomy("licenses").categories}
    notes = "\n".join(f"    {label}: a note" for label in icd10.NOTE_QUESTIONS)
    text = f"T\nChapter 1: C\n\nQ99 Parent condition\n  Q99.9 Placeholder condition\n{notes}"
    doc = Document(id="icd10cm:Q99", title="T", text=text, source="s", licence="l")
    view, ctx = DocumentView(doc, split="train"), BuildContext("", 0)
    for build in (icd10.build_code_to_description, icd10.build_description_to_code):
        out |= {p.question for p in build(view, BuilderConfig(), ctx)}
    out |= {p.question for p in icd10.build_notes(view, BuilderConfig(), ctx)}
    assert any("Q99.9" in q for q in out) and len(out) > 20
    return out


def test_shipped_wordings_share_no_phrase_with_the_builders():
    """Neither the medical recall wordings nor any sanity question shares five consecutive words
    with a training template (filled with the same placeholder values)."""
    theirs = set().union(*(shingles(q) for q in template_questions()))
    spec = load_spec(spec_path("medical_icd10", None))
    assert spec.recall is not None and len(spec.recall.code) >= 2
    ours = [t.format(code="Q99.9", description="Placeholder condition") for t in spec.recall.code]
    assert all(not shingles(w) & theirs for w in ours)
    for recipe in RECIPES:
        rows = read_rows(Path(load_spec(spec_path(recipe, None)).sanity), SanityRow)
        clashes = [r.question for r in rows if shingles(r.question) & theirs]
        assert not clashes, clashes[:3]


@pytest.fixture(scope="module")
def icd_data(tmp_path_factory) -> Path:
    """A small ICD-10-CM build (30 blocks; the code builders only) from the installed corpus."""
    from lexlora.data.build import build_dataset

    tmp = tmp_path_factory.mktemp("icd")
    raw = yaml.safe_load((REPO_ROOT / "recipes" / "medical_icd10.yaml").read_text())
    builders = raw["data"]["builders"]
    raw["data"]["builders"] = {k: builders[k] for k in builders if k.startswith("icd_")}
    raw["data"].update(max_documents=30, output_dir=str(tmp / "data"))
    recipe = validate_recipe(raw)
    build_dataset(recipe, corpora_dir=tmp / "corpora")
    return recipe.dataset_dir


def write_spec(tmp_path: Path, spec: dict) -> Path:
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "tasks.yaml"


def test_icd_recall_asks_training_codes_balanced_in_held_out_wordings(icd_data, tmp_path):
    from lexlora.corpora.icd10cm import CODE_LINE_RE

    spec = load_spec(spec_path("medical_icd10", None))
    options = {"icd_code_to_description": {}, "icd_description_to_code": {}}
    items = load_recall(spec, icd_data, options)
    labels = Counter(i.label for i in items)
    assert labels["Yes"] == labels["No"] >= 20
    train = [json.loads(line) for line in (icd_data / "train.jsonl").read_text().splitlines()]
    questions = {m["content"] for r in train for m in r["messages"] if m["role"] == "user"}
    train_docs = DataManifest.read(icd_data).training_documents()
    documents = (icd_data / "documents.jsonl").read_text().splitlines()
    lines = {
        d["id"]: {m[2]: m[3].strip() for m in map(CODE_LINE_RE.match, d["text"].split("\n")) if m}
        for d in map(json.loads, documents)
    }
    patterns = [
        re.escape(f"{t} {spec.recall.suffix}")
        .replace(r"\{code\}", r"(?P<code>\S+)")
        .replace(r"\{description\}", "(?P<description>.+)")
        for t in spec.recall.code
    ]
    for item in items:
        question = item.prompt[-1]["content"]
        assert item.doc_id in train_docs and question not in questions
        assert item.category == CODE_CATEGORY and item.choices == ("Yes", "No")
        match = next(m for p in patterns if (m := re.fullmatch(p, question)))
        own = lines[item.doc_id][match["code"]]
        assert (own == match["description"]) == (item.label == "Yes")
        if item.label == "No":  # another code's description, from the same block
            assert match["description"] in lines[item.doc_id].values()
    # a code-wording list is one schema with the others: placeholders are checked
    with pytest.raises(ValueError, match=r"expected the placeholders \{code\}, \{description\}"):
        RecallSpec(code=["Is {code} right?"])
    with pytest.raises(LexloraError, match=r"field 'recall.label': .*placeholders"):
        load_spec(
            write_spec(tmp_path, {"tasks": {}, "recall": {"label": ["Is {title} {colour}?"]}})
        )
