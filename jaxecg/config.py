"""Frozen dataclass configs with presets, JSON-safe dicts and typed validation.

Every model and training config derives from :class:`Config`, so checkpoints,
YAML files and command-line overrides all go through one parser that names the
offending key when something is wrong instead of silently ignoring it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, ClassVar, Self

import yaml

from jaxecg.errors import ConfigError


def _where(cls_name: str, key: str) -> str:
    """A key as the user wrote it: its dotted path inside a section, ``Class.key`` at the top."""
    return key if "." in key else f"{cls_name}.{key}"


def _check_value(cls_name: str, key: str, hint: Any, value: Any) -> Any:
    """Coerce ``value`` to ``hint`` where that is lossless; raise naming ``key`` otherwise.

    ``key`` is the dotted path from the outermost config being parsed (``train.steps``).
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    where = _where(cls_name, key)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _check_value(cls_name, key, arg, value)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} matches none of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected None, got {value!r}")
        return None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a sequence for {hint}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_value(cls_name, key, args[0], v) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items for {hint}, got {value!r}")
        return tuple(_check_value(cls_name, key, a, v) for a, v in zip(args, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and issubclass(hint, Config):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {hint.__name__}, got {value!r}")
        return hint.from_dict(value, _prefix=f"{key}.")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected bool, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected str, got {value!r}")
        return value
    return value


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of all configs: ``preset``, ``replace``, ``to_dict``/``from_dict``.

    Subclasses are ``@dataclasses.dataclass(frozen=True)`` and may define
    ``PRESETS: ClassVar[dict[str, dict]]`` mapping a preset name to field values, and
    ``RETIRED: ClassVar[dict[str, tuple[Any, str]]]`` mapping a removed option to its old
    default and what to do instead: stored configs (checkpoints, ``convert.save``
    directories) that carry it at that default still load; any other value is an error.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    RETIRED: ClassVar[dict[str, tuple[Any, str]]] = {}

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Self:
        """The named preset with ``overrides`` applied (unknown names are errors)."""
        if name not in cls.PRESETS:
            raise ConfigError(
                f"unknown {cls.__name__} preset {name!r}; choose from {sorted(cls.PRESETS)}"
            )
        return cls.from_dict({**cls.PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists) that ``from_dict`` reads back."""
        return {f.name: _to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, _prefix: str = "") -> Self:
        """Build from a mapping, rejecting unknown keys and wrong types by name."""
        data = _without_retired(cls, data, _prefix)
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - fields)
        if unknown:
            named = ", ".join(_unknown_key(_prefix, k, fields) for k in unknown)
            raise ConfigError(
                f"unknown {cls.__name__} key(s) {named}; valid keys: {sorted(fields)}"
            )
        values = {k: _check_value(cls.__name__, _prefix + k, hints[k], v) for k, v in data.items()}
        return cls(**values)


def _without_retired(cls: type[Config], data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``data`` without the class's retired options, which must hold their old default."""
    for key, (default, instead) in cls.RETIRED.items():
        if key in data and data[key] != default:
            raise ConfigError(f"{prefix + key!r} was removed: {instead}")
    return {k: v for k, v in data.items() if k not in cls.RETIRED}


def _unknown_key(prefix: str, key: str, fields: set[str]) -> str:
    """``'train.stpes' (did you mean 'train.steps'?)``: the path as written, a close match."""
    close = difflib.get_close_matches(str(key), sorted(fields), n=1)
    hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
    return f"{prefix + str(key)!r}{hint}"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-5`` as a float (YAML 1.1 insists on ``1.0e-5``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """A YAML document (config files, command-line values), floats like ``1e-5`` included."""
    return yaml.load(text, Loader=_Loader)


def parse_value(text: str) -> Any:
    """A command-line value as YAML (``3``, ``1e-4``, ``true``, ``[1, 2]``, ``null``, text)."""
    return read_yaml(text)
