"""The config's sections as typed dataclasses, a docstring per field: data, model, loss, backbones, train, eval,
finetune; the paper's values are the defaults. No torch here."""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass
from typing import Literal

from expr.tasks import ABAW_CLASSES, TASK_SCORES, TASKS  # noqa: F401  (the config's names for them)


class ConfigError(ValueError):
    """A config key or value a user can fix; the message names the key."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under a scheduler), else the machine's count."""

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
Precision = Literal["fp32", "bf16", "auto"]
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
    split_source: Literal["tasks", "mtl"] = "tasks"
    """Where the splits and labels come from. ``tasks``: each task's own challenge annotations and split (Aff-Wild2's
    uni-task tracks). ``mtl``: the multi-task challenge's (s-Aff-Wild2): one split for every task, labels on its
    listed frames only, so no frame of a validation or test video trains any task (the store must hold it:
    ``expr prepare affwild2`` of a tree with ``MTL_Challenge``)."""

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
    task_balance: Literal["fixed", "uncertainty"] = "fixed"
    """How the tasks' losses are summed: ``fixed`` by ``task_weights``; ``uncertainty`` by weights learned with the
    head (Kendall et al. 2018: each task's loss L_t becomes c_t exp(-s_t) L_t + s_t / 2 with a learned log-variance
    s_t, c_t = 1/2 for valence-arousal and 1 for the classifiers), so a task with noisier targets weighs less;
    ``task_weights`` then multiply the learned weights."""


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
    select: Literal["auto", "val/macro_f1", "val/ccc", "val/au_f1", "val/score", "val/p_mtl"] = "auto"
    """The validation metric that picks the best epoch: a task's score (``val/macro_f1`` EXPR, ``val/ccc`` VA mean
    CCC, ``val/au_f1`` AU mean F1), ``val/score``, their sum over the trained tasks, or ``val/p_mtl``, the
    multi-task challenge's score (the same sum, on its split: ``data.split_source mtl`` with the three tasks).
    ``auto``: the score of the only task, ``val/p_mtl`` for the three tasks on the multi-task split, else
    ``val/score``."""


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
class PredictConfig:
    fps: float = 0.0
    """Image encodings per second of video (``expr predict``'s largest cost on a CPU): 0 = every frame. The frames
    between take features interpolated from the encoded ones on either side (:mod:`expr.data.subset`) and the head
    still sees every frame. Every command that reads a store applies it too (``expr evaluate RUN --predict.fps 8``
    measures what it costs on labelled data). Cached features only."""
    detect_every: int = 1
    """``expr predict``: the face detector runs on every n-th frame (and the last); the faces of the frames between
    are interpolated along each track (boxes and landmarks), and a frame between two detections that do not link
    into one track has no face."""
    detect_scale: float = 1.0
    """``expr predict``: the detector sees each frame downscaled by this factor (0.5: half its width and height);
    boxes and landmarks are scaled back and the crops cut from the full frame."""
    audio_chunk: float = 0.0
    """``expr predict``: the audio encoder reads the track in chunks of this many seconds, each with
    ``audio_context`` seconds on both sides and normalised on its own (:mod:`expr.features.audio_stream`), as a
    stream must; 0: the whole track's chunks of 30 s (as ``expr prepare`` encodes). ``--stream`` sets 0.4 (and
    ``audio_context`` 0.2), and an offline prediction with the same values gets the stream's features."""
    audio_context: float = 0.25
    """With ``audio_chunk``: seconds of audio on each side of a chunk that its encoding reads."""
    precision: Precision = "fp32"
    """``expr predict``: the image and audio encoders' weights on a CPU. bf16 runs them about twice as fast on a CPU
    that multiplies bf16 natively (AVX512-BF16 or AMX), their features at a cosine above 0.9998 to fp32's
    (BENCHMARKS.md section 6); auto: bf16 on such a CPU, fp32 elsewhere (``--realtime`` sets it). A GPU runs the
    encoders in fp16 whatever this says."""
    stream_batch: int = 2
    """``expr predict --stream``: face crops encoded together (CLIP ViT-B/32 on a 2-core CPU: 96 ms for one, 80 ms
    each in twos, 62 ms in fours); each one more adds an encoded frame's wait to the latency."""
