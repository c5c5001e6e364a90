"""Command-line options of the flows: JSON values and NAME=VALUE pairs, with errors that name them."""

import pytest

from tasks.common.errors import InputError
from tasks.common.options import json_option, parse_overrides


def test_overrides_parse_json_values_and_keep_plain_strings():
    items = ["batch_size=512", "lr=1e-3", "beta2=-0.5", "extra_args=[\"--x\", 1]", "precision=fp32",
             "grad_clip_norm=null", "name=\"quoted\""]
    assert parse_overrides(items) == {"batch_size": 512, "lr": 0.001, "beta2": -0.5, "extra_args": ["--x", 1],
                                      "precision": "fp32", "grad_clip_norm": None, "name": "quoted"}
    assert parse_overrides([]) == {}


@pytest.mark.parametrize("item, message", [
    ("x=", "--override x: empty value"),
    ("lr", "--override 'lr': expected NAME=VALUE"),
    ("=5", "--override '=5': expected NAME=VALUE"),
    ("lr=[1,", "--override lr: not valid JSON at line 1 column 4"),
    ("lr=1.2.3", "--override lr: not valid JSON at line 1 column 4"),
])
def test_bad_overrides_name_the_override(item, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[")):
        parse_overrides(["batch_size=8", item])


def test_json_option_names_the_option_and_the_position():
    assert json_option("--filters", '{"clip_score": 0.3}') == {"clip_score": 0.3}
    with pytest.raises(InputError, match=r"--filters: not valid JSON at line 1 column 16 \(character 15\)"):
        json_option("--filters", '{"clip_score": }')
    with pytest.raises(InputError, match="--levels: empty value"):
        json_option("--levels", " ")


def test_subset_options_take_json_recipes_and_recipe_names():
    assert parse_overrides(['a=[{"step": "random", "target": 5}]', "b=[]", "c=datacomp:clip_l14_30"], "--subset") == \
        {"a": [{"step": "random", "target": 5}], "b": [], "c": "datacomp:clip_l14_30"}
    with pytest.raises(InputError, match=r"--subset b: not valid JSON at line 1 column 2"):
        parse_overrides(["a=[]", "b=[x]"], "--subset")
    with pytest.raises(InputError, match="--subset 'balanced': expected NAME=VALUE"):
        parse_overrides(["balanced"], "--subset")
