"""``lexlora data RECIPE``: documents → cleaned, scrubbed, split, instruction pairs on disk.

Reads top to bottom: load → clean → scrub → deduplicate → split by document → build pairs →
weight the training split → leakage check → write ``data/RECIPE/{train,validation,test}.jsonl``,
``documents.jsonl`` and ``manifest.json`` (with every file's sha256). Same inputs and seed give
byte-identical files. The files are written into a staging folder next to ``data/RECIPE`` that
replaces it in one step: a build killed at any point leaves the previous build or the new one.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from lexlora import __version__
from lexlora.artifacts.manifest import (
    CorpusInfo,
    DataManifest,
    DocumentCounts,
    LeakageSummary,
    PairCounts,
    ScrubSummary,
    SplitSummary,
)
from lexlora.artifacts.pairs import Pair
from lexlora.corpora.catalog import CorpusReadReport, corpus_manifest, load_documents
from lexlora.corpora.document import Document
from lexlora.data.builders import (
    BuildContext,
    DocumentView,
    clause_presence,
    get_builder,
    teacher,
)
from lexlora.data.clean import clean_text, compile_boilerplate, find_duplicates
from lexlora.data.leakage import measure_leakage
from lexlora.data.scrub import scrub_text
from lexlora.data.split import SPLITS, split_by_document
from lexlora.errors import LexloraError
from lexlora.io import (
    atomic_directory,
    check_directory_target,
    dumps_canonical,
    sha256_file,
    sha256_text,
    write_jsonl,
)
from lexlora.recipe import DataConfig, Recipe

MAX_LABEL_VALUES = 64
Progress = Callable[[int, int], None]  # (documents done, documents in all): a Bar's update


def build_dataset(
    recipe: Recipe, corpora_dir: Path = Path("corpora"), progress: Progress | None = None
) -> DataManifest:
    """Build the recipe's dataset and return its manifest (also written to ``manifest.json``)."""
    cfg = recipe.data
    builders = {name: get_builder(name) for name, b in cfg.builders.items() if b.enabled}
    if not builders:
        raise LexloraError(f"recipe '{recipe.name}': data.builders enables no builder")
    corpus = corpus_manifest(cfg.corpus)
    out = check_directory_target(recipe.dataset_dir, replace=True)

    report = CorpusReadReport()
    max_file_bytes = int(cfg.max_file_mb * 1_000_000)
    raw_docs = load_documents(cfg.corpus, corpora_dir, cfg.path, report, max_file_bytes)
    raw_docs = sorted(raw_docs, key=_doc_key)
    raw_docs = _limit(raw_docs, cfg.max_documents, cfg.split.seed)
    if not raw_docs:
        raise LexloraError(f"corpus '{cfg.corpus}': no documents to build from")
    sources_sha256 = sha256_text(dumps_canonical([[d.id, sha256_text(d.text)] for d in raw_docs]))

    docs, skipped, warnings, scrub_counts = _clean_and_scrub(raw_docs, cfg)
    docs, duplicates = drop_duplicates(docs, cfg)
    if not docs:
        raise LexloraError(f"corpus '{cfg.corpus}': every document was skipped ({dict(skipped)})")

    strata, assignment = assign_splits(docs, cfg)

    ctx = BuildContext(cfg.system_prompt, cfg.split.seed, _label_values(docs))
    pairs: dict[str, list[Pair]] = {split: [] for split in SPLITS}
    try:
        for i, doc in enumerate(docs):
            view = DocumentView(doc, split=assignment[doc.id])
            for name, build in builders.items():
                pairs[assignment[doc.id]].extend(build(view, cfg.builders[name], ctx))
            if progress is not None:
                progress(i + 1, len(docs))
    finally:
        teacher_summary = teacher.finish(ctx)
    presence_summary = clause_presence.finish(ctx)
    balanced_out = {}
    for split in SPLITS:
        pairs[split], balanced_out[split] = _balance(pairs[split], cfg, split)
    pairs["train"] = _weight_training_pairs(pairs["train"], cfg)
    # Plain-text rows (reading) are training material only: evaluation reads chat pairs.
    assert not any(p.is_text for split in ("validation", "test") for p in pairs[split])

    leakage = measure_leakage(
        (text for p in pairs["train"] for text in p.contents),
        (p.answer for p in pairs["test"]),
        n=cfg.leakage.ngram,
        max_overlap=cfg.leakage.max_overlap,
    )
    if not leakage.passed:
        raise LexloraError(
            f"recipe '{recipe.name}': leakage check failed: test answers share "
            f"{leakage.mean_overlap:.0%} of their {cfg.leakage.ngram}-grams with the training "
            f"split on average, above data.leakage.max_overlap={cfg.leakage.max_overlap}"
        )

    manifest = DataManifest(
        recipe=recipe.name,
        recipe_hash=recipe.hash(),
        data_hash=recipe.data_hash(),
        lexlora_version=__version__,
        corpus=CorpusInfo(
            name=corpus.name,
            package=corpus.package,
            version=corpus.version,
            licence=corpus.licence,
            path=cfg.path,
            sources_sha256=sources_sha256,
        ),
        documents=DocumentCounts(
            read=len(raw_docs) + sum(report.skipped.values()),
            skipped=dict(sorted((Counter(report.skipped) + skipped).items())),
            duplicates=dict(sorted(Counter(d.kind for d in duplicates).items())),
            kept=len(docs),
            warnings=[*report.warnings, *warnings][:200],
            duplicate_of={d.doc_id: d.duplicate_of for d in duplicates},
        ),
        scrub=ScrubSummary(enabled=cfg.scrub.enabled, replacements=scrub_counts),
        split=_split_summary(assignment, strata, cfg),
        pairs=PairCounts(**_pair_counts(pairs), dropped_to_balance=balanced_out),
        leakage=LeakageSummary(**leakage.as_dict()),
        teacher=teacher_summary,
        clause_presence=presence_summary,
    )
    with atomic_directory(out, replace=True) as staging:
        files = {}
        for split in SPLITS:
            files[f"{split}.jsonl"] = _write_rows(
                staging / f"{split}.jsonl", (p.model_dump(mode="json") for p in pairs[split])
            )
        files["documents.jsonl"] = _write_rows(
            staging / "documents.jsonl",
            ({**d.model_dump(mode="json"), "split": assignment[d.id]} for d in docs),
        )
        manifest.files = files
        manifest.save(staging)
    return manifest


