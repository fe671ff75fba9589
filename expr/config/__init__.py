"""The typed config tree: every hyperparameter, with the paper's values as defaults.

No torch here. A config is built from defaults, then a preset, then YAML files, then dotted command-line
overrides (``--model.tcn_blocks 4`` or ``--model.tcn_blocks=4``), each value parsed as a Python literal and
checked against the field's type. An unknown key or a wrong type raises :class:`ConfigError` naming the key,
before any work starts.

``sections`` (the dataclasses), ``values`` (setting a dotted key, YAML, literals), ``checks`` (bounds, cross-field
rules, resume), ``tree`` (:class:`Config`, presets, building), ``argv`` (a command line's config).
"""

from expr.config.argv import config_from_argv, parse_cli, split_overrides
from expr.config.checks import MAX_WIDTH, RESUME_MAY_CHANGE, resume_changes, scores_p_mtl, selection_metric, validate
from expr.config.sections import (
    ABAW_CLASSES,
    SMOOTHING,
    TASK_SCORES,
    TASKS,
    VA_SMOOTHING,
    BackboneConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    LossConfig,
    ModelConfig,
    Smoothing,
    TrainConfig,
    available_cores,
    default_num_workers,
    resolve_device,
)
from expr.config.tree import PRESETS, Config, all_keys, build_config, field_docs, options_help
from expr.config.values import CliText, apply_dict, docstrings, load_yaml, parse_literal, set_value

__all__ = [
    "ABAW_CLASSES", "MAX_WIDTH", "PRESETS", "RESUME_MAY_CHANGE", "SMOOTHING", "TASKS", "TASK_SCORES", "VA_SMOOTHING",
    "BackboneConfig", "CliText", "Config", "ConfigError", "DataConfig", "EvalConfig", "FinetuneConfig", "LossConfig",
    "ModelConfig", "Smoothing", "TrainConfig", "all_keys", "apply_dict", "available_cores", "build_config",
    "config_from_argv", "default_num_workers", "docstrings", "field_docs", "load_yaml", "options_help", "parse_cli",
    "parse_literal", "resolve_device", "resume_changes", "scores_p_mtl", "selection_metric", "set_value",
    "split_overrides", "validate",
]  # fmt: skip
