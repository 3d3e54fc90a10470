"""Recipes: one YAML file per run, validated by pydantic. Data only, no logic.

``load_recipe("legal_contracts", overrides=["lora.rank=8"])`` finds
``recipes/legal_contracts.yaml``, applies ``--set`` overrides and validates. Every mistake is a
one-line :class:`LexloraError` naming the file, the field and what was expected (with the closest
valid key for a misspelling).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lexlora.config_errors import validated
from lexlora.errors import LexloraError
from lexlora.io import dumps_canonical, sha256_text
from lexlora.yaml_files import read_yaml

REPO_ROOT = Path(__file__).resolve().parents[1]

# Bounds every numeric field lives within: beyond them a value is a typo, not a setting (and would
# overflow, allocate without end or run forever somewhere downstream). Floats must be finite.
MAX_LORA_RANK = 1024
MAX_STEPS = 10**9
Seed = Annotated[int, Field(ge=0, lt=2**32, description="0 ≤ seed < 2**32 (numpy's range).")]
Steps = Annotated[int, Field(gt=0, le=MAX_STEPS)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# --- data ---------------------------------------------------------------------------------------


class CleanConfig(_Section):
    unicode_form: Literal["NFC", "NFKC"] = "NFKC"
    min_chars: int = Field(
        200, ge=0, description="Documents shorter than this after cleaning drop."
    )
    boilerplate_patterns: list[str] = Field(
        default_factory=list, description="Regexes; whole lines matching one are removed."
    )
    dedup: bool = True
    near_duplicate_threshold: float = Field(0.9, gt=0, le=1, description="MinHash Jaccard.")
    minhash_num_perm: int = Field(128, ge=16, le=4096)
    shingle_words: int = Field(5, ge=1, le=64)


PII_TYPES: tuple[str, ...] = ("EMAIL", "PHONE", "SSN", "MRN", "DOB", "ADDRESS", "IP", "CARD")


class ScrubConfig(_Section):
    enabled: bool = True
    types: list[str] = Field(default_factory=lambda: list(PII_TYPES))


class BuilderConfig(_Section):
    """Settings common to every pair builder.

    ``weight`` scales the builder's share of the *training* split: 0.5 keeps a seeded half of its
    training pairs, 2.0 repeats them twice; validation and test keep every pair.
    """

    enabled: bool = True
    weight: float = Field(1.0, ge=0, le=100)
    max_per_document: int = Field(8, ge=1, le=10_000)
    max_answer_chars: int = Field(600, ge=20, le=100_000)
    balance: bool = Field(
        False,
        description="Per split, task and category, keep as many pairs of each answer (Yes/No, "
        "or any option) as of the rarest one (seeded).",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Builder-specific.")


class SplitConfig(_Section):
    validation: float = Field(0.05, ge=0, lt=1)
    test: float = Field(0.1, ge=0, lt=1)
    stratify_by: str | None = Field("category", description="Document metadata field.")
    seed: Seed = 42

    @model_validator(mode="after")
    def _leaves_a_training_split(self) -> SplitConfig:
        if self.validation + self.test >= 1:
            raise ValueError(
                f"validation + test = {self.validation + self.test:g} leaves no documents for "
                "training; their sum must be below 1"
            )
        return self


class LeakageConfig(_Section):
    ngram: int = Field(8, ge=3, le=64, description="Word n-gram size for overlap.")
    max_overlap: float = Field(
        0.5, ge=0, le=1, description="Fail if the mean test-answer overlap with training exceeds."
    )


class DataConfig(_Section):
    corpus: str = Field(description="licenses | icd10cm | folder")
    path: str | None = Field(None, description="Folder of documents (corpus: folder).")
    max_file_mb: float = Field(
        50, gt=0, le=100_000, description="corpus: folder: larger files are skipped (too-large)."
    )
    max_documents: int | None = Field(None, ge=1)
    system_prompt: str = "You are a careful legal assistant."
    output_dir: str = "data"
    clean: CleanConfig = Field(default_factory=CleanConfig)
    scrub: ScrubConfig = Field(default_factory=ScrubConfig)
    builders: dict[str, BuilderConfig] = Field(default_factory=dict)
    split: SplitConfig = Field(default_factory=SplitConfig)
    leakage: LeakageConfig = Field(default_factory=LeakageConfig)


# --- model, adapter, training -------------------------------------------------------------------


class ModelConfig(_Section):
    base: str = Field("smollm2-135m-instruct", description="Alias, local directory or hub id.")
    quantization: Literal["auto", "nf4", "int8", "none"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    chat_template: str | None = Field(None, description="Jinja file overriding the base's.")


class LoraConfig(_Section):
    rank: int = Field(16, gt=0, le=MAX_LORA_RANK)
    alpha: int = Field(32, gt=0, le=4 * MAX_LORA_RANK)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        description='Module names, or "all-linear" (every linear layer but the output head).',
    )


class PromptTuningConfig(_Section):
    num_virtual_tokens: int = Field(16, gt=0, le=4096, description="Virtual tokens prepended.")
    init_text: str = Field(
        "Answer the legal question about the named document.",
        min_length=1,
        description="Text whose token embeddings initialise the virtual tokens (repeated).",
    )


class NewTokensConfig(_Section):
    terms: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list,
        description="Terms added to the tokenizer; empty: the corpus' most frequent defined terms.",
    )
    top_defined_terms: int = Field(
        32, gt=0, le=10_000, description="With no terms: how many defined terms to add."
    )

    @field_validator("terms")
    @classmethod
    def _distinct(cls, terms: list[str]) -> list[str]:
        repeated = sorted({t for t in terms if terms.count(t) > 1})
        if repeated:
            raise ValueError(f"'{repeated[0]}' is listed more than once")
        return terms


class AdapterConfig(_Section):
    """Which kind of adapter the run trains (:mod:`lexlora.adapter_methods`)."""

    method: Literal["lora", "prompt_tuning", "new_tokens", "lora+new_tokens"] = Field(
        "lora",
        description="lora: change behaviour (the `lora` section); prompt_tuning: learned virtual "
        "tokens; new_tokens: the `new_tokens` terms as new words, only their embedding rows "
        "trained; lora+new_tokens: both.",
    )
    prompt_tuning: PromptTuningConfig = Field(default_factory=PromptTuningConfig)
    new_tokens: NewTokensConfig = Field(default_factory=NewTokensConfig)


class ReplayConfig(_Section):
    """Self-distilled replay against forgetting: the base model's own greedy answers to general
    prompts, mixed into the training rows (:mod:`lexlora.train.replay`)."""

    prompts: str = Field(
        "recipes/replay/general_prompts.jsonl",
        description="JSONL of {id, prompt}; a relative path is looked up from the working "
        "directory, then the repository.",
    )
    ratio: float = Field(
        0.0, ge=0, le=0.5, description="Share of the training rows that are replay; 0 disables."
    )
    max_new_tokens: int = Field(96, gt=0, le=4096, description="Longest base-model answer.")
    batch_size: int = Field(16, gt=0, le=4096, description="Prompts per generate call.")


class TrainConfig(_Section):
    output_dir: str = "runs"
    epochs: float = Field(1.0, gt=0, le=1000)
    max_steps: int = Field(
        -1, ge=-1, le=MAX_STEPS, description="Optimizer steps; -1 trains for `epochs`."
    )
    batch_size: int = Field(4, gt=0, le=65_536)
    grad_accum: int = Field(1, gt=0, le=65_536)
    learning_rate: float = Field(2e-4, gt=0, le=1)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    max_length: int = Field(
        512,
        ge=16,
        le=2**20,
        description="Tokens per training sequence; also checked against the base model's "
        "context and the memory it needs before anything loads.",
    )
    packing: bool = True
    seed: Seed = 42
    logging_steps: Steps = 5
    eval_steps: Steps = 50
    save_steps: Steps = 50
    save_total_limit: int = Field(2, gt=0, le=10_000)
    early_stopping_patience: int | None = Field(None, gt=0, le=10_000)
    max_eval_samples: int | None = Field(
        256, gt=0, le=10**7, description="Seeded validation subset."
    )
    gradient_checkpointing: bool | None = Field(None, description="None: on for 4-bit only.")
    init_adapter: str | None = Field(None, description="Continue training this PEFT adapter.")
    replay: ReplayConfig = Field(default_factory=ReplayConfig)

    @field_validator("max_steps")
    @classmethod
    def _not_zero_steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 steps trains nothing; use -1 to train for `epochs`, or 1 or more")
        return value

    @model_validator(mode="after")
    def _checkpoints_on_evaluations(self) -> TrainConfig:
        # Early stopping reloads the best checkpoint, so every save must follow an evaluation.
        if self.early_stopping_patience is not None and self.save_steps % self.eval_steps:
            raise ValueError(
                f"early_stopping_patience needs save_steps ({self.save_steps}) to be a multiple "
                f"of eval_steps ({self.eval_steps})"
            )
        return self


class ExportConfig(_Section):
    max_lora_rank: int = Field(16, gt=0, le=MAX_LORA_RANK)
    store: str | None = Field(None, description="Adapter store; default LEXLORA_HOME/adapters.")


class EvalConfig(_Section):
    tasks_file: str | None = Field(None, description="Task definitions; default eval/NAME.yaml.")
    max_items: int | None = Field(None, gt=0, le=10**7)
    sweep: list[Annotated[float, Field(ge=0, le=2)]] = Field(
        default_factory=lambda: [0.0, 0.5, 1.0], description="Adapter strengths, 0 to 2."
    )
    max_new_tokens: int = Field(64, gt=0, le=8192)
    seed: Seed = 0
    gate_min_items: int = Field(
        30, ge=1, le=10**6, description="Fewest paired items for a family to be gated."
    )


class Recipe(_Section):
    name: str
    description: str = ""
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def hash(self) -> str:
        """sha256 of the whole resolved recipe."""
        return sha256_text(dumps_canonical(self.model_dump(mode="json")))

    def data_hash(self) -> str:
        """sha256 of the ``data`` section: the dataset is stale when this changes."""
        return sha256_text(dumps_canonical(self.data.model_dump(mode="json")))

    @property
    def dataset_dir(self) -> Path:
        """Where ``lexlora data`` writes this recipe's dataset: ``data.output_dir/NAME``."""
        return Path(self.data.output_dir) / self.name


