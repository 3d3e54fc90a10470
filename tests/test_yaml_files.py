"""Every YAML file a user hands lexlora fails the same way: one line naming the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from lexlora.data.taxonomy import load_taxonomy
from lexlora.errors import LexloraError
from lexlora.eval.tasks import load_spec
from lexlora.recipe import load_recipe
from lexlora.serve.config import load_config

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
