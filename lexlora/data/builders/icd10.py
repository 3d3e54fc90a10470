"""ICD-10-CM builders over the ``icd10cm`` corpus's line format (see ``lexlora.corpora.icd10cm``).

- ``icd_code_to_description``: "What does ICD-10-CM code A01.0 describe?" → "A01.0: Typhoid fever";
- ``icd_description_to_code``: "Which ICD-10-CM code is used for 'Typhoid fever'?" → "A01.0";
- ``icd_notes``: Excludes1/Excludes2/Code first/Use additional code/Includes questions about a code
  → the notes listed under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lexlora.artifacts.pairs import Pair, make_pair
from lexlora.corpora.icd10cm import CODE_LINE_RE, NOTE_LINE_RE
from lexlora.data.builders.base import BuildContext, DocumentView, pick
from lexlora.recipe import BuilderConfig

NOTE_QUESTIONS = {
    "Excludes1": "Which conditions does ICD-10-CM code {code} ({desc}) exclude (Excludes1)?",
    "Excludes2": "Which conditions are not included in ICD-10-CM code {code} ({desc}) but may be "
    "coded with it (Excludes2)?",
    "Code first": "What should be coded first when using ICD-10-CM code {code} ({desc})?",
    "Use additional code": "What additional code should be used with ICD-10-CM code {code} "
    "({desc})?",
    "Includes": "What does ICD-10-CM code {code} ({desc}) include?",
    "Inclusion term": "Which inclusion terms are listed under ICD-10-CM code {code} ({desc})?",
}


@dataclass
class CodeEntry:
    code: str
    desc: str
    start: int  # span of the code line
    end: int
    notes: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)


def parse_codes(text: str) -> list[CodeEntry]:
    """Code lines with the note lines beneath them (up to the next code line), with spans."""
    entries: list[CodeEntry] = []
    offset = 0
    for line in text.split("\n"):
        code = CODE_LINE_RE.match(line)
        note = None if code else NOTE_LINE_RE.match(line)
        if code:
            entries.append(CodeEntry(code[2], code[3].strip(), offset, offset + len(line)))
        elif note and entries and note[3].strip():
            start = offset + note.start(3)
            entries[-1].notes.setdefault(note[2], []).append(
                (note[3].strip(), start, offset + len(line))
            )
        offset += len(line) + 1
    return entries


def build_code_to_description(view: DocumentView, cfg: BuilderConfig, ctx: BuildContext):
    name = "icd_code_to_description"
    rng = ctx.rng(view.doc.id, name)
    return [
        make_pair(
            ctx.system_prompt,
            f"What does ICD-10-CM code {e.code} describe?",
            f"{e.code}: {e.desc}",
            doc_id=view.doc.id,
            builder=name,
            span=(e.start, e.end),
            task="code_to_description",
        )
        for e in pick(rng, parse_codes(view.text), cfg.max_per_document)
    ]


def build_description_to_code(view: DocumentView, cfg: BuilderConfig, ctx: BuildContext):
    name = "icd_description_to_code"
    rng = ctx.rng(view.doc.id, name)
    entries = parse_codes(view.text)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.desc.lower()] = counts.get(e.desc.lower(), 0) + 1
    unique = [e for e in entries if counts[e.desc.lower()] == 1]
    return [
        make_pair(
            ctx.system_prompt,
            f'Which ICD-10-CM code is used for "{e.desc}"?',
            e.code,
            doc_id=view.doc.id,
            builder=name,
            span=(e.start, e.end),
            task="description_to_code",
        )
        for e in pick(rng, unique, cfg.max_per_document)
    ]


def build_notes(view: DocumentView, cfg: BuilderConfig, ctx: BuildContext) -> list[Pair]:
    name = "icd_notes"
    rng = ctx.rng(view.doc.id, name)
    candidates = [
        (entry, label, notes)
        for entry in parse_codes(view.text)
        for label, notes in entry.notes.items()
        if label in NOTE_QUESTIONS
    ]
    pairs = []
    for entry, label, notes in pick(rng, candidates, cfg.max_per_document):
        answer = "; ".join(note for note, _, _ in notes)[: cfg.max_answer_chars]
        question = NOTE_QUESTIONS[label].format(code=entry.code, desc=entry.desc)
        pairs.append(
            make_pair(
                ctx.system_prompt,
                question,
                answer,
                doc_id=view.doc.id,
                builder=name,
                span=(notes[0][1], notes[-1][2]),
                task=f"notes_{label.lower().replace(' ', '_')}",
            )
        )
    return pairs
