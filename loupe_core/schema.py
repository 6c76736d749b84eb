"""Typed, strict loading of configuration dataclasses from JSON values: the one converter that
every config section uses (``loupe_core.config``'s RunConfig and ``key=value`` overrides, and
``from_dict`` of ``ModelConfig`` / ``LossConfig``).

``build(cls, d)`` checks every key against the dataclass's fields and every value against the
field's annotation (bool, int, float, str, Optional, Literal, lists, tuples, dicts, nested
dataclasses), converting where JSON needs it (an int for a float field, a list for a tuple); a
wrong key or value is a ``ConfigError`` (a ValueError) naming the key and what was expected, and the dataclass's
own ``__post_init__`` checks become one ConfigError naming the section.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Literal

from .errors import ConfigError


def field_types(cls) -> dict:
    """{field name: resolved annotation} of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def to_plain(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def convert(value, hint, key: str, types_of: Callable = field_types):
    """``value`` (a JSON value) checked and converted to ``hint``; ConfigError naming ``key``.
    ``types_of(cls)``: the field types of a nested dataclass (default: its annotations)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    def fail():
        return ConfigError(f"config key {key!r}: expected {type_name(hint)}, got {value!r}")

    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, key, types_of)
            except ValueError:
                pass
        raise fail()
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"config key {key!r}: expected one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise fail()
        return build(hint, value, key + ".", types_of)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail()
    if hint is str:
        if isinstance(value, str):
            return value
        raise fail()
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise fail()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key {key!r}: expected {len(args)} values, got {value!r}")
            return tuple(convert(v, a, key, types_of) for v, a in zip(value, args))
        elem = args[0] if args else Any
        items = [convert(v, elem, key, types_of) for v in value]
        return tuple(items) if (origin is tuple or hint is tuple) else items
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return dict(value)
        raise fail()
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise fail()


def build(cls, d: dict, prefix: str = "", types_of: Callable = field_types):
    """Instance of dataclass ``cls`` from the (partial) dict ``d``; missing fields keep defaults.

    Unknown keys, values of the wrong type (``convert``) and the dataclass's own checks
    (``__post_init__``) are each one ConfigError naming the key (``prefix`` + field) or section."""
    if not isinstance(d, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or cls.__name__!r}: expected an object, got {d!r}")
    types_ = types_of(cls)
    section = prefix.rstrip(".") or cls.__name__
    unknown = sorted(set(d) - set(types_))
    if unknown:
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r}; valid keys here: {sorted(types_)}")
    kwargs = {k: convert(v, types_[k], prefix + k) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config section {section!r}: {exc}") from exc


class DictMixin:
    """``from_dict`` (``build``: strict keys, typed values) and ``to_dict`` (JSON-ready) for dataclasses."""

    @classmethod
    def from_dict(cls, values: dict):
        return build(cls, values)

    def to_dict(self) -> dict:
        return to_plain(self)
