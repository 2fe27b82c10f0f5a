"""Validate a composed config against typed dataclass schemas, before any worker starts.

Errors name the full dotted key path (``algorithm.group_size``). A schema dataclass may define
``check(self, path)`` for cross-field rules; a field typed with a :class:`Dispatch` picks its schema
from a discriminator key (``env_type``), so a new environment only adds one schema class.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Literal, Union

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A config key is unknown, missing, mistyped or inconsistent; the message names its path."""


@dataclasses.dataclass(frozen=True)
class Dispatch:
    """Schema chosen by the value of ``key`` in the node, from ``options`` (name -> dataclass)."""

    key: str
    options: dict


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def validate(node: Any, schema: Any, path: str = "") -> Any:
    """Return ``node`` converted to ``schema`` (dataclass instances, lists, dicts, scalars)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    return _validate(node, schema, path)


def _validate(value: Any, schema: Any, path: str) -> Any:
    if isinstance(schema, Dispatch):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping with '{schema.key}', got {type(value).__name__}")
        choice = value.get(schema.key)
        if choice not in schema.options:
            raise ConfigError(
                f"{_join(path, schema.key)}: unknown value {choice!r}; expected one of {sorted(schema.options)}"
            )
        return _validate(value, schema.options[choice], path)
    if schema is Any:
        return value
    origin = typing.get_origin(schema)
    if origin in (Union, types.UnionType):
        args = typing.get_args(schema)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _validate(value, arg, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {schema}")
    if origin is Literal:
        if value not in typing.get_args(schema):
            raise ConfigError(f"{path}: {value!r} is not one of {list(typing.get_args(schema))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(schema)[:1] or (Any,)
        return [_validate(v, item, _join(path, i)) for i, v in enumerate(value)]
    if origin is dict or schema is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        args = typing.get_args(schema)
        item = args[1] if len(args) == 2 else Any
        return {k: _validate(v, item, _join(path, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(schema):
        return _validate_dataclass(value, schema, path)
    if schema is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if schema in (int, str, bool):
        if not isinstance(value, schema) or (schema is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: expected {_type_name(schema)}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported schema type {schema!r} at {path}")


def _validate_dataclass(value: Any, schema: type, path: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping for {schema.__name__}, got {type(value).__name__}")
    hints = typing.get_type_hints(schema, include_extras=False)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ConfigError(
            f"{_join(path, unknown[0])}: unknown key for {schema.__name__}; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, field in fields.items():
        field_path = _join(path, name)
        if name in value:
            field_schema = field.metadata.get("schema", hints[name])
            kwargs[name] = _validate(value[name], field_schema, field_path)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{field_path}: required key is missing")
    instance = schema(**kwargs)
    check = getattr(instance, "check", None)
    if check is not None:
        check(path)
    return instance


def dispatch_field(key: str, options: dict, **kwargs) -> Any:
    """A dataclass field whose schema is chosen by ``key`` (see :class:`Dispatch`)."""
    return dataclasses.field(metadata={"schema": Dispatch(key, options)}, **kwargs)


def key_path(path: str) -> Callable[[str], str]:
    """``key -> "path.key"`` (just ``key`` at the root): the names ``check`` methods give :func:`require`."""
    return lambda key: _join(path, key)


def require(condition: bool, path: str, message: str) -> None:
    """Raise :class:`ConfigError` naming ``path`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{path}: {message}")
