"""Clause-presence taxonomies: ``recipes/taxonomies/NAME.yaml`` → validated, compiled categories.

A taxonomy is plain data: per category a question template, the phrase a "No" answer uses, a
plain-language definition, and the detector's regular expressions (see
``recipes/taxonomies/licenses.yaml`` for the format). Patterns are case-insensitive; a space in a
pattern matches any run of whitespace (line wraps included) and ``" ?"`` optional whitespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lexlora.config_errors import validated
from lexlora.errors import LexloraError
from lexlora.recipe import REPO_ROOT
from lexlora.yaml_files import read_yaml


class CategorySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    question: str = Field(description="Asked of a document; {title} is its title.")
    absent: str = Field(description='What a "No" says the document lacks: "has no clause that …".')
    definition: str = Field(description="What counts, in plain language (for gold labelling).")
    patterns: list[str] = Field(min_length=1)
    weak: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    negation: Literal["ignore", "no", "ambiguous"] = "ambiguous"

    @field_validator("question")
    @classmethod
    def _has_title(cls, value: str) -> str:
        if "{title}" not in value:
            raise ValueError("must contain {title}")
        return value


class TaxonomySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    categories: list[CategorySpec] = Field(min_length=1)


@dataclass(frozen=True)
class Category:
    """A category with its regular expressions compiled."""

    spec: CategorySpec
    patterns: tuple[re.Pattern[str], ...]
    weak: tuple[re.Pattern[str], ...]
    exclude: tuple[re.Pattern[str], ...]

    @property
    def id(self) -> str:
        return self.spec.id

    def question(self, title: str) -> str:
        return self.spec.question.replace("{title}", title)


@dataclass(frozen=True)
class Taxonomy:
    name: str
    path: Path
    categories: tuple[Category, ...]

    def absent(self, category_id: str) -> str:
        """The ``absent`` phrase of a category ("restricts commercial use or sale")."""
        return next(c.spec.absent for c in self.categories if c.id == category_id)


def taxonomy_path(name_or_path: str) -> Path:
    """``licenses`` → ``recipes/taxonomies/licenses.yaml``; a path to a YAML file as given."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in {".yaml", ".yml"}:
        return candidate
    for root in (Path.cwd() / "recipes" / "taxonomies", REPO_ROOT / "recipes" / "taxonomies"):
        if (root / f"{name_or_path}.yaml").is_file():
            return root / f"{name_or_path}.yaml"
    return REPO_ROOT / "recipes" / "taxonomies" / f"{name_or_path}.yaml"


def load_taxonomy(name_or_path: str) -> Taxonomy:
    path = taxonomy_path(name_or_path)
    if not path.is_file():
        raise LexloraError(f"{path}: taxonomy not found (expected recipes/taxonomies/NAME.yaml)")
    raw = read_yaml(path, "taxonomy")
    spec = validated(TaxonomySpec, raw, str(path))
    seen: set[str] = set()
    categories = []
    for n, cat in enumerate(spec.categories):
        if cat.id in seen:
            raise LexloraError(f"{path}: categories.{n}.id: duplicate category '{cat.id}'")
        seen.add(cat.id)
        compiled = {
            kind: tuple(_compile(p, path, f"categories.{n}.{kind}.{i}") for i, p in enumerate(ps))
            for kind, ps in (
                ("patterns", cat.patterns),
                ("weak", cat.weak),
                ("exclude", cat.exclude),
            )
        }
        categories.append(Category(cat, **compiled))
    return Taxonomy(spec.name, path, tuple(categories))


def check_categories(taxonomy: Taxonomy | None, categories: list[str] | None, where: str) -> None:
    """A builder's ``options.categories`` must name categories of its taxonomy (one-line error)."""
    known = [c.id for c in taxonomy.categories] if taxonomy else []
    for cat in categories or []:
        if cat not in known:
            source = f" in {taxonomy.path.name}" if taxonomy else ""
            raise LexloraError(
                f"{where}.categories: unknown category '{cat}'{source}; expected some of: "
                f"{', '.join(known) or '(no taxonomy set)'}"
            )


def _compile(pattern: str, path: Path, where: str) -> re.Pattern[str]:
    flexible = pattern.replace(" ?", r"\s*").replace(" ", r"\s+")
    try:
        return re.compile(flexible, re.IGNORECASE)
    except re.error as exc:
        raise LexloraError(f"{path}: {where}: invalid regex {pattern!r} ({exc})") from None
