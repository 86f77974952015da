"""A job spec from a file: JSON, or YAML with the same fields (`jobs create -f spec.yaml`), like LLaMA-Factory's
configs but in the native spec's shape (docs/job-spec.md).

YAML is read with these differences from PyYAML's safe loader, so that a spec means what it looks like:
- `1e-4` is a number (YAML 1.1 wants `1.0e-4`; PyYAML reads `1e-4` as a string);
- dates stay strings (`2026-01-01`), as JSON has no dates;
- a key given twice is an error (PyYAML keeps the last one silently).
The API checks every field; `line_of` finds the line of the field an API error names, for the message."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from cli.user.exits import USAGE, UserError

_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                        |[-+]?\.(?:inf|Inf|INF)
                        |\.(?:nan|NaN|NAN))$""", re.X)


class SpecLoader(yaml.SafeLoader):
    """SafeLoader with exponent floats without a dot, no timestamps, and duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice (first on line {seen[key] + 1}); keep one",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
SpecLoader.add_constructor("tag:yaml.org,2002:map", SpecLoader.construct_mapping)  # type: ignore[arg-type]


def is_yaml(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml")


def load_spec_text(text: str, name: str, *, yaml_format: bool) -> dict[str, Any]:
    """The spec object of a file's text; a UserError (exit 2) that names the line when it cannot be read."""
    try:
        # SpecLoader is a SafeLoader: no Python objects.
        doc = yaml.load(text, Loader=SpecLoader) if yaml_format else json.loads(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name} line {mark.line + 1}" if mark else name
        raise UserError(f"{where}: {exc.problem or exc.context}", USAGE) from None
    except yaml.YAMLError as exc:
        raise UserError(f"{name}: {exc}", USAGE) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{name} line {exc.lineno}: {exc.msg}", USAGE) from None
    if not isinstance(doc, dict):
        raise UserError(f"{name}: a job spec is a mapping of fields (base_model: …, training_file: …), not "
                        f"{type(doc).__name__}", USAGE)
    return doc


def load_spec(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}", USAGE) from None
    return load_spec_text(text, str(path), yaml_format=is_yaml(path))


def line_of(text: str, param: str | None) -> int | None:
    """The line (1-based) where the field `param` (a dotted path such as `hyperparameters.warp` or
    `method.lora.target_modules.0`) is written in a spec's text; the nearest existing parent's when the field is
    absent; None when it cannot be told. JSON is read as YAML here: a JSON object is a YAML mapping."""
    if not param:
        return None
    try:
        node = yaml.compose(text, Loader=SpecLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in param.split("."):
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == part), None)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line
