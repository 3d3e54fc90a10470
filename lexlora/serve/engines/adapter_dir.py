"""The folder of adapters that vLLM replicas load by name: vLLM's filesystem LoRA resolver.

A replica started with ``VLLM_LORA_RESOLVER_CACHE_DIR=DIR`` (``lora_filesystem_resolver`` is one
of vLLM's general plugins) answers the first request for model ``NAME`` by loading ``DIR/NAME``
when its ``adapter_config.json`` says ``peft_type: LORA`` and ``base_model_name_or_path`` equals
the replica's ``--model``. So every replica can serve every adapter published here, after a
failover too, and a version published while the replicas run is served without restarting them.

Upstream the resolver joins the request's model name onto ``DIR`` without containing it (vLLM PR
#46287 is open), so the folder holds only names the gateway generated (:data:`SAFE_NAME`, checked
again here) and no request carries a client's string to a replica. Names carry the weights'
sha256 (:func:`~lexlora.serve.residency.internal_name`), so a published folder never changes:
it is written under a temporary name and renamed into place, and a replica never reads half of
one.

The folder is lexlora's: :class:`AdapterDirectory` marks it (``.lexlora-adapter-dir``) and
refuses a non-empty folder without that mark, so it never writes into, or deletes from, a folder
it did not create.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from lexlora.artifacts.adapter import CONFIG_FILE
from lexlora.errors import LexloraError

MARKER = ".lexlora-adapter-dir"
SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*(--[a-z0-9_-]+)*")  # what internal_name() makes
MAX_NAME = 200


def check_name(name: str) -> str:
    """``name`` if the gateway could have made it (no ``/``, no ``.``), else a LexloraError."""
    if len(name) > MAX_NAME or not SAFE_NAME.fullmatch(name):
        raise LexloraError(f"adapter name {name!r} is not one the gateway makes")
    return name


class AdapterDirectory:
    """Publishes adapter folders under gateway-made names for the replicas' resolver."""

    def __init__(self, root: Path, base_model: str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.base_model = base_model  # the replicas' --model: the resolver compares it
        self._claim()

    def _claim(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = f"serve config adapter_dir: cannot create {self.root}: {exc}"
            raise LexloraError(why) from None
        if not (self.root / MARKER).exists():
            if any(self.root.iterdir()):
                raise LexloraError(
                    f"serve config adapter_dir: {self.root} is not empty and was not made by "
                    "lexlora; give an empty or new folder"
                )
            (self.root / MARKER).write_text("adapters published by lexlora serve\n")

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def publish(self, name: str, source: Path) -> Path:
        """``DIR/name``: a copy of the PEFT folder ``source`` whose config names the replicas'
        base model (nothing is written when it is there already: names are content-addressed)."""
        target = self.path(name)
        if (target / CONFIG_FILE).exists():
            return target
        config_path = Path(source) / CONFIG_FILE
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LexloraError(f"{config_path}: cannot read the adapter config: {exc}") from None
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        try:
            for item in Path(source).iterdir():
                if item.is_file() and item.name != CONFIG_FILE:
                    _link_or_copy(item, staging / item.name)
            config["base_model_name_or_path"] = self.base_model
            (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
            try:
                staging.rename(target)
            except OSError:
                if not (target / CONFIG_FILE).exists():  # not another gateway's identical copy
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def remove(self, name: str) -> None:
        """Delete ``DIR/name`` (a folder this class published)."""
        shutil.rmtree(self.path(name), ignore_errors=True)

    def names(self) -> list[str]:
        folders = (p for p in self.root.iterdir() if p.is_dir())
        return sorted(p.name for p in folders if SAFE_NAME.fullmatch(p.name))


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows it (weights are large), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
