"""Shared fixtures: a small folder of realistic contracts (with personal data), a tiny model and
finished runs of it. The helpers they use are in support.py (import them from there)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import CLAUSES, METHODS, TERMS, build_tiny_llama, make_recipe, write_contract_folder


@pytest.fixture
def contract_folder(tmp_path: Path) -> Path:
    return write_contract_folder(tmp_path / "contracts")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    texts = [body for _, body in CLAUSES] * 3
    texts += ["Under the agreement, what must the Customer do? Answer with one of: Yes. No."] * 3
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), texts)


@pytest.fixture(scope="session")
def tiny_run(tiny_model, tmp_path_factory) -> Path:
    """A finished training run (rank 8 on q_proj/v_proj) of the tiny model: runs/tiny/RUN_ID."""
    from lexlora.train.trainer import train

    tmp = tmp_path_factory.mktemp("tiny-run")
    return Path(train(make_recipe(tmp, tiny_model)).run_dir)


@pytest.fixture(scope="session")
def method_runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """One finished run of the tiny model per ``adapter.method``, same data and step budget."""
    from lexlora.train.trainer import train

    tmp = tmp_path_factory.mktemp("methods")
    out = {}
    for method in METHODS:
        adapter = {
            "method": method,
            "new_tokens": {"terms": TERMS},
            "prompt_tuning": {"num_virtual_tokens": 4, "init_text": "Answer about the contract"},
        }
        out[method] = Path(train(make_recipe(tmp / method, tiny_model, adapter=adapter)).run_dir)
    return out


@pytest.fixture(scope="session")
def tok(tiny_model):
    """The tiny model's tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def published(tiny_model, tiny_run, tmp_path_factory):
    """The serving suites' adapters (serve_harness.Published), in a store of the test module's own:
    a module's tests may publish new versions."""
    from serve_harness import publish_adapters

    return publish_adapters(tiny_model, tiny_run, tmp_path_factory.mktemp("published"))
