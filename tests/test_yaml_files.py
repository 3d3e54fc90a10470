"""Every YAML file a user hands lexlora fails the same way: one line naming the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from lexlora.errors import LexloraError
from lexlora.eval.tasks import load_spec
from lexlora.recipe import load_recipe
from lexlora.serve.config import load_config
from lexlora.taxonomy import load_taxonomy

LOADERS = {
    "recipe": load_recipe,
    "taxonomy": load_taxonomy,
    "evaluation spec": load_spec,
    "serve config": load_config,
}


@pytest.mark.parametrize("what", LOADERS)
def test_broken_yaml_is_one_line_naming_file_and_line(tmp_path, what):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nitems: [1, 2\nother: 3\n", encoding="utf-8")
    with pytest.raises(LexloraError) as err:
        LOADERS[what](str(path) if what != "evaluation spec" else Path(path))
    message = str(err.value)
    assert message.startswith(f"{path}:") and "invalid YAML" in message
    assert message.split(":")[1].isdigit() and "\n" not in message


@pytest.mark.parametrize("what", LOADERS)
def test_non_utf8_yaml_is_one_line(tmp_path, what):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(LexloraError, match=rf"not UTF-8 text .*save the {what} as UTF-8") as err:
        LOADERS[what](str(path) if what != "evaluation spec" else Path(path))
    assert "\n" not in str(err.value)


def test_every_mistake_is_named_on_one_line_with_the_closest_key():
    """One formatter for every config: all errors at once, a did-you-mean found through nested
    models and dicts of models (a builder's options, a tenant), the bad value cut short."""
    with pytest.raises(LexloraError) as err:
        load_recipe(
            "legal_contracts",
            ["lora.rnak=4", "data.builders.knowledge.weigth=2", f"train.max_steps={'9' * 200}x"],
        )
    message = str(err.value)
    assert "unknown key 'lora.rnak' (did you mean 'rank'?)" in message
    assert "unknown key 'data.builders.knowledge.weigth' (did you mean 'weight'?)" in message
    assert "field 'train.max_steps'" in message and "characters)" in message
    assert "\n" not in message and message.count(";") == 2


def test_a_serve_config_names_the_tenant_key(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("base_model: m\ntenants:\n  acme:\n    keys: [k]\n    max_lora: 2\n")
    with pytest.raises(LexloraError, match=r"unknown key 'tenants\.acme\.max_lora'"):
        load_config(path)
