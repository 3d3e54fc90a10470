"""``lexlora data RECIPE``."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from lexlora.artifacts.manifest import SPLITS, DataManifest
from lexlora.cli.common import CorporaDir, SetOption, console
from lexlora.progress import Bar


def data(recipe: str, set_: SetOption = None, corpora_dir: CorporaDir = Path("corpora")) -> None:
    """Build the recipe's instruction data: data/RECIPE/{train,validation,test}.jsonl + manifest."""
    from lexlora.data.build import build_dataset
    from lexlora.recipe import load_recipe

    cfg = load_recipe(recipe, set_)
    with Bar(f"building {cfg.name}", console=console) as bar:
        manifest = build_dataset(
            cfg, corpora_dir, lambda done, total: bar.update(completed=done, total=total)
        )
    print_data_summary(manifest, cfg.dataset_dir)


def print_data_summary(manifest: DataManifest, out: Path) -> None:
    docs = manifest.documents
    console.print(
        f"documents: {docs.read} read, {docs.kept} kept, skipped {docs.skipped or 0}, "
        f"duplicates {docs.duplicates or 0}"
    )
    table = Table("builder", "train", "validation", "test")
    for name, counts in manifest.pairs.by_builder.items():
        table.add_row(name, *(str(counts[s]) for s in SPLITS))
    total = manifest.pairs.total
    table.add_row("[bold]total", *(f"[bold]{total[s]}" for s in SPLITS))
    console.print(table)
    console.print(f"documents per split: {manifest.split.documents}")
    console.print(f"personal data replaced: {manifest.scrub.replacements}")
    leak = manifest.leakage
    console.print(
        f"leakage: test answers share {leak.mean_overlap:.1%} of their {leak.ngram}-grams "
        f"with training on average (limit {leak.max_overlap:.0%})"
    )
    if teacher := manifest.teacher:
        console.print(
            f"teacher {teacher.model}: {teacher.requests} requests, "
            f"{teacher.cache_hits} cached, {teacher.accepted} accepted, "
            f"rejected {teacher.rejected or 0}"
        )
    if presence := manifest.clause_presence:
        console.print(
            f"clause presence ({presence.taxonomy}): {presence.ambiguous_dropped} ambiguous "
            f"detections dropped; {sum(manifest.pairs.dropped_to_balance.values())} pairs "
            "dropped to balance Yes/No"
        )
        for name, g in presence.gold.items():
            console.print(
                f"  detector vs {name} ({g['n']} labels): precision {g['precision']}, "
                f"recall {g['recall']}, No precision {g['no_precision']}, "
                f"abstained {g['abstain_rate']}"
            )
    console.print(f"[green]wrote[/] {out}/{{train,validation,test}}.jsonl and manifest.json")
