"""The config tree (:class:`Config`), its presets, and building one: defaults, then a preset, then YAML files, then
dotted overrides, validated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from expr.config.checks import validate
from expr.config.sections import (
    BackboneConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    LossConfig,
    ModelConfig,
    PredictConfig,
    TrainConfig,
)
from expr.config.values import _fields, _to_plain, _type_name, apply_dict, docstrings, dotted_keys, load_yaml


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    backbones: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> Config:
        """A saved, fully resolved config (a run's config.yaml, an export's config.json): defaults, then
        ``values``, validated; no preset (the values already carry it). Errors name ``source``."""
        cfg = cls()
        apply_dict(cfg, values, source)
        try:
            validate(cfg)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        return cfg

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# The demo preset: the built-in demo data is small and must train in minutes on a laptop CPU, so it uses a
# larger learning rate and fewer epochs than the paper. Everything else stays at the paper's values.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "demo": {
        "train.lr": 3e-4,
        "train.epochs": 8,
        "train.batch_size": 32,
        "train.warmup_ratio": 0.05,
        "data.eval_stride": 10,  # validation at stride 3 would take longer than training on a laptop CPU
        "backbones.clip_pretrained": "random",
    },
    # `expr finetune` (stage I): a few epochs; the new linear classifier learns fast, the encoder slowly.
    "finetune": {
        "train.lr": 1e-3,
        "finetune.lr": 1e-4,
        "train.epochs": 5,
        "train.warmup_ratio": 0.05,
    },
}


def all_keys(cfg: Config | None = None) -> list[str]:
    """Every dotted key of the config tree, e.g. ``model.tcn_blocks``."""
    return dotted_keys(cfg or Config())


def field_docs() -> dict[str, str]:
    """The docstring of every dotted key of the config tree."""
    return {
        f"{section}.{key}": doc for section, f in _fields(Config()).items() for key, doc in docstrings(f.type).items()
    }


def options_help(preset: str = "paper") -> str:
    """Every option ``--section.key``, its type, its default under ``preset`` and its docstring, by section."""
    import textwrap

    cfg = build_config({}, preset=preset)
    docs = field_docs()
    lines = []
    for section in _fields(cfg):
        lines.append(f"{section}:")
        for key, f in _fields(getattr(cfg, section)).items():
            dotted = f"{section}.{key}"
            value = getattr(getattr(cfg, section), key)
            lines.append(f"  --{dotted} {_type_name(f.type)} (default {value!r})")
            lines += textwrap.wrap(docs.get(dotted, ""), 112, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def build_config(
    overrides: dict[str, Any] | None = None,
    yaml_files: list[str | Path] = (),
    preset: str | None = None,
) -> Config:
    """Defaults, then ``preset`` (``paper`` or ``demo``; default: ``demo`` when no data cache is set), then YAML,
    then ``overrides`` (dotted keys)."""
    overrides = dict(overrides or {})
    layers: list[tuple[dict[str, Any], str]] = [(load_yaml(p), str(p)) for p in yaml_files]
    layers.append((overrides, "command line"))
    if preset is None:
        probe = Config()
        for values, source in layers:
            apply_dict(probe, values, source)
        preset = "paper" if probe.data.cache else "demo"
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; choose from {', '.join(PRESETS)}")
    cfg = Config()
    apply_dict(cfg, PRESETS[preset], f"preset {preset}")
    for values, source in layers:
        apply_dict(cfg, values, source)
    validate(cfg)
    return cfg