# --- loading ------------------------------------------------------------------------------------


def find_recipe(name_or_path: str) -> Path:
    """Resolve a recipe name (``legal_contracts``) or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"}:
        if candidate.is_file():
            return candidate
        raise LexloraError(f"{candidate}: recipe file not found")
    for root in (Path.cwd() / "recipes", REPO_ROOT / "recipes"):
        path = root / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    known = sorted(
        {p.stem for root in (Path.cwd(), REPO_ROOT) for p in root.glob("recipes/*.yaml")}
    )
    hint = _closest(name_or_path, known)
    raise LexloraError(
        f"unknown recipe '{name_or_path}'{hint}; known recipes: {', '.join(known) or 'none'}"
    )


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Load, override (``key.path=value``) and validate a recipe."""
    path = find_recipe(name_or_path)
    raw = read_yaml(path, "recipe")
    if not isinstance(raw, dict):
        raise LexloraError(f"{path}: expected a mapping of sections (data, model, lora, ...)")
    raw.setdefault("name", path.stem)
    for item in overrides or []:
        apply_override(raw, item)
    return validate_recipe(raw, source=str(path))


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``--set a.b.c=value`` to the raw recipe dict (value parsed as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise LexloraError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. lora.rank=16")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise LexloraError(f"--set {item!r}: '{part}' is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError:
        node[parts[-1]] = value


def validate_recipe(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    return validated(Recipe, raw, source)


def _closest(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
