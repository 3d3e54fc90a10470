"""Helpers shared by the tests (the fixtures built on them are in conftest.py): a folder of
realistic contracts with personal data, recipe makers, a tiny LLaMA, the marks of vLLM tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lexlora.recipe import Recipe, validate_recipe

CLAUSES = [
    (
        "Definitions",
        '"Confidential Information" means any non-public information disclosed by either party, '
        'including trade secrets and customer lists. "Effective Date" means the date first '
        "written above.",
    ),
    (
        "Payment",
        "The Customer shall pay all fees within thirty (30) days of the invoice date. Late "
        "payments bear interest at one percent per month.",
    ),
    (
        "Confidentiality",
        "The Recipient shall not disclose Confidential Information to any third party. The "
        "Recipient may disclose Confidential Information to its employees who need to know it.",
    ),
    (
        "Term and Termination",
        "This Agreement begins on the Effective Date and continues for two years. Either party "
        "may terminate this Agreement on sixty days written notice.",
    ),
    (
        "Governing Law",
        "This Agreement is governed by the laws of the State of New York. The courts of New "
        "York County have exclusive jurisdiction over any dispute.",
    ),
    (
        "Warranties",
        "The Supplier warrants that the services will be performed in a professional manner. "
        "The Supplier must correct any defective work at its own cost.",
    ),
    (
        "Limitation of Liability",
        "Neither party shall be liable for indirect or consequential damages. The total "
        "liability of the Supplier is limited to the fees paid in the preceding twelve months.",
    ),
    (
        "Assignment",
        "The Customer may not assign this Agreement without the prior written consent of the "
        "Supplier. Any attempted assignment in breach of this section is void.",
    ),
    (
        "Notices",
        "All notices must be sent in writing to the addresses set out in this Agreement. "
        "Notices sent by email are effective on the next business day.",
    ),
    (
        "Insurance",
        "The Supplier shall maintain general liability insurance of at least one million "
        "dollars. The Supplier must provide a certificate of insurance on request.",
    ),
    (
        "Audit",
        "The Customer may audit the Supplier's records once per year on reasonable notice. "
        "The Supplier shall keep complete records for three years.",
    ),
    (
        "Non-Solicitation",
        "During the term the Supplier shall not solicit any employee of the Customer. This "
        "restriction survives for twelve months after termination.",
    ),
]
PEOPLE = ["Jane Doe", "John Smith", "Maria Garcia", "Wei Chen", "Amal Haddad", "Tom Brown"]


def write_contract_folder(root: Path, n_docs: int = 18, seed: int = 0) -> Path:
    """A folder of numbered contracts under ndas/, leases/ and services/, each naming a contact
    with an email, a phone number and a street address (personal data the scrubber must remove)."""
    rng = random.Random(seed)
    kinds = ["ndas", "leases", "services"]
    for i in range(n_docs):
        kind = kinds[i % 3]
        person = PEOPLE[i % len(PEOPLE)]
        first, last = person.lower().split()
        clauses = rng.sample(CLAUSES, 7)
        lines = [f"{kind[:-1].upper()} AGREEMENT NO. {100 + i}", ""]
        lines.append(
            f"This agreement is made between Acme Corp and {person} "
            f"({first}.{last}@example.com, tel. (555) 201-{1000 + i}), residing at "
            f"{100 + i} Main Street, Springfield, IL 62704."
        )
        lines.append("")
        for n, (heading, body) in enumerate(clauses, 1):
            lines += [f"{n}. {heading}", "", f"   {body}", ""]
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"contract_{i:02d}.txt").write_text("\n".join(lines), encoding="utf-8")
    return root


def folder_recipe(folder: Path, out: Path, **data_overrides) -> Recipe:
    data = {
        "corpus": "folder",
        "path": str(folder),
        "output_dir": str(out),
        "clean": {"min_chars": 100, "near_duplicate_threshold": 0.95},
        "builders": {
            "definitions": {},
            "section_qa": {},
            "obligations": {},
            "clause_classification": {},
            "summary": {},
        },
        "split": {"validation": 0.17, "test": 0.17, "stratify_by": "category", "seed": 1},
        "leakage": {"ngram": 8, "max_overlap": 1.0},  # shared clauses: templated on purpose
    }
    data.update(data_overrides)
    return validate_recipe({"name": "contracts", "data": data})


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_llama(out: Path, corpus_texts: list[str], seed: int = 0) -> Path:
    """A tiny random LLaMA (hidden 128, 2 layers, head_dim 32) with a BPE tokenizer trained on
    ``corpus_texts`` and a ChatML template, saved with ``save_pretrained``. Layer sizes respect the
    bitsandbytes CPU 4-bit kernel (out % 32 == 0, in % 64 == 0)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus_texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=1024,
        eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=fast.convert_tokens_to_ids("<|endoftext|>"),
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def make_recipe(tmp: Path, model_dir: Path, **sections) -> Recipe:
    """A training recipe on the contract folder and a tiny model, with fast settings."""
    folder = tmp / "contracts"
    if not folder.exists():
        write_contract_folder(folder)
    raw = {
        "name": "tiny",
        "data": {
            "corpus": "folder",
            "path": str(folder),
            "output_dir": str(tmp / "data"),
            "clean": {"min_chars": 100},
            "builders": {"definitions": {}, "section_qa": {}, "obligations": {}},
            "split": {"validation": 0.17, "test": 0.17, "seed": 1},
            "leakage": {"max_overlap": 1.0},
        },
        "model": {"base": str(model_dir), "quantization": "none"},
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "train": {
            "output_dir": str(tmp / "runs"),
            "max_steps": 12,
            "batch_size": 4,
            "learning_rate": 5e-3,
            "scheduler": "constant",
            "warmup_ratio": 0.0,
            "max_length": 128,
            "logging_steps": 2,
            "eval_steps": 6,
            "save_steps": 6,
            "max_eval_samples": 16,
        },
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return validate_recipe(raw)


METHODS = ["lora", "prompt_tuning", "new_tokens", "lora+new_tokens"]
TERMS = ["Confidential Information", "Effective Date"]


VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
NEEDS_VLLM = [  # pytest marks of every test that starts a real vLLM server
    pytest.mark.slow,
    pytest.mark.skipif(
        not VLLM_PYTHON.exists(),
        reason=".venv-vllm does not exist: run `make setup-vllm` to test the vLLM engine",
    ),
]
NEEDS_VLLM_ROUTER = [  # and of every test that starts vLLM replicas behind vllm-router
    *NEEDS_VLLM,
    pytest.mark.skipif(
        not (VLLM_PYTHON.parent / "vllm-router").exists(),
        reason="vllm-router is not in .venv-vllm: run `make setup-vllm` to test replicas",
    ),
]
