"""Typed configs: dataclasses, YAML files, ``key=value`` overrides, one validation step.

Every config is a tree of dataclasses whose fields are declared with :func:`option`, which
carries a one-line doc and the allowed values. :func:`load_config` turns a YAML file plus
command-line overrides into that tree and validates it *before* anything is written or
submitted; a bad key or value raises :class:`ConfigError` naming the key, the value and
what is allowed.

    cfg = load_config(PretrainConfig, "configs/pretrain/tiny.yaml", ["train.steps=20"])
    cfg.train.steps  # 20

A YAML file may start from another with ``_base_: other.yaml`` (path relative to the file).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``6e-3`` as a float (YAML 1.1, and so PyYAML, wants ``6.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass

__all__ = [
    "COMMAND_LINE",
    "ConfigError",
    "option",
    "load_config",
    "build_config",
    "parse_overrides",
    "to_dict",
    "to_yaml",
    "config_hash",
    "config_diff",
    "describe",
]


# The source of a value given as a ``key=value`` override (or a command's flag), not read from a file.
COMMAND_LINE = "the command line"


class ConfigError(ValueError):
    """A config key or value that is not allowed. ``key`` is the dotted path; ``source`` the YAML
    file the value came from, or :data:`COMMAND_LINE`."""

    def __init__(self, key: str, value: Any, expected: str, source: str | None = None):
        self.key, self.value, self.expected, self.source = key, value, expected, source
        where = " (on the command line)" if source == COMMAND_LINE else f" (in {source})" if source else ""
        super().__init__(f"config key '{key}'{where}: got {value!r}; expected {expected}")


def option(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    choices: typing.Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A documented, checked dataclass field.

    ``choices`` restricts the value to a set; ``ge``/``gt``/``le`` bound numbers (for lists,
    every element). Mutable defaults go through ``default_factory``.
    """
    meta = {"doc": doc, "choices": tuple(choices) if choices is not None else None, "ge": ge, "gt": gt, "le": le}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, tp.__name__)
    origin = get_origin(tp)
    if origin in (list, tuple):
        (inner, *_) = get_args(tp) or (Any,)
        return f"a list of {_type_name(inner).removeprefix('a ').removeprefix('an ')}s"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return str(tp)


def _coerce(key: str, value: Any, tp: Any, source: str | None) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted where floats are asked."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(key, value, arg, source)
            except ConfigError:
                continue
        raise ConfigError(key, value, _type_name(tp), source)
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(key, value, "null", source)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(key, value, _type_name(tp), source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, _type_name(tp), source)
        args = get_args(tp)
        inner = args[0] if args else Any
        return [_coerce(f"{key}[{i}]", v, inner, source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, "a mapping", source)
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, "true or false", source)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, value, "an integer", source)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # .inf / .nan parse as floats, and pass every bound check but ==
                raise ConfigError(key, value, "a finite number", source)
            return float(value)
        raise ConfigError(key, value, "a number", source)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, value, "a string", source)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, value, f"a mapping of {tp.__name__} fields", source)
        return _build(tp, value, key, source)
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def _check_bounds(key: str, value: Any, meta: dict, source: str | None) -> None:
    items = value if isinstance(value, list) else [value]
    for v in items:
        if v is None:
            continue
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise ConfigError(key, value, "one of " + ", ".join(repr(c) for c in meta["choices"]), source)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if meta.get("ge") is not None and v < meta["ge"]:
                raise ConfigError(key, value, f"a number >= {meta['ge']}", source)
            if meta.get("gt") is not None and v <= meta["gt"]:
                raise ConfigError(key, value, f"a number > {meta['gt']}", source)
            if meta.get("le") is not None and v > meta["le"]:
                raise ConfigError(key, value, f"a number <= {meta['le']}", source)


def _build(cls: type[T], data: dict, prefix: str, source: str | None) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for k in data:
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean '{_join(prefix, close[0])}'?)" if close else ""
            raise ConfigError(_join(prefix, k), data[k], f"a known key of {cls.__name__}: {', '.join(fields)}{hint}", source)
    kwargs = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name in data:
            value = _coerce(key, data[name], hints[name], source)
        elif dataclasses.is_dataclass(hints[name]) and f.default_factory is dataclasses.MISSING and f.default is dataclasses.MISSING:
            value = _build(hints[name], {}, key, source)
        else:
            continue
        _check_bounds(key, value, dict(f.metadata), source)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without a default
        raise ConfigError(prefix or cls.__name__, data, f"all required fields of {cls.__name__} ({e})", source) from e


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _validate(cfg: Any) -> None:
    """Run each dataclass's own ``validate()`` (cross-field rules), children first."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            _validate(v)
    if hasattr(cfg, "validate"):
        cfg.validate()


# ----------------------------------------------------------------------------- loading


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError("--config", str(path), "an existing YAML file")
    if path.resolve() in seen:
        raise ConfigError("_base_", str(path), "a chain of configs without cycles")
    try:
        data = _yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError("--config", str(path), f"valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError("--config", str(path), "a YAML mapping at the top level")
    base = data.pop("_base_", None)
    if base is not None:
        parent = _read_yaml((path.parent / base), seen + (path.resolve(),))
        data = _merge(parent, data)
    return data


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(overrides: typing.Iterable[str]) -> dict:
    """``["train.steps=20", "data.shards=[a,b]"]`` → nested dict; values parsed as YAML scalars."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, item, "an override of the form key=value (e.g. train.steps=20)", COMMAND_LINE)
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(item, item, "a non-empty key before '='", COMMAND_LINE)
        try:
            value = _yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(key, raw, "a key that is not also set as a value", COMMAND_LINE)
        node[parts[-1]] = value
    return out


def build_config(cls: type[T], data: dict, source: str | None = None) -> T:
    """Dict → validated ``cls`` tree. Raises :class:`ConfigError` on the first bad key or value."""
    cfg = _build(cls, data, "", source)
    _validate(cfg)
    return cfg


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Read ``path`` (YAML, optional), apply ``key=value`` overrides, build and validate.

    Nothing is written; call this before creating any directory or submitting any job.
    """
    overrides = list(overrides)
    data = _read_yaml(Path(path)) if path else {}
    given = parse_overrides(overrides)
    try:
        return build_config(cls, _merge(data, given), source=str(path) if path else COMMAND_LINE)
    except ConfigError as e:
        # Name where the bad value came from: the command line that overrode it, the file, or
        # neither (a default that a cross-field rule refuses).
        source = COMMAND_LINE if _given(given, e.key) else str(path) if path and _given(data, e.key) else None
        if source == e.source:
            raise
        raise ConfigError(e.key, e.value, e.expected, source) from e


def _given(overrides: dict, key: str) -> bool:
    """Whether the dotted ``key`` (``data.shards[0]`` included) was set by an override."""
    node: Any = overrides
    for part in re.sub(r"\[\d+\]", "", key).split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


# ----------------------------------------------------------------------------- output


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg: Any, exclude: typing.Iterable[str] = ()) -> str:
    """sha256 (16 hex) of the config's JSON, without the dotted keys in ``exclude``."""
    flat = {k: v for k, v in _flatten(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg).items() if not any(k == e or k.startswith(e + ".") for e in exclude)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = _join(prefix, k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def config_diff(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two config dicts: ``[(key, old, new)]``."""
    a, b = _flatten(old), _flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """``[(dotted key, type, default, doc)]`` for every leaf field: for ``--help`` and docs."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = _join(prefix, f.name), hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, key)
            continue
        default = f.default if f.default is not dataclasses.MISSING else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append((key, _type_name(tp), default, f.metadata.get("doc", "")))
    return rows
