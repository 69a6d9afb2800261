"""YAML values -> frozen dataclasses, every key and type checked (the machinery of `train/config.py`).

    config = build(TrainConfig, values, shorthands={ModelConfig: "name"})   # ConfigError names the key
    set_dotted(tree, "optimizer.lr", 1e-4)                                   # a `key=value` override
    values = read_mapping(path)                                              # a YAML file's top mapping

An unknown key names the nearest known one (`unknown key 'setps'; did you mean 'steps'?`), a wrong
type names the key and what it expected. `shorthands` maps a section's class to the field that a
bare string sets (`model: smollm2-135m-instruct` is short for `model.name`).
"""
from __future__ import annotations

import dataclasses
import difflib
import pathlib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import yaml

from alignx_jax.errors import InputError


class ConfigError(InputError):
    """A training config key is unknown, mistyped or out of range; the message names the key."""


def type_name(tp) -> str:
    """What a value of type `tp` must be, in words (for error messages)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {type(None): "null", dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def convert(value: Any, tp, key: str, shorthands: Mapping[type, str] = {}):  # noqa: B006 (read only)
    """`value` checked and converted to `tp` (a Literal, Union, tuple / list, dataclass, dict or scalar)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"config key {key!r} must be one of {list(typing.get_args(tp))}, got {value!r}{hint}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and dataclasses.is_dataclass(others[0]):  # an optional section: its own errors
            return convert(value, others[0], key, shorthands)
        for arg in others:
            try:
                return convert(value, arg, key, shorthands)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r} must be {type_name(tp)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be {type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(convert(v, item, f"{key}[{i}]", shorthands) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, shorthands=shorthands)
    if tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" as a string
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key!r} must be {type_name(tp)}, got {value!r}")
    return value


def build(cls, values: Any, prefix: str = "", *, shorthands: Mapping[type, str] = {}):  # noqa: B006
    """A `cls` dataclass from a mapping (sections recursively); ConfigError names the first bad key."""
    if isinstance(values, str) and cls in shorthands:
        values = {shorthands[cls]: values}
    if not isinstance(values, Mapping):
        raise ConfigError(f"config key {prefix or '<top>'!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            close = difflib.get_close_matches(str(name), fields, n=1)
            hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {key!r}{hint}")
        kwargs[name] = convert(value, hints[name], key, shorthands)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"config key {(prefix + '.' if prefix else '') + missing[0]!r} is required")
    return cls(**kwargs)


def set_dotted(tree: dict, dotted: str, value: Any, *, shorthands: Mapping[str, str] = {}) -> None:  # noqa: B006
    """Set `tree[a][b][c] = value` for `dotted` "a.b.c" (sections created as needed); `shorthands`:
    a section key -> the field its bare string value stands for."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str) and part in shorthands:
            child = {shorthands[part]: child}
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a mapping")
        node[part] = child
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """`key=value` strings (dotted keys reach nested sections; values are YAML scalars or lists)."""
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. steps=100, optimizer.lr=1e-4)")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({error})") from None
        parsed.append((key.strip(), value))
    return parsed


def read_mapping(path: str | pathlib.Path) -> Mapping[str, Any]:
    """The top-level mapping of a YAML file; ConfigError for a missing file, bad YAML or another top level."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(values).__name__}")
    return values


def plain(x):
    """Dataclass fields as plain YAML-able data: tuples as lists (of `dataclasses.asdict`)."""
    if isinstance(x, (tuple, list)):
        return [plain(v) for v in x]
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    return x
