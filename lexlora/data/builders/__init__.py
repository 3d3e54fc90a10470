"""Pair builders: each turns one document into instruction pairs with provenance.

A builder is a function ``build(view, cfg, ctx) -> list[Pair]``; recipes select and weight them by
the names below under ``data.builders``. Most return chat pairs; ``reading`` returns plain-text rows
(trained on every token, see :mod:`lexlora.artifacts.pairs`).
"""

from __future__ import annotations

from collections.abc import Callable

from lexlora.artifacts.pairs import Pair
from lexlora.data.builders import (
    clause_classification,
    clause_presence,
    definitions,
    icd10,
    knowledge,
    obligations,
    reading,
    section_qa,
    summary,
    teacher,
)
from lexlora.data.builders.base import BuildContext, DocumentView
from lexlora.errors import LexloraError
from lexlora.recipe import BuilderConfig

Builder = Callable[[DocumentView, BuilderConfig, BuildContext], list[Pair]]

BUILDERS: dict[str, Builder] = {
    "definitions": definitions.build,
    "section_qa": section_qa.build,
    "obligations": obligations.build,
    "clause_classification": clause_classification.build,
    "clause_presence": clause_presence.build,
    "knowledge": knowledge.build,
    "reading": reading.build,
    "summary": summary.build,
    "teacher": teacher.build,
    "icd_code_to_description": icd10.build_code_to_description,
    "icd_description_to_code": icd10.build_description_to_code,
    "icd_notes": icd10.build_notes,
}


def get_builder(name: str) -> Builder:
    if name not in BUILDERS:
        raise LexloraError(
            f"data.builders: unknown builder '{name}'; expected one of: {', '.join(BUILDERS)}"
        )
    return BUILDERS[name]