def drop_duplicates(docs: list[Document], cfg: DataConfig) -> tuple[list[Document], list]:
    """The documents left after exact and near-duplicate removal (``data.clean``), and the
    duplicates found (none when ``dedup`` is off)."""
    if not cfg.clean.dedup:
        return docs, []
    duplicates = find_duplicates(
        [(d.id, d.text) for d in docs],
        threshold=cfg.clean.near_duplicate_threshold,
        num_perm=cfg.clean.minhash_num_perm,
        shingle_words=cfg.clean.shingle_words,
    )
    dropped = {d.doc_id for d in duplicates}
    return [d for d in docs if d.id not in dropped], duplicates


def assign_splits(docs: list[Document], cfg: DataConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Each document's stratum and split (``data.split``: seeded, stratified, by document)."""
    strata = {d.id: _stratum(d, cfg.split.stratify_by) for d in docs}
    split = cfg.split
    return strata, split_by_document(strata, split.validation, split.test, split.seed)


def _write_rows(path: Path, rows) -> str:
    """Write JSONL rows; return the file's sha256 (what readers check against the manifest)."""
    write_jsonl(path, rows)
    return sha256_file(path)


def _doc_key(doc: Document) -> str:
    return doc.id


def _limit(docs: list[Document], max_documents: int | None, seed: int) -> list[Document]:
    if max_documents is None or len(docs) <= max_documents:
        return docs
    keep = sorted(random.Random(f"{seed}:limit").sample(range(len(docs)), max_documents))
    return [docs[i] for i in keep]


def _clean_and_scrub(docs: list[Document], cfg: DataConfig):
    """Clean every document, scrub personal data, and skip the empty or too short ones."""
    try:
        boilerplate = compile_boilerplate(cfg.clean.boilerplate_patterns)
    except re.error as exc:
        raise LexloraError(f"data.clean.boilerplate_patterns: invalid regex ({exc})") from None
    kept, skipped, warnings = [], Counter(), []
    scrub_counts: Counter[str] = Counter()
    for doc in docs:
        text = clean_text(doc.text, cfg.clean.unicode_form, boilerplate)
        reason = (
            "empty"
            if not text.strip()
            else "too-short"
            if len(text) < cfg.clean.min_chars
            else None
        )
        if reason:
            skipped[reason] += 1
            warnings.append(f"{doc.id}: skipped ({reason})")
            continue
        if cfg.scrub.enabled:
            result = scrub_text(text, cfg.scrub.types)
            text = result.text
            scrub_counts.update(result.counts)
        kept.append(doc.model_copy(update={"text": text}))
    counts = (
        {k: scrub_counts.get(k, 0) for k in sorted(cfg.scrub.types)} if cfg.scrub.enabled else {}
    )
    return kept, skipped, warnings, counts


def _stratum(doc: Document, field: str | None) -> str:
    if field is None:
        return "all"
    value = doc.metadata.get(field)
    return "unknown" if value is None else str(value)


def _label_values(docs: list[Document]) -> dict[str, list[str]]:
    """Distinct values of each short string metadata field: the options of classification pairs."""
    values: dict[str, set[str]] = defaultdict(set)
    for doc in docs:
        for key, value in doc.metadata.items():
            if isinstance(value, str) and len(value) <= 80:
                values[key].add(value)
    return {k: sorted(v) for k, v in values.items() if 1 < len(v) <= MAX_LABEL_VALUES}


def _balance(pairs: list[Pair], cfg: DataConfig, split: str) -> tuple[list[Pair], int]:
    """For builders with ``balance``: per (builder, task, category), keep a seeded sample of each
    label's documents as large as the rarest label's; a group that lacks one of its options (all
    No, say) is dropped whole. A document's pairs for one label (several wordings of one fact)
    are kept or dropped together. Returns the kept pairs (in order) and how many were dropped."""
    groups: dict[tuple, dict[str, dict[str, list[int]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    options: dict[tuple, set[str]] = defaultdict(set)
    for i, p in enumerate(pairs):
        bcfg = cfg.builders.get(p.meta.builder)
        if bcfg is not None and bcfg.balance and p.meta.label is not None:
            key = (p.meta.builder, p.meta.task, p.meta.category or "")
            groups[key][p.meta.label][p.meta.doc_id].append(i)
            options[key].update(p.meta.choices or [p.meta.label])
    drop: set[int] = set()
    for key, by_label in sorted(groups.items()):
        least = min(len(docs) for docs in by_label.values()) if options[key] <= set(by_label) else 0
        rng = random.Random(f"{cfg.split.seed}:balance:{split}:{':'.join(key)}")
        for _label, docs in sorted(by_label.items()):
            if len(docs) > least:
                for rows in rng.sample(list(docs.values()), len(docs) - least):
                    drop.update(rows)
    return [p for i, p in enumerate(pairs) if i not in drop], len(drop)


def _weight_training_pairs(pairs: list[Pair], cfg: DataConfig) -> list[Pair]:
    """Repeat (weight > 1) or subsample (weight < 1) each builder's training pairs, seeded."""
    weighted = []
    for name, bcfg in cfg.builders.items():
        own = [p for p in pairs if p.meta.builder == name]
        whole, frac = divmod(bcfg.weight, 1.0)
        extra = round(frac * len(own))
        rng = random.Random(f"{cfg.split.seed}:weight:{name}")
        keep = set(rng.sample(range(len(own)), extra)) if extra else set()
        for i, pair in enumerate(own):
            weighted.extend([pair] * (int(whole) + (i in keep)))
    return weighted


def _split_summary(
    assignment: dict[str, str], strata: dict[str, str], cfg: DataConfig
) -> SplitSummary:
    by_stratum: dict[str, Counter[str]] = defaultdict(Counter)
    doc_ids: dict[str, list[str]] = {split: [] for split in SPLITS}
    for doc_id in sorted(assignment):
        split = assignment[doc_id]
        by_stratum[strata[doc_id]][split] += 1
        doc_ids[split].append(doc_id)
    return SplitSummary(
        seed=cfg.split.seed,
        stratify_by=cfg.split.stratify_by,
        fractions={"validation": cfg.split.validation, "test": cfg.split.test},
        documents={split: len(ids) for split, ids in doc_ids.items()},
        by_stratum={
            s: {split: c.get(split, 0) for split in SPLITS} for s, c in sorted(by_stratum.items())
        },
        doc_ids=doc_ids,
    )


def _pair_counts(pairs: dict[str, list[Pair]]) -> dict:
    by_builder: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    by_task: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for split, rows in pairs.items():
        for p in rows:
            by_builder[p.meta.builder][split] += 1
            by_task[p.meta.task][split] += 1
    return {
        "total": {split: len(rows) for split, rows in pairs.items()},
        "by_builder": dict(sorted(by_builder.items())),
        "by_task": dict(sorted(by_task.items())),
    }
