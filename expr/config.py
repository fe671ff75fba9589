"""The typed config tree: every hyperparameter, with the paper's values as defaults.

No torch here. A config is built from defaults, then a preset, then YAML files, then dotted command-line
overrides (``--model.tcn_blocks 4`` or ``--model.tcn_blocks=4``), each value parsed as a Python literal and
checked against the field's type. An unknown key or a wrong type raises :class:`ConfigError` naming the key,
before any work starts.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

ABAW_CLASSES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
TASKS = ("expr", "va", "au")
"""Aff-Wild2's three tasks: expressions (8 classes), valence-arousal, 12 action units."""
TASK_SCORES = {"expr": "val/macro_f1", "va": "val/ccc", "au": "val/au_f1"}
"""Each task's challenge score, as validation reports it."""


class ConfigError(ValueError):
    """A config key or value a user can fix; the message names the key."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under a scheduler), else the machine's count."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is visible, else ``cpu``; any other value as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_num_workers(mode: str, local_processes: int = 1) -> int:
    """DataLoader workers per process when ``data.num_workers`` is unset: none for cached features (the batch gather
    is one indexing operation), up to 8 in online mode (JPEG decoding must keep the accelerator busy)."""
    if mode == "cached":
        return 0
    return max(1, min(8, available_cores() // max(1, local_processes) - 1))


Smoothing = Literal["none", "mean", "mode"]
SMOOTHING: tuple[str, ...] = typing.get_args(Smoothing)  # eval.smoothing's choices, for every command
VaSmoothing = Literal["none", "mean", "median"]
VA_SMOOTHING: tuple[str, ...] = typing.get_args(VaSmoothing)  # eval.va_smoothing's choices


@dataclass
class DataConfig:
    cache: str | None = None
    """Feature cache directory written by ``expr prepare``. None: the built-in demo data (generated on first use)."""
    window: int = 30
    """Frames per window (ablation axis; the paper studies 10, 15, 30, 60)."""
    stride: int | None = 30
    """Frames between training windows' label frames: an epoch has one training window per ``stride`` frames of each
    video, whatever ``window`` is, so every window length trains for the same number of optimizer steps per epoch
    (the window study compares lengths at an equal budget). None: equal to ``window`` (a tiling grid; longer windows
    then get fewer steps)."""
    random_offset: bool = True
    """Each epoch, move every training window to another of the ``stride`` positions of its slot whose label frame
    has a target, cycling through them in an order drawn from (seed, window): the first ``stride`` epochs make every
    labelled training frame a target at least once (a fixed grid would only ever use one frame in ``stride``).
    Resume stays exact. False: the fixed grid every epoch."""
    eval_stride: int | None = None
    """Frames between consecutive validation (and evaluation, submission, prediction) windows. None: 3, or the
    window if shorter. A window's prediction is placed at its label frame and frames between two such frames are
    interpolated, so a perfect window classifier errs only within ``eval_stride / 2`` frames of a label change: a
    fixed small stride scores every window length at the same resolution (a third of the window would penalise long
    windows). Larger strides are cheaper (each window is ``window`` frames of work)."""
    label_frame: Literal["center", "last", "majority"] = "center"
    """Which frame labels a window: its centre frame (``window // 2`` from its start), its last frame, or the
    majority of its labelled frames. The paper does not say. With mean pooling over a symmetric window the centre is
    the natural choice. At evaluation a ``center``/``last`` window's prediction stands for its label frame; a
    ``majority`` window's prediction is spread evenly over its frames."""
    classes: tuple[str, ...] = ABAW_CLASSES
    """Class names, in label-index order."""
    visual: str | None = None
    """The store's visual feature sets to train on, by name (``expr store info`` lists them), comma-separated:
    several are concatenated per frame (``clip,dinov2``). None: the store's default (the first set it was prepared
    with; ``clip`` for the paper's CLIP ViT-B/32)."""
    audio: str | None = None
    """The store's audio feature set to train on, by name. None: the store's default (``wav2vec2``)."""
    in_memory: bool = False
    """Copy the store's feature arrays into RAM (each process its own copy) instead of memory-mapping them (shared by
    all processes through the page cache; a full Aff-Wild2 store opens in seconds). See BENCHMARKS.md."""
    mode: Literal["cached", "online"] = "cached"
    """``cached``: train from the store's frozen features (fast; the paper's frozen-backbone design). ``online``: run
    the frozen CLIP and Wav2Vec2 inside the training step on the store's face crops and audio (``expr prepare
    --media``), each window's audio encoded alone as in the paper, with optional frame augmentation."""
    augment: bool = True
    """Online mode: augment training windows (one random resized crop, flip and colour jitter per window)."""
    num_workers: int | None = None
    """DataLoader worker processes. None: 0 in cached mode (the batch gather is one in-memory indexing operation)
    and up to 8 per process in online mode (JPEG decoding must keep the GPU busy)."""
    demo_videos: int = 40
    """Demo data only: number of synthetic videos generated when ``cache`` is None."""
    folds: int = 0
    """k-fold cross-validation over videos: 0 = the store's own train/validation split; k >= 2 pools train and
    validation videos and validates on fold ``fold`` of k, split by raw video name (``<name>_left``/``_right``
    stay together), never by frame."""
    fold: int = 0
    """The validation fold (0 .. folds - 1) when ``folds`` >= 2."""

    def resolved_num_workers(self, local_processes: int = 1) -> int:
        """``num_workers``, or its default for the mode."""
        return default_num_workers(self.mode, local_processes) if self.num_workers is None else self.num_workers

    def resolved_eval_stride(self) -> int:
        """``eval_stride``, or its default: 3 frames (the window, if shorter)."""
        return self.eval_stride or min(3, self.window)


@dataclass
class ModelConfig:
    visual_dim: int = 512
    """Width of the per-frame visual features (512: CLIP ViT-B/32). Training sets it from the store's chosen sets
    (``data.visual``); the run's config records it."""
    audio_dim: int = 768
    """Width of the audio features (768: Wav2Vec2-Base). Training sets it from the store's chosen set."""
    dim: int = 512
    """Common width of both streams after the TCN / audio adapter."""
    tcn_blocks: int = 6
    """Residual blocks of dilated causal convolutions on the visual stream (ablation axis; 0 = no TCN)."""
    tcn_kernel: int = 3
    """Kernel size of every TCN convolution (not given by the paper; 3 as in Bai et al. 2018)."""
    tcn_weight_norm: bool = True
    """Weight normalisation on the TCN convolutions, as in Bai et al. 2018."""
    fusion: Literal["bidirectional", "v2a", "a2v", "none"] = "bidirectional"
    """Cross-attention direction (ablation axis): both, visual-queries-audio only, audio-queries-visual only, none."""
    heads: int = 8
    """Attention heads of each cross-attention."""
    modalities: Literal["audio_visual", "visual", "audio"] = "audio_visual"
    """Streams the head may use. ``visual`` or ``audio`` masks the other stream out entirely (single-modality
    ablations); the architecture stays the same."""
    dropout: float = 0.1
    """Dropout in the TCN blocks, the audio adapter and the attention weights."""
    mlp_hidden: tuple[int, ...] = (512, 256)
    """Hidden widths of the classifier MLP (two hidden layers make the paper's three linear layers)."""
    mlp_dropout: float = 0.3
    """Dropout after each hidden layer of the classifier MLP."""
    text_dim: int = 512
    """Width of the CLIP text embeddings the pooled visual feature is projected to. Training sets it from the
    prompt embeddings it uses."""
    logit_scale_init: float = 2.6592
    """Initial log of the contrastive logit scale (CLIP's log(1/0.07))."""
    learnable_logit_scale: bool = True
    """Learn the contrastive logit scale (clamped at 100 as in CLIP) or keep it fixed."""


@dataclass
class LossConfig:
    contrastive_weight: float = 0.1
    """Lambda in L = L_cls + lambda * L_con (ablation axis; 0 disables the contrastive loss)."""
    class_weights: Literal["inverse", "sqrt_inverse", "effective", "none"] = "inverse"
    """Cross-entropy class weights from the training label distribution: ``inverse`` w_c = N / (C * n_c);
    ``sqrt_inverse`` its square root; ``effective`` (1 - b) / (1 - b^n_c) (Cui et al. 2019, b = 0.999); each
    rescaled so the weighted mean over training windows is 1. Classes absent from training get weight 0."""
    prompt_template: str = "A face expressing {emotion}"
    """Text prompt per class; ``{emotion}`` is replaced by the lower-cased class name."""
    text_set: str | None = None
    """The store's open_clip feature set whose CLIP text tower encodes the prompts for the contrastive loss (needed
    when the image sets are not CLIP, e.g. ``--data.visual dinov2 --loss.text_set clip``). None: the first open_clip
    set among ``data.visual``, else the store's own prompt embeddings (from its first open_clip set)."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy (not in the paper)."""
    va_loss: Literal["ccc", "mse"] = "ccc"
    """Valence-arousal loss (``train.tasks`` with va): 1 - the mean CCC over the batch, or the mean squared error."""
    task_weights: tuple[float, ...] = ()
    """Weights of the tasks' losses, in the order of ``train.tasks`` (empty: 1 each)."""


@dataclass
class BackboneConfig:
    clip: str = "ViT-B-32"
    """open_clip architecture of the frozen image/text encoder."""
    clip_pretrained: str = "openai"
    """open_clip pretrained tag, a local checkpoint path, or ``random`` (seeded random weights, smoke runs only)."""
    wav2vec2: str = "facebook/wav2vec2-base"
    """Hugging Face hub name or local directory of the frozen Wav2Vec2 model, or ``random``."""


@dataclass
class TrainConfig:
    lr: float = 1e-5
    """Peak AdamW learning rate (paper: 1e-5) for a batch of ``batch_size`` windows; see ``scale_lr``."""
    scale_lr: Literal["none", "linear", "sqrt"] = "none"
    """Learning-rate rule when the effective batch grows (processes x accumulation steps): keep ``lr`` (none),
    multiply it by that factor (linear) or by its square root (sqrt)."""
    weight_decay: float = 0.01
    """AdamW weight decay (not given by the paper; torch's AdamW default)."""
    epochs: int = 30
    """Training epochs (paper: 30)."""
    batch_size: int = 64
    """Windows per device per forward pass (paper: 64)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step (the paper uses accumulation without giving the count)."""
    warmup_ratio: float = 0.0
    """Fraction of optimizer steps of linear warm-up before the cosine decay."""
    min_lr_ratio: float = 0.0
    """Cosine schedule floor, as a fraction of ``lr``."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping by global norm; None disables it (the paper does not say)."""
    seed: int = 42
    """Seed of every random choice: init, data order, dropout (paper: 42)."""
    output_dir: str | None = None
    """Run directory. None: a new timestamped folder under ``runs/``."""
    log_with: str | None = "tensorboard"
    """Accelerate tracker(s), comma-separated (``tensorboard``, ``wandb``, ...); ``none`` for no tracker."""
    log_every_steps: int = 10
    """Optimizer steps between training-loss log lines."""
    checkpoint_every_steps: int = 0
    """Also save resume state every N optimizer steps inside an epoch (0: only at the end of each epoch)."""
    keep_last_states: int = 2
    """Resume states kept on disk (older ones are deleted)."""
    cpu_threads: int = 0
    """Torch threads per process when training on CPU. 0: the machine's cores shared among the local processes
    (``accelerate launch`` otherwise sets OMP_NUM_THREADS=1, which halves throughput on a 2-core laptop)."""
    stop_after_steps: int = 0
    """Stop (as if killed) after this many optimizer steps; 0 = never. For testing resume."""
    tasks: tuple[str, ...] = ("expr",)
    """The tasks trained, one head each on the shared fused representation: ``expr`` (8 classes), ``va``
    (valence-arousal, 2 outputs through tanh), ``au`` (12 action-unit logits); any combination, e.g. ``expr,va,au``.
    A frame unannotated for a task, or a video outside that task's split, stays out of that task's loss."""
    task_overlap: Literal["exclude", "allow"] = "exclude"
    """Aff-Wild2's tasks split the videos differently, so a video that validates (or tests) one task may train
    another. ``exclude``: no frame of a video that is validation or test for any trained task enters any task's
    training loss (nor the class and AU weights). ``allow``: each task trains on its own training videos, whatever
    the others hold out; the run says how many videos and frames cross, and ``expr evaluate`` warns."""
    select: Literal["auto", "val/macro_f1", "val/ccc", "val/au_f1", "val/score"] = "auto"
    """The validation metric that picks the best epoch: a task's score (``val/macro_f1`` EXPR, ``val/ccc`` VA mean
    CCC, ``val/au_f1`` AU mean F1) or ``val/score``, their sum over the trained tasks. ``auto``: the score of the
    only task, or ``val/score`` when several train."""


@dataclass
class FinetuneConfig:
    backbone: str | None = None
    """``expr finetune``: the image encoder to adapt, as an encoder spec (as ``expr prepare --visual`` takes it, e.g.
    ``timm:vit_large_patch14_dinov2.lvd142m``). None: the spec of the store's first visual set (``data.visual``)."""
    method: Literal["frozen", "full", "last_n", "lora"] = "frozen"
    """How the image encoder trains: ``frozen`` (``expr finetune``: a linear probe; online mode: the paper's frozen
    encoder), ``full`` (every weight), ``last_n`` (its last ``last_n`` blocks and the layers after them) or
    ``lora`` (low-rank adapters through peft; the base weights stay as loaded)."""
    last_n: int = 2
    """``method=last_n``: blocks (transformer layers, CNN stages) trained from the top."""
    lora_rank: int = 8
    """``method=lora``: rank of each adapter."""
    lora_alpha: float = 16.0
    """``method=lora``: adapter scaling numerator (the update is scaled by lora_alpha / lora_rank)."""
    lora_dropout: float = 0.0
    """``method=lora``: dropout on the adapters' input."""
    lora_targets: tuple[str, ...] = ()
    """``method=lora``: names (or name suffixes) of the modules that get adapters. Empty: every linear layer of the
    tower (timm, Hugging Face), or in_proj, out_proj (attention), c_fc and c_proj (MLP) of open_clip towers."""
    lr: float | None = None
    """Peak learning rate of the encoder's trained weights (the head keeps ``train.lr``). None: ``train.lr``."""
    layer_decay: float = 1.0
    """Layer-wise learning-rate decay: block i of n trains at lr x layer_decay^(n - i), the embeddings at
    layer_decay^(n + 1), the layers after the last block at lr (1.0: one rate for the whole encoder)."""
    grad_checkpointing: bool = False
    """Recompute the encoder's activations in the backward pass (less memory, about a third more compute)."""
    audio_method: Literal["frozen", "last_n", "lora"] = "frozen"
    """Online mode: how the audio encoder (Wav2Vec2) trains, with the same ``last_n`` and ``lora_*`` settings."""
    frames_per_epoch: int = 0
    """``expr finetune``: training frames drawn per epoch (Aff-Wild2 has 2.6 M); 0: every labelled face frame."""
    balanced: bool = True
    """``expr finetune``: draw training frames class-balanced (each class equally likely) instead of uniformly."""
    val_frames: int = 0
    """``expr finetune``: validation frames scored per epoch, evenly spaced over the validation videos; 0: all."""
    dropout: float = 0.0
    """``expr finetune``: dropout before the frame classifier."""


@dataclass
class EvalConfig:
    smoothing: Smoothing = "none"
    """Temporal post-processing of frame predictions (shared by training's validation, ``evaluate``, ``submit`` and
    ``predict``): ``mean`` = moving average of class probabilities, ``mode`` = sliding-window vote of frame labels."""
    smoothing_width: int = 0
    """Frames in the smoothing window (0 or 1: none). Metrics are reported with and without it."""
    va_smoothing: VaSmoothing = "none"
    """Temporal post-processing of frame valence and arousal, the leaders' cheapest CCC gain (validation, ``evaluate``,
    ``submit --task va``, ``predict``): ``mean`` = centred moving average, ``median`` = centred moving median."""
    va_smoothing_width: int = 0
    """Frames in the VA smoothing window (0 or 1: none). CCC is reported with and without it; the smoothing study
    ``va_smoothing`` tunes method and width on a run's saved validation outputs."""
    calibrate: bool = True
    """Apply the run's decision calibration (``calibration.json``, fitted by ``expr calibrate``: per-class offsets of
    the log-probabilities, before smoothing) in ``evaluate``, ``submit`` and ``predict``; false ignores it."""
    flip: bool = False
    """Online mode: test-time views. Every window is also predicted on its horizontally mirrored face crops and the
    two probabilities averaged (validation, ``evaluate``, ``submit``, ``predict``). Cached mode: extract with an
    encoder spec's ``flip=1`` instead."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    backbones: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

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


# What a resume may change: where the data is read from and how the run is run, logged and checkpointed. Everything
# else (the model's shapes, the data, the loss, the schedule, evaluation) is the run being continued.
RESUME_MAY_CHANGE = frozenset({
    "data.cache", "data.in_memory", "data.num_workers", "train.output_dir", "train.log_with", "train.log_every_steps",
    "train.checkpoint_every_steps", "train.keep_last_states", "train.cpu_threads", "train.stop_after_steps",
})  # fmt: skip


def resume_changes(saved: Config, new: Config) -> list[str]:
    """``key: old -> new`` for each setting a resume would change that a resumed run must keep (``RESUME_MAY_CHANGE``
    lists those it may change)."""
    old, now = saved.to_dict(), new.to_dict()
    return [
        f"{section}.{key}: {old[section].get(key)!r} -> {value!r}"
        for section, values in now.items()
        for key, value in values.items()
        if f"{section}.{key}" not in RESUME_MAY_CHANGE and old[section].get(key) != value
    ]


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


def all_keys(cfg: Config | None = None) -> list[str]:
    """Every dotted key of the config tree, e.g. ``model.tcn_blocks``."""
    cfg = cfg or Config()
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


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set dotted ``key`` on ``cfg`` after checking its type; unknown keys raise ConfigError with suggestions."""
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in _fields(cfg) or parts[1] not in _fields(getattr(cfg, parts[0])):
        close = difflib.get_close_matches(key, all_keys(cfg), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else f" Sections: {', '.join(_fields(cfg))}."
        raise ConfigError(f"unknown config key '{key}'.{hint}")
    section = getattr(cfg, parts[0])
    fld = _fields(section)[parts[1]]
    setattr(section, parts[1], _check_type(key, value, fld.type))


def apply_dict(cfg: Config, values: dict[str, Any], source: str = "") -> None:
    """Apply a nested (``{"model": {"tcn_blocks": 4}}``) or flat dotted mapping."""
    for key, value in values.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                _apply_one(cfg, f"{key}.{sub}", v, source)
        else:
            _apply_one(cfg, key, value, source)


class CliText(str):
    """A value as typed on the command line: parsed as a literal when applied, else taken as the text itself."""


def _apply_one(cfg: Config, key: str, value: Any, source: str) -> None:
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


def selection_metric(cfg: Config) -> str:
    """The validation metric that picks a run's best epoch (``train.select``; ``auto``: the only task's score, or
    ``val/score`` when several tasks train)."""
    if cfg.train.select != "auto":
        return cfg.train.select
    return TASK_SCORES[cfg.train.tasks[0]] if len(cfg.train.tasks) == 1 else "val/score"


# Sane bounds: far beyond any model or run expr is for, far below what would exhaust a machine while building it. A
# run folder's config.yaml (or an export's config.json) is checked against them before anything is built.
MAX_WIDTH, MAX_WINDOW, MAX_BLOCKS, MAX_BATCH, MAX_EPOCHS = 16_384, 10_000, 64, 65_536, 100_000


def _bounds(cfg: Config) -> list[tuple[bool, str, str]]:
    m = cfg.model
    widths = [("model.dim", m.dim), ("model.visual_dim", m.visual_dim), ("model.audio_dim", m.audio_dim),
              ("model.text_dim", m.text_dim)] + [("model.mlp_hidden", w) for w in m.mlp_hidden]  # fmt: skip
    checks = [(1 <= w <= MAX_WIDTH, key, f"must be in 1 .. {MAX_WIDTH:,} (it is {w:,})") for key, w in widths]
    return checks + [
        (cfg.data.window <= MAX_WINDOW, "data.window", f"must be at most {MAX_WINDOW:,} frames"),
        (m.tcn_blocks <= MAX_BLOCKS, "model.tcn_blocks", f"must be at most {MAX_BLOCKS}"),
        (1 <= m.tcn_kernel <= MAX_BLOCKS, "model.tcn_kernel", f"must be in 1 .. {MAX_BLOCKS}"),
        (1 <= m.heads <= MAX_BLOCKS, "model.heads", f"must be in 1 .. {MAX_BLOCKS}"),
        (cfg.train.batch_size <= MAX_BATCH, "train.batch_size", f"must be at most {MAX_BATCH:,}"),
        (cfg.train.epochs <= MAX_EPOCHS, "train.epochs", f"must be at most {MAX_EPOCHS:,}"),
        (cfg.finetune.lora_rank <= MAX_WIDTH, "finetune.lora_rank", f"must be at most {MAX_WIDTH:,}"),
    ]


def validate(cfg: Config) -> None:
    """Sane bounds (``_bounds``, first: the other checks divide by some of them), then cross-field checks that a type
    alone cannot express."""
    for ok, key, msg in _bounds(cfg):
        if not ok:
            raise ConfigError(f"config key '{key}': {msg}")
    checks = [
        (cfg.data.window >= 1, "data.window", "must be at least 1"),
        (cfg.data.stride is None or cfg.data.stride >= 1, "data.stride", "must be at least 1"),
        (cfg.data.eval_stride is None or cfg.data.eval_stride >= 1, "data.eval_stride", "must be at least 1"),
        (
            cfg.data.eval_stride is None or cfg.data.eval_stride <= cfg.data.window,
            "data.eval_stride",
            "must not exceed data.window (every validation frame must lie in a window)",
        ),
        (cfg.eval.smoothing_width >= 0, "eval.smoothing_width", "must be 0 or more"),
        (cfg.eval.va_smoothing_width >= 0, "eval.va_smoothing_width", "must be 0 or more"),
        (
            not cfg.eval.flip or cfg.data.mode == "online",
            "eval.flip",
            "is for online mode (the crops pass the encoders at prediction); cached features take their test-time "
            "views at extraction: an encoder spec's flip=1",
        ),
        (cfg.data.folds == 0 or cfg.data.folds >= 2, "data.folds", "must be 0 (no cross-validation) or at least 2"),
        (cfg.data.folds == 0 or 0 <= cfg.data.fold < cfg.data.folds, "data.fold", "must be in 0 .. data.folds - 1"),
        (
            cfg.data.folds == 0 or cfg.train.tasks == ("expr",),
            "data.folds",
            "re-splits the expression task's videos only: train VA or AU without folds",
        ),  # fmt: skip
        (len(cfg.data.classes) >= 2, "data.classes", "needs at least 2 classes"),
        (cfg.model.tcn_blocks >= 0, "model.tcn_blocks", "must be 0 or more"),
        (cfg.model.dim % cfg.model.heads == 0, "model.heads", f"must divide model.dim ({cfg.model.dim})"),
        (0.0 <= cfg.model.dropout < 1.0, "model.dropout", "must be in [0, 1)"),
        (0.0 <= cfg.model.mlp_dropout < 1.0, "model.mlp_dropout", "must be in [0, 1)"),
        (cfg.loss.contrastive_weight >= 0.0, "loss.contrastive_weight", "must be 0 or more"),
        ("{emotion}" in cfg.loss.prompt_template, "loss.prompt_template", "must contain '{emotion}'"),
        (cfg.train.lr > 0, "train.lr", "must be positive"),
        (cfg.train.epochs >= 1, "train.epochs", "must be at least 1"),
        (cfg.train.batch_size >= 1, "train.batch_size", "must be at least 1"),
        (cfg.train.grad_accum_steps >= 1, "train.grad_accum_steps", "must be at least 1"),
        (0.0 <= cfg.train.warmup_ratio < 1.0, "train.warmup_ratio", "must be in [0, 1)"),
        (
            len(cfg.train.tasks) > 0 and set(cfg.train.tasks) <= set(TASKS),
            "train.tasks",
            f"must name one or more of {', '.join(TASKS)}",
        ),  # fmt: skip
        (len(set(cfg.train.tasks)) == len(cfg.train.tasks), "train.tasks", "names a task twice"),
        (
            cfg.train.select in ("auto", "val/score", *(TASK_SCORES[t] for t in cfg.train.tasks if t in TASK_SCORES)),
            "train.select",
            f"must be auto, val/score or the score of a trained task ({cfg.train.tasks})",
        ),  # fmt: skip
        (
            len(cfg.loss.task_weights) in (0, len(cfg.train.tasks)),
            "loss.task_weights",
            "needs one weight per task of train.tasks",
        ),  # fmt: skip
        (all(w >= 0 for w in cfg.loss.task_weights), "loss.task_weights", "must be 0 or more"),
        (cfg.finetune.last_n >= 1, "finetune.last_n", "must be at least 1"),
        (cfg.finetune.lora_rank >= 1, "finetune.lora_rank", "must be at least 1"),
        (0.0 <= cfg.finetune.lora_dropout < 1.0, "finetune.lora_dropout", "must be in [0, 1)"),
        (0.0 < cfg.finetune.layer_decay <= 1.0, "finetune.layer_decay", "must be in (0, 1]"),
        (cfg.finetune.lr is None or cfg.finetune.lr > 0, "finetune.lr", "must be positive"),
        (cfg.finetune.frames_per_epoch >= 0, "finetune.frames_per_epoch", "must be 0 (all) or more"),
        (cfg.finetune.val_frames >= 0, "finetune.val_frames", "must be 0 (all) or more"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"config key '{key}': {msg}")


def parse_cli(argv: list[str]) -> tuple[dict[str, Any], list[str], str | None, str | None]:
    """Split ``argv`` into (dotted overrides as :class:`CliText`, ``--config`` files, ``--preset``, ``--resume``).

    Accepts ``--key value`` and ``--key=value``. Anything not of that form raises ConfigError.
    """
    overrides: dict[str, Any] = {}
    files: list[str] = []
    preset = resume = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument '{arg}': options look like --section.key VALUE")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or (argv[i + 1].startswith("--") and not _is_number(argv[i + 1])):
                raise ConfigError(f"option '--{name}' needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if name == "config":
            files.append(value)
        elif name == "preset":
            preset = value
        elif name == "resume":
            resume = value
        elif "." in name:
            overrides[name] = CliText(value)
        else:
            raise ConfigError(
                f"unknown option '--{name}': use --config FILE, --preset NAME, --resume RUN_DIR "
                f"or a dotted config key such as --model.tcn_blocks"
            )
    return overrides, files, preset, resume


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
