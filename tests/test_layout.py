"""The package's boundaries, read from the source with ``ast``: stages talk through
``lexlora.artifacts`` and the shared top-level modules, never through each other's modules, and
no CLI verb's module imports another (``cli.common`` is the shared one, ``cli/__init__``
assembles them)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lexlora"
STAGES = ("data", "train", "export", "eval", "serve")
SOURCES = ("corpora",)  # the input layer: documents, read by any stage
# The crossings there are, each with its reason; a new one must be argued here.
CROSSINGS = {
    ("train", "lexlora.data.build", "build_dataset"): "training builds its missing dataset",
}


def imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` for every ``lexlora`` import of one file (name '' for ``import m``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lexlora."):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.startswith("lexlora.")]
    return found


def test_no_stage_imports_another_stages_modules():
    crossings = set()
    for stage in STAGES:
        for path in sorted((PACKAGE / stage).rglob("*.py")):
            for module, name in imports(path):
                other = module.split(".")[1]
                if other != stage and other in (*STAGES, "cli"):
                    crossings.add((stage, module, name))
    assert crossings == set(CROSSINGS), sorted(crossings - set(CROSSINGS))


def test_sources_import_no_stage_and_cli_modules_import_no_other_cli_module():
    for source in SOURCES:
        for path in sorted((PACKAGE / source).rglob("*.py")):
            assert not [m for m, _ in imports(path) if m.split(".")[1] in (*STAGES, "cli")], path
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        if path.name == "__init__.py":  # the app, assembled from every verb's module
            continue
        others = {m for m, _ in imports(path) if m.startswith("lexlora.cli.")}
        assert others <= {"lexlora.cli.common"}, (path.name, others)
    for path in sorted(PACKAGE.glob("*.py")):  # shared modules: below every stage
        stages = {m for m, _ in imports(path) if m.split(".")[1] in (*STAGES, "cli")}
        assert path.name in ("__main__.py",) or not stages, (path.name, stages)
