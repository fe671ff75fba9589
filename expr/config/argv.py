"""A command line's config: one tokenizer splits dotted ``--section.key VALUE`` overrides from the rest; ``expr
train``'s own options (``--config``, ``--preset``, ``--resume``) are read from that rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expr.config.checks import resume_changes, validate
from expr.config.sections import ConfigError
from expr.config.tree import Config, build_config
from expr.config.values import CliText, apply_dict, load_yaml


def parse_cli(argv: list[str]) -> tuple[dict[str, Any], list[str], str | None, str | None]:
    """Split ``argv`` into (dotted overrides as :class:`CliText`, ``--config`` files, ``--preset``, ``--resume``).

    Accepts ``--key value`` and ``--key=value`` (the tokenizer is :func:`split_overrides`, which every command
    shares). Anything not of that form raises ConfigError.
    """
    rest, overrides = split_overrides(argv)
    own: dict[str, list[str]] = {"config": [], "preset": [], "resume": []}
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument '{arg}': options look like --section.key VALUE")
        name, eq, value = arg[2:].partition("=")
        if name not in own:
            raise ConfigError(
                f"unknown option '--{name}': use --config FILE, --preset NAME, --resume RUN_DIR "
                f"or a dotted config key such as --model.tcn_blocks"
            )
        if not eq:
            if i + 1 >= len(rest) or (rest[i + 1].startswith("--") and not _is_number(rest[i + 1])):
                raise ConfigError(f"option '--{name}' needs a value")
            value = rest[i + 1]
            i += 1
        own[name].append(value)
        i += 1
    last = {k: v[-1] if v else None for k, v in own.items()}
    return overrides, own["config"], last["preset"], last["resume"]


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """(the other arguments, the dotted ``--section.key VALUE`` / ``--section.key=VALUE`` options) of a command line,
    so a command's own options and config overrides share one command line."""
    rest: list[str] = []
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=")
        if arg.startswith("--") and "." in name and not name.startswith("."):
            if not eq:
                if i + 1 >= len(argv) or (argv[i + 1].startswith("--") and not _is_number(argv[i + 1])):
                    raise ConfigError(f"option '--{name}' needs a value")
                value = argv[i + 1]
                i += 1
            overrides[name] = CliText(value)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def config_from_argv(argv: list[str], default_preset: str | None = None) -> tuple[Config, str | None]:
    """The resolved config of a command line; with ``--resume RUN_DIR`` the run's saved config plus overrides.
    ``default_preset``: the preset when the command line names none (default: ``demo`` without a data cache, else
    ``paper``)."""
    overrides, files, preset, resume = parse_cli(argv)
    if resume:
        saved = Path(resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {resume}: not a run directory ({saved} is missing)")
        cfg, recorded = Config(), Config()
        for c in (cfg, recorded):
            apply_dict(c, load_yaml(saved), str(saved))
        cfg.train.stop_after_steps = 0  # a simulated kill is not part of the run to continue
        for f in files:
            apply_dict(cfg, load_yaml(f), f)
        apply_dict(cfg, overrides, "command line")
        try:
            validate(recorded)
        except ConfigError as e:
            raise ConfigError(f"{saved}: {e}") from None
        try:
            validate(cfg)
        except ConfigError as e:
            raise ConfigError(f"--resume {resume} with these options: {e}") from None
        changes = resume_changes(recorded, cfg)
        if changes:  # refused before anything is built or written: the run stays as it was
            raise ConfigError(
                f"--resume {resume} would change what the run is ({'; '.join(changes)}): a resumed run keeps its "
                f"model, data, loss, schedule and evaluation. Resume without these options, or start a new run "
                f"(another --train.output_dir) to change them"
            )
        return cfg, resume
    return build_config(overrides, files, preset or default_preset), None
