"""Recipe loading: the shipped recipes validate; mistakes are one-line errors naming the key."""

from pathlib import Path

import pytest

from lexlora.errors import LexloraError
from lexlora.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["legal_contracts", "medical_icd10"])
def test_shipped_recipes_validate(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.data.builders


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


def test_misspelt_key_names_file_key_and_closest(tmp_path):
    path = write(tmp_path, "data: {corpus: licenses}\nlora: {rnak: 8}\n")
    with pytest.raises(LexloraError) as exc:
        load_recipe(path)
    msg = str(exc.value)
    assert path in msg and "'lora.rnak'" in msg and "did you mean 'rank'" in msg
    assert "\n" not in msg


def test_misspelt_builder_option_key(tmp_path):
    path = write(tmp_path, "data: {corpus: licenses, builders: {definitions: {wieght: 2}}}\n")
    with pytest.raises(LexloraError, match="did you mean 'weight'"):
        load_recipe(path)


def test_wrong_type_names_field_and_expected_type(tmp_path):
    path = write(tmp_path, "data: {corpus: licenses}\ntrain: {batch_size: many}\n")
    with pytest.raises(LexloraError, match=r"train\.batch_size.*integer.*'many'"):
        load_recipe(path)


def test_rank_must_be_positive():
    with pytest.raises(LexloraError, match=r"lora\.rank.*greater than 0"):
        load_recipe("legal_contracts", ["lora.rank=0"])


def test_set_overrides_any_field_with_yaml_values():
    recipe = load_recipe(
        "legal_contracts",
        ["lora.rank=8", "lora.target_modules=[q_proj, k_proj, v_proj]", "data.split.seed=7"],
    )
    assert recipe.lora.rank == 8
    assert recipe.lora.target_modules == ["q_proj", "k_proj", "v_proj"]
    assert recipe.data.split.seed == 7


def test_set_unknown_field_is_an_error():
    with pytest.raises(LexloraError, match="did you mean 'learning_rate'"):
        load_recipe("legal_contracts", ["train.learning_rte=1e-4"])


def test_bad_set_syntax():
    with pytest.raises(LexloraError, match=r"expected KEY\.PATH=VALUE"):
        load_recipe("legal_contracts", ["lora.rank"])


def test_unknown_recipe_suggests_closest():
    with pytest.raises(LexloraError, match="did you mean 'legal_contracts'"):
        load_recipe("legal_contract")


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path, "data:\n  corpus: [licenses\n")
    with pytest.raises(LexloraError, match=r"r\.yaml:\d+: invalid YAML"):
        load_recipe(path)


def test_hash_changes_with_content():
    a = load_recipe("legal_contracts")
    b = load_recipe("legal_contracts", ["lora.rank=8"])
    c = load_recipe("legal_contracts", ["data.split.seed=1"])
    assert a.hash() != b.hash()
    assert a.data_hash() == b.data_hash()
    assert a.data_hash() != c.data_hash()
