"""A job spec read from YAML (cli/user/spec.py) is the same object as its JSON, with YAML's traps closed: `1e-4`
is a number, a date stays text, a key given twice is an error naming both lines; and an API error's dotted param
is found back on its line of the file."""

from __future__ import annotations

import json

import pytest

from cli.user.exits import USAGE, UserError
from cli.user.spec import line_of, load_spec_text

YAML_SPEC = """\
# like a LLaMA-Factory config, in the native spec's fields
base_model: tiny-llama
training_file: file-abc
stage: sft
method:
  type: lora
  lora: {r: 8, alpha: 16, target_modules: [q_proj, v_proj]}
hyperparameters:
  n_epochs: 2
  learning_rate: 1e-4
  warmup_ratio: .1
metadata:
  released: 2026-01-01
"""

SAME_AS_JSON = {
    "base_model": "tiny-llama", "training_file": "file-abc", "stage": "sft",
    "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}},
    "hyperparameters": {"n_epochs": 2, "learning_rate": 1e-4, "warmup_ratio": 0.1},
    "metadata": {"released": "2026-01-01"},
}


def test_a_yaml_spec_loads_as_the_same_object_as_its_json() -> None:
    from_yaml = load_spec_text(YAML_SPEC, "spec.yaml", yaml_format=True)
    assert from_yaml == SAME_AS_JSON
    assert load_spec_text(json.dumps(SAME_AS_JSON), "spec.json", yaml_format=False) == from_yaml


def test_an_exponent_without_a_dot_is_a_float_not_a_string() -> None:
    loaded = load_spec_text("hyperparameters: {learning_rate: 2e-5, n: 3, big: 1E3}", "s.yaml", yaml_format=True)
    assert loaded["hyperparameters"] == {"learning_rate": 2e-5, "n": 3, "big": 1000.0}
    assert isinstance(loaded["hyperparameters"]["learning_rate"], float)


def test_a_key_given_twice_is_an_error_naming_both_lines() -> None:
    with pytest.raises(UserError) as raised:
        load_spec_text("base_model: a\nstage: sft\nbase_model: b\n", "spec.yaml", yaml_format=True)
    assert raised.value.code == USAGE
    assert raised.value.message == "spec.yaml line 3: 'base_model' is given twice (first on line 1); keep one"


@pytest.mark.parametrize(("text", "yaml_format", "expected"), [
    ("base_model: [tiny\n", True, "spec line 2: expected ',' or ']'"),
    ('{"base_model": "x",\n}', False, "spec line 2: Expecting property name"),
    ("- base_model: x\n", True, "spec: a job spec is a mapping of fields"),
])
def test_a_spec_that_cannot_be_read_is_a_usage_error_with_its_line(text: str, yaml_format: bool,
                                                                    expected: str) -> None:
    with pytest.raises(UserError) as raised:
        load_spec_text(text, "spec", yaml_format=yaml_format)
    assert raised.value.code == USAGE and raised.value.message.startswith(expected), raised.value.message


@pytest.mark.parametrize(("param", "line"), [
    ("hyperparameters.learning_rate", 10), ("method.lora.r", 7), ("method.lora.target_modules.1", 7),
    ("hyperparameters.warp", 8),  # absent: the nearest parent that is written
    ("nothing.here", None), (None, None),
])
def test_an_api_error_param_is_found_on_its_line(param: str | None, line: int | None) -> None:
    assert line_of(YAML_SPEC, param) == line


def test_an_api_error_param_is_found_on_its_line_of_a_json_spec() -> None:
    assert line_of(json.dumps(SAME_AS_JSON, indent=2), "hyperparameters.n_epochs") == 17
