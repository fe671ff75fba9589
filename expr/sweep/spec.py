"""Study files: what a study varies, and how (``expr/sweep/studies/<name>.yaml`` ships with expr; any YAML file
works)::

    description: Window length (the paper's Table 1)
    type: grid                       # grid | search | posthoc
    params:                          # grid: lists of values; search: {choices: [...]} or {low, high, log}
      data.window: [10, 15, 30, 60]
      data.visual: from_store        # grid: every visual (data.visual) or audio (data.audio) set of the store
    overrides: {}                    # config values for every trial
    n_trials: 30                     # search only: the trial budget
    sampler: tpe                     # search only: tpe | random
    pruner: median                   # search only: median | hyperband | none
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from expr.config import all_keys

STUDY_DIR = Path(__file__).resolve().parent / "studies"
FROM_STORE = "from_store"  # a grid axis over the feature sets of the study's store
STORE_AXES = {"data.visual": "visual", "data.audio": "audio"}
REPEAT_KEYS = ("train.seed", "data.fold")


class SweepError(ValueError):
    """A study definition or command line that cannot run; the message names the file or option."""


@dataclass
class Study:
    name: str
    type: str
    params: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    n_trials: int = 20
    sampler: str = "tpe"
    pruner: str = "median"
    path: Path | None = None

    def grid(self, seeds: list[int], folds: int) -> list[dict[str, Any]]:
        """Every setting x repeat of a grid study, in a fixed order."""
        import itertools

        keys = list(self.params)
        points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.params.values())]
        out = []
        for p in points:
            for seed in seeds:
                for fold in range(max(folds, 1)):
                    q = dict(p, **{"train.seed": seed})
                    if folds:
                        q["data.fold"] = fold
                    out.append(q)
        return out


def resolve_store_axes(study: Study, store) -> Study:
    """``study`` with every ``from_store`` axis replaced by the names of the store's feature sets of that modality
    (each set alone, in the store's order)."""
    params = dict(study.params)
    for key, modality in STORE_AXES.items():
        if params.get(key) == FROM_STORE:
            names = [n for n, s in store.feature_sets.items() if s["modality"] == modality]
            if not names:
                raise SweepError(f"{store.path}: no {modality} feature sets for the study's {key} axis")
            params[key] = names
    return dataclasses.replace(study, params=params)


def study_files(folder: Path = STUDY_DIR) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def load_study(name_or_path: str, folder: Path = STUDY_DIR) -> Study:
    """A study by name (a shipped study, ``expr/sweep/studies/<name>.yaml``) or by the path of a YAML file."""

    path = Path(name_or_path)
    if not path.suffix:
        known = study_files(folder)
        if name_or_path not in known:
            raise SweepError(f"unknown study '{name_or_path}'; studies in {folder}: {', '.join(known) or 'none'}")
        path = known[name_or_path]
    if not path.is_file():
        raise SweepError(f"{path}: study file not found")
    spec = yaml.safe_load(path.read_text()) or {}
    allowed = {"description", "type", "params", "overrides", "n_trials", "sampler", "pruner"}
    unknown = set(spec) - allowed
    if unknown:
        raise SweepError(
            f"{path}: unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    kind = spec.get("type", "grid")
    if kind not in ("grid", "search", "posthoc"):
        raise SweepError(f"{path}: type '{kind}' is not grid, search or posthoc")
    params = spec.get("params") or {}
    if not params:
        raise SweepError(f"{path}: no params")
    keys = set(all_keys())
    for key in {**params, **(spec.get("overrides") or {})}:
        if key not in keys:
            import difflib

            close = difflib.get_close_matches(key, keys, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise SweepError(f"{path}: '{key}' is not a config key.{hint}")
    for key, values in params.items():
        if values == FROM_STORE:
            if kind != "grid" or key not in STORE_AXES:
                raise SweepError(f"{path}: params.{key}: {FROM_STORE} is for data.visual / data.audio of a grid study")
            continue
        if kind in ("grid", "posthoc") and not (isinstance(values, list) and values):
            raise SweepError(f"{path}: params.{key} must be a non-empty list of values for a {kind} study")
        if kind == "search" and not (
            isinstance(values, dict) and ("choices" in values or {"low", "high"} <= set(values))
        ):
            raise SweepError(f"{path}: params.{key} must be {{choices: [...]}} or {{low: .., high: .., log: ..}}")
    expr_keys, va_keys = {"eval.smoothing", "eval.smoothing_width"}, {"eval.va_smoothing", "eval.va_smoothing_width"}
    if kind == "posthoc" and not (set(params) <= expr_keys or set(params) <= va_keys):
        raise SweepError(f"{path}: a posthoc study varies eval.smoothing and eval.smoothing_width (expressions), or "
                         f"eval.va_smoothing and eval.va_smoothing_width (valence-arousal)")  # fmt: skip
    return Study(
        name=path.stem,
        type=kind,
        params=params,
        overrides=spec.get("overrides") or {},
        description=spec.get("description", ""),
        n_trials=int(spec.get("n_trials", 20)),
        sampler=spec.get("sampler", "tpe"),
        pruner=spec.get("pruner", "median"),
        path=path,
    )
