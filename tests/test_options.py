"""Every command's own options: a typed dataclass, one grammar (``--key`` = ``--SECTION.key``), help from docstrings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import pytest

from expr.cli.options import parse_options, positional
from expr.config import docstrings


@dataclass(kw_only=True)
class Demo:
    run_dir: str = positional()
    """a run"""
    out: str
    """where to write"""
    split: str = "validation"
    """the split"""
    stride: int | None = None
    """frames between windows"""
    format: Literal["csv", "per-video"] = "csv"
    """file format"""
    no_progress: bool = False
    """no progress bar"""


def parse(argv):
    return parse_options(Demo, argv, "expr demo", "demo")


def test_options_are_typed_and_both_spellings_mean_the_same():
    opts, overrides = parse(["RUN", "--out", "o", "--stride", "5", "--no-progress", "--data.eval_stride", "4"])
    assert opts == Demo(run_dir="RUN", out="o", stride=5, no_progress=True)
    assert overrides == {"data.eval_stride": "4"}  # the run's config keys are the command's to apply or refuse
    dotted, rest = parse(["RUN", "--demo.out=o", "--demo.stride", "5", "--demo.no_progress", "true"])
    assert dotted == opts and rest == {}
    assert parse(["RUN", "--out", "o", "--demo.no_progress", "false"])[0].no_progress is False
    assert parse(["RUN", "--out", "o"])[0] == Demo(run_dir="RUN", out="o")  # the defaults


@pytest.mark.parametrize(
    "argv, message",
    [
        (["RUN", "--out", "o", "--demo.strid", "5"], "no option 'strid' given by name. Did you mean --demo.stride?"),
        (["RUN", "--out", "o", "--demo.run_dir", "x"], "no option 'run_dir' given by name"),
        (["RUN", "--out", "o", "--demo.no_progress", "yes"], "takes true or false, not 'yes'"),
        (["RUN", "--out", "o", "--stride", "five"], "argument --stride: invalid int value: 'five'"),
        (["RUN", "--out", "o", "--format", "xml"], "invalid choice: 'xml'"),
        (["RUN"], "the following arguments are required: --out"),
    ],
)
def test_mistakes_name_the_option(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def command_options():
    from expr.cli.calibrate import CalibrateOptions
    from expr.cli.ensemble import EnsembleOptions
    from expr.cli.evaluate import EvaluateOptions
    from expr.cli.export import ExportHeadOptions, ExportOptions
    from expr.cli.predict import PredictOptions
    from expr.cli.prepare import AffWild2Options, FolderOptions
    from expr.cli.store import StoreInfoOptions
    from expr.cli.submit import SubmitOptions
    from expr.cli.sweep import SweepOptions

    return [
        ("evaluate", [], EvaluateOptions),
        ("submit", [], SubmitOptions),
        ("predict", [], PredictOptions),
        ("export", [], ExportOptions),
        ("export-head", [], ExportHeadOptions),
        ("sweep", [], SweepOptions),
        ("prepare", ["affwild2"], AffWild2Options),
        ("prepare", ["folder"], FolderOptions),
        ("store", ["info"], StoreInfoOptions),
        ("ensemble", [], EnsembleOptions),
        ("calibrate", [], CalibrateOptions),
    ]


@pytest.mark.parametrize("command, sub, cls", command_options(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_command_help_lists_each_option_with_its_docstring(capsys, command, sub, cls):
    import textwrap

    from expr.cli import main

    docs = docstrings(cls)
    with pytest.raises(SystemExit) as e:
        main([command, *sub, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    for f in dataclasses.fields(cls):
        assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
        name = f.name.upper() if f.metadata.get("positional") else "--" + f.name.replace("_", "-")
        assert name in out, name
        assert textwrap.shorten(docs[f.name], 40, placeholder="") in out, f.name


def test_a_command_without_config_keys_refuses_one_by_name(capsys):
    with pytest.raises(SystemExit) as e:
        parse_options(Demo, ["RUN", "--out", "o", "--model.dim", "3"], "expr demo", "demo", config_keys=False)
    assert e.value.code == 2 and "expr demo takes no config key (got --model.dim)" in capsys.readouterr().err
