"""Setting values in a tree of config dataclasses by dotted key: type checks and coercion, command-line literals,
YAML files, field docstrings. Works on any such tree; knows nothing of expr's sections."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from expr.config.sections import ConfigError


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _fields(obj: Any) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(type(obj))
    out = {}
    for f in dataclasses.fields(obj):
        f.type = hints[f.name]
        out[f.name] = f
    return out


def dotted_keys(cfg: Any) -> list[str]:
    """Every dotted key of config tree ``cfg``, e.g. ``model.tcn_blocks``."""
    return [f"{s}.{k}" for s, sub in _fields(cfg).items() for k in _fields(getattr(cfg, s))]


def docstrings(cls: type) -> dict[str, str]:
    """The docstring of each field of dataclass ``cls`` (the string literal under the field), whitespace folded;
    fields of its dataclass bases included."""
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:], strict=False):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                    docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def _check_type(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` coerced to ``tp`` (int -> float, list -> tuple) or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"config key '{key}': {value!r} is not one of {choices}")
        return type(args[args.index(value)])(value)  # the plain type of the choice, never a str subclass
    if origin is tuple:
        if isinstance(value, str):  # the command line's forms: --train.tasks expr,va or "[expr, va]"
            value = [parse_literal(v.strip()) for v in value.strip().strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        item_tp = args[0]
        return tuple(_check_type(key, v, item_tp) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return str(value)
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def set_value(cfg: Any, key: str, value: Any) -> None:
    """Set dotted ``key`` on ``cfg`` after checking its type; unknown keys raise ConfigError with suggestions."""
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in _fields(cfg) or parts[1] not in _fields(getattr(cfg, parts[0])):
        close = difflib.get_close_matches(key, dotted_keys(cfg), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else f" Sections: {', '.join(_fields(cfg))}."
        raise ConfigError(f"unknown config key '{key}'.{hint}")
    section = getattr(cfg, parts[0])
    fld = _fields(section)[parts[1]]
    setattr(section, parts[1], _check_type(key, value, fld.type))


def apply_dict(cfg: Any, values: dict[str, Any], source: str = "") -> None:
    """Apply a nested (``{"model": {"tcn_blocks": 4}}``) or flat dotted mapping."""
    for key, value in values.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                _apply_one(cfg, f"{key}.{sub}", v, source)
        else:
            _apply_one(cfg, key, value, source)


class CliText(str):
    """A value as typed on the command line: parsed as a literal when applied, else taken as the text itself."""


def _apply_one(cfg: Any, key: str, value: Any, source: str) -> None:
    try:
        if isinstance(value, CliText):
            try:
                set_value(cfg, key, parse_literal(value))
            except ConfigError as parsed_error:
                try:  # e.g. `--model.fusion none` means the choice 'none', not None
                    set_value(cfg, key, str(value))
                except ConfigError:
                    raise parsed_error from None
        else:
            set_value(cfg, key, value)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if source else str(e)) from None


def parse_literal(text: str) -> Any:
    """Parse a command-line value: Python/YAML literals (``4``, ``3e-5``, ``[1, 2]``, ``none``), else a string."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return str(text)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return data
