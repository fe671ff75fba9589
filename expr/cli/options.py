"""A command's own options as a typed dataclass, one field per option with its docstring as the help.

    @dataclass(kw_only=True)
    class EvaluateOptions:
        run_dir: str = positional()
        \"\"\"a run directory\"\"\"
        split: str = "validation"
        \"\"\"the split to score\"\"\"

    opts, overrides = parse_options(EvaluateOptions, argv, prog="expr evaluate", section="evaluate")

A field ``split`` is the option ``--split`` (underscores become hyphens: ``test_names`` is ``--test-names``) and
also the dotted key ``--evaluate.split``, the grammar of ``expr train``'s config. A field without a default is
required; ``bool`` fields default to False and are flags; ``Literal`` fields list their choices; ``tuple[str, ...]``
fields are repeatable options. Every other
dotted option on the command line (``--data.eval_stride 5``) is returned as a config override for the command to
apply (or refuse by name).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from expr.config import ConfigError, all_keys, docstrings, split_overrides


def positional(**kwargs: Any) -> Any:
    """A dataclass field given by position (``expr evaluate RUN_DIR``) instead of by ``--name``."""
    return dataclasses.field(metadata={"positional": True}, **kwargs)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def add_options(parser: argparse.ArgumentParser, cls: type) -> argparse.ArgumentParser:
    """Add one argument per field of dataclass ``cls`` to ``parser``: type, choices, default, help from the field."""
    hints = typing.get_type_hints(cls)
    docs = docstrings(cls)
    for f in dataclasses.fields(cls):
        tp = _unwrap(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = docs.get(f.name, "")
        if not required and default not in (None, False, ""):
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"help": help_text, "default": default}
        if tp is bool:
            if default is not False:
                raise TypeError(f"{cls.__name__}.{f.name}: a flag must default to False")
            parser.add_argument(flag_name(f.name), action="store_true", dest=f.name, help=help_text)
            continue
        if typing.get_origin(tp) is tuple and f.metadata.get("positional"):  # several: RUN [RUN ...]
            kwargs["nargs"] = "+" if required else "*"
        elif typing.get_origin(tp) is tuple:  # repeatable: --visual A --visual B
            kwargs.update(action="append", default=None)
            kwargs["help"] = docs.get(f.name, "") + " (repeatable)"
        elif typing.get_origin(tp) is Literal:
            kwargs["choices"] = typing.get_args(tp)
        elif tp in (int, float):
            kwargs["type"] = tp
        if f.metadata.get("positional"):
            if not required:
                kwargs.setdefault("nargs", "?")
            parser.add_argument(f.name, metavar=f.name.upper(), **kwargs)
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, required=required, metavar=f.name.upper(), **kwargs)
    return parser


def _example(cls: type | dict[str, tuple[type, str]]) -> str:
    klass = next(iter(cls.values()))[0] if isinstance(cls, dict) else cls
    return next((f.name for f in dataclasses.fields(klass) if not f.metadata.get("positional")), "")


def parse_options(
    cls: type | dict[str, tuple[type, str]],
    argv: list[str],
    prog: str,
    section: str,
    description: str | None = None,
    epilog: str | None = None,
    config_keys: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """(an instance of ``cls``, the other dotted options as config overrides) from ``argv``.

    ``cls`` may map sub-command names to (dataclass, help) (``expr prepare affwild2 | folder``). ``--SECTION.key``
    is the same as ``--key``. ``config_keys`` False: the command takes no other dotted key. Mistakes exit with
    argparse's usage message naming the option."""
    grammar = f"Each option above is also --{section}.<name> (e.g. --{section}.{_example(cls)}), as in expr train."
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"{grammar}\n\n{epilog}" if epilog else grammar,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if isinstance(cls, dict):
        sub = parser.add_subparsers(dest="_command", required=True)
        for name, (klass, help_text) in cls.items():
            sub_parser = sub.add_parser(
                name,
                help=help_text,
                description=help_text,
                epilog=parser.epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            add_options(sub_parser, klass)
        classes = [klass for klass, _ in cls.values()]
    else:
        add_options(parser, cls)
        classes = [cls]
    fields = [f for klass in classes for f in dataclasses.fields(klass)]
    flags = {name for klass in classes for name, tp in typing.get_type_hints(klass).items() if tp is bool}
    named = {f.name for f in fields if not f.metadata.get("positional")}
    try:
        rest, dotted = split_overrides(argv)
    except ConfigError as e:
        parser.error(str(e))
    config = set(all_keys()) if config_keys else set()  # a config section may share the command's name
    for key in [k for k in dotted if k.startswith(section + ".") and k not in config]:
        name, value = key[len(section) + 1 :], str(dotted.pop(key))
        if name not in named:
            own = sorted(named) + [k[len(section) + 1 :] for k in sorted(config) if k.startswith(section + ".")]
            close = difflib.get_close_matches(name, own, n=1)
            hint = f" Did you mean --{section}.{close[0]}?" if close else ""
            parser.error(f"unknown option '--{key}': {section} has no option '{name}' given by name.{hint}")
        if name in flags and value.lower() not in ("true", "false"):
            parser.error(f"option '--{key}' takes true or false, not '{value}'")
        if name not in flags:
            rest += [flag_name(name), value]
        elif value.lower() == "true":
            rest.append(flag_name(name))
    if dotted and not config_keys:
        parser.error(f"{prog} takes no config key (got --{next(iter(dotted))})")
    args = vars(parser.parse_args(rest))
    klass = cls[args.pop("_command")][0] if isinstance(cls, dict) else cls
    tuples = {name for name, tp in typing.get_type_hints(klass).items() if typing.get_origin(tp) is tuple}
    args = {k: tuple(v or ()) if k in tuples else v for k, v in args.items()}
    return klass(**args), dotted
