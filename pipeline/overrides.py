"""Settings from the environment: the one override mechanism of the pipeline, Kubeflow and benchmarks.

The `tfx` CLI runs the runner file with no arguments, so settings come from `TOWER_RECS_*`
environment variables:

  TOWER_RECS_<NAME>                  a setting of `pipeline/configs.py`, e.g. TOWER_RECS_DATA=/data/ml
  TOWER_RECS_MODEL_<FIELD>           any `ModelConfig` field, e.g. TOWER_RECS_MODEL_EPOCHS=2
  TOWER_RECS_EVAL_<FIELD>            any `EvaluationConfig` field, e.g. TOWER_RECS_EVAL_KS='[10, 50]'
  TOWER_RECS_SERVING_CHECK_<FIELD>   any `ServingCheckConfig` field, e.g. TOWER_RECS_SERVING_CHECK_MAX_P99_MS=500

A value is parsed by its field's type: int, float and str as written; bool as 1/0, true/false,
yes/no; tuple and dict as JSON (`[256, 128]`, `{"recall@50": 0.1}`); `null` for an optional field.
A name that is not a field, or a value that does not parse, is an error naming the variable and
the expected type. Fields added to the dataclasses later are picked up with no code here.

    >>> from trainer.model_config import ModelConfig
    >>> cfg = from_env(ModelConfig(), "MODEL", {"TOWER_RECS_MODEL_HIDDEN_DIMS": "[256, 128]"})
    >>> cfg.hidden_dims
    (256, 128)
    >>> with_overrides(cfg, {"temperature": "0.05"}).temperature      # `--set temperature=0.05`
    0.05
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from typing import Any, Mapping, Optional, Sequence, TypeVar

PREFIX = "TOWER_RECS_"
Config = TypeVar("Config")

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env(name: str, default: Optional[str] = None) -> Optional[str]:
    """The value of `TOWER_RECS_<name>`, or `default` when it is not set."""
    return os.environ.get(PREFIX + name, default)


def from_env(config: Config, group: str, environ: Optional[Mapping[str, str]] = None,
             not_fields: Sequence[str] = ()) -> Config:
    """`config` (a dataclass instance) with each `TOWER_RECS_<group>_<FIELD>` variable applied.

    Args:
      config: the defaults, e.g. `ModelConfig()`.
      group: the variables' infix, e.g. "MODEL" for `TOWER_RECS_MODEL_<FIELD>`.
      environ: where to read (default `os.environ`).
      not_fields: suffixes under the same prefix that are other settings, e.g. ("NAME",) for
        TOWER_RECS_MODEL_NAME (the served model's name); they are neither applied nor rejected.

    Returns:
      A new instance of `config`'s class.

    Raises:
      ValueError: a variable names no field, or its value does not parse as the field's type.
    """
    environ = os.environ if environ is None else environ
    head = f"{PREFIX}{group}_"
    fields = {f.name.upper(): f.name for f in dataclasses.fields(config)}
    values = {}
    for name in sorted(n for n in environ if n.startswith(head) and n[len(head):] not in not_fields):
        suffix = name[len(head):]
        if suffix not in fields:
            close = difflib.get_close_matches(suffix, list(fields), n=1)
            hint = f" (did you mean {head}{close[0]}?)" if close else ""
            raise ValueError(f"{name} is not a setting: {type(config).__name__} has no field "
                             f"{suffix.lower()!r}{hint}; its fields are {sorted(fields.values())}")
        values[fields[suffix]] = (environ[name], name)
    return _replace(config, values)


def with_overrides(config: Config, values: Mapping[str, str], source: str = "--set") -> Config:
    """`config` with fields replaced by `{field: text}` values, parsed as `from_env` parses them.

    For command-line flags such as `--set temperature=0.05`; errors name `source` and the field.
    """
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{source}: {type(config).__name__} has no field(s) {unknown}; "
                         f"its fields are {sorted(fields)}")
    return _replace(config, {name: (text, f"{source} {name}") for name, text in values.items()})


def parse_assignments(items: Sequence[str], source: str = "--set") -> dict[str, str]:
    """`["temperature=0.05", ...]` -> `{"temperature": "0.05"}`; an item without '=' is an error."""
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{source} {item!r}: expected FIELD=VALUE")
        out[name.strip()] = text
    return out


def _replace(config: Config, values: Mapping[str, tuple[str, str]]) -> Config:
    """`values`: {field: (text, where the text came from, for errors)}."""
    hints = typing.get_type_hints(type(config))
    parsed = {name: parse_value(text, hints[name], f"{where}={text!r}", f"{type(config).__name__}.{name}")
              for name, (text, where) in values.items()}
    return dataclasses.replace(config, **parsed)


def parse_value(text: str, annotation: Any, what: str, field: str) -> Any:
    """`text` as a value of the type `annotation` (e.g. `int`, `tuple[int, ...]`, `Optional[str]`).

    Raises:
      ValueError: "<what>: expected <type> (<field>)", e.g.
        "TOWER_RECS_MODEL_EPOCHS='six': expected an int (ModelConfig.epochs)".
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if text.strip().lower() in ("none", "null"):
            return None
        annotation = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is str:
        return text
    if origin in (tuple, dict) or annotation in (tuple, dict):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        return _check(value, annotation, what, field)
    return _check(_scalar(text.strip(), annotation), annotation, what, field)


def _scalar(text: str, annotation: Any) -> Any:
    """`text` as a bool, int or float (None when it is not one)."""
    if annotation is bool:
        return True if text.lower() in _TRUE else False if text.lower() in _FALSE else None
    try:
        return annotation(text) if annotation in (int, float) else None
    except ValueError:
        return None


def _check(value: Any, annotation: Any, what: str, field: str) -> Any:
    """`value` converted to `annotation` (JSON lists become tuples), or ValueError naming the type."""
    converted = _convert(value, annotation)
    if converted is _INVALID:
        raise ValueError(f"{what}: expected {_describe(annotation)} ({field})")
    return converted


_INVALID = object()


def _convert(value: Any, annotation: Any) -> Any:
    origin, args = typing.get_origin(annotation) or annotation, typing.get_args(annotation)
    if annotation is Any:
        return value
    if annotation is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _INVALID
    if annotation is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    if annotation in (bool, str):
        return value if isinstance(value, annotation) else _INVALID
    if origin is tuple:
        if not isinstance(value, list):
            return _INVALID
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args or [Any] * len(value))
        if len(kinds) != len(value):
            return _INVALID
        items = [_convert(v, k) for v, k in zip(value, kinds)]
        return _INVALID if any(i is _INVALID for i in items) else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            return _INVALID
        key_type, value_type = args or (Any, Any)
        items = {_convert(k, key_type): _convert(v, value_type) for k, v in value.items()}
        return _INVALID if _INVALID in items or _INVALID in items.values() else items
    return _INVALID


def _describe(annotation: Any) -> str:
    names = {int: "an int", float: "a number", bool: "a bool (1/0, true/false, yes/no)", str: "a string",
             dict: "a JSON object", tuple: "a JSON list"}
    if annotation in names:
        return names[annotation]
    origin = typing.get_origin(annotation)
    return f"{names.get(origin, 'a value')} ({annotation})"
