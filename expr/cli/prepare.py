"""``expr prepare``: extract frozen CLIP and Wav2Vec2 features once into a feature store that training reads.

    expr prepare affwild2 ROOT --out CACHE [--test-names FILE] [--clip ViT-B-32/openai] [--wav2vec2 NAME|DIR]
    expr prepare folder ROOT --labels LABELS.csv --out CACHE [--classes a,b,c]

The command line: its options (one dataclass per layout), the feature sets they ask for, and ``main``; the work
(resumable per video, assembled into the store at the end) is expr.extract's.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from expr.cli.console import console_logging
from expr.cli.options import parse_options, positional
from expr.config import Config, ConfigError, LossConfig, apply_dict
from expr.data.affwild2 import AnnotationError, LayoutError
from expr.data.folder import items_from_folder
from expr.data.mtl import MtlError
from expr.data.store import DEFAULT_AUDIO, DEFAULT_VISUAL, StoreError
from expr.extract import PrepareError, items_from_affwild2, prepare
from expr.extract.common import logger
from expr.features.backbones import (
    BACKBONE_KEYS,
    DEFAULT_CLIP,
    DEFAULT_WAV2VEC2,
    BackboneError,
    Backbones,
    backbone_options,
    clip_encoder_spec,
    wav2vec2_encoder_spec,
)
from expr.features.encoders import EncoderError
from expr.features.spec import SpecError, parse_named
from expr.locks import LockedError


@dataclass(kw_only=True)
class PrepareOptions:
    """Options of every layout."""

    out: str
    """the feature store folder to write (CACHE)"""
    clip: str | None = None
    """CLIP weights: MODEL/TAG of open_clip (default ViT-B-32/openai), a local checkpoint file, local-dir:DIR
    (open_clip_config.json + weights), an hf-hub: name, or 'random' (seeded random weights, smoke runs only); or
    --backbones.clip MODEL --backbones.clip_pretrained TAG, as in training's config"""
    wav2vec2: str | None = None
    """Wav2Vec2 weights: a hub name (default facebook/wav2vec2-base), a local directory, or 'random' (or
    --backbones.wav2vec2)"""
    test_names: str | None = None
    """file with the organisers' test video names, one per line (no labels)"""
    device: str = "auto"
    """cuda, cpu or auto"""
    batch_size: int = 64
    """frames per CLIP forward"""
    workers: int = 4
    """threads decoding JPEG crops"""
    chunk_seconds: float = 30.0
    """Wav2Vec2 chunk length in seconds"""
    context_seconds: float = 2.0
    """Wav2Vec2 context each side of a chunk, in seconds"""
    visual: tuple[str, ...] = ()
    """a visual feature set, NAME=SPEC: SPEC is FAMILY:MODEL[@WEIGHTS][,key=value ...] with FAMILY open_clip, timm
    or hf (e.g. dinov2=timm:vit_large_patch14_dinov2.lvd142m, clip=open_clip:ViT-B-32@openai,
    effnet=timm:efficientnet_b0@random, dino=hf:facebook/dinov2-base,pool=mean); docs/data.md lists the options.
    Default: the set clip (--clip). On an existing store, a new name adds a set beside the others"""
    audio: tuple[str, ...] = ()
    """an audio feature set, NAME=SPEC with SPEC hf:MODEL[@WEIGHTS][,layer=last|N|A-B] (e.g.
    wavlm=hf:microsoft/wavlm-base-plus, hubert=hf:facebook/hubert-large-ll60k,layer=12-18). Default: the set
    wav2vec2 (--wav2vec2)"""
    prompt_template: str | None = None
    """text prompt of each class (default 'A face expressing {emotion}'; or --loss.prompt_template)"""
    media: bool = False
    """also keep every face crop (JPEG) and audio track (16 kHz) in the store, for online training (--data.mode
    online: frozen backbones in the loop, frame augmentation, per-window audio encoding) and `expr finetune`; a
    store prepared with it keeps them for every video added later, without the flag"""
    no_progress: bool = False
    """no progress bar"""


@dataclass(kw_only=True)
class AffWild2Options(PrepareOptions):
    root: str = positional()
    """the Aff-Wild2 folder"""
    annotation_dir: str | None = None
    """annotation folder name under ROOT (default: detected)"""
    crop_dirs: str | None = None
    """comma-separated crop folder names under ROOT (default: detected)"""


@dataclass(kw_only=True)
class FolderOptions(PrepareOptions):
    root: str = positional()
    """folder holding <name>.mp4|avi|mov|mkv|webm and/or <name>/ frame folders"""
    labels: str
    """CSV with columns video,label (per clip) or video,frame,label"""
    classes: str | None = None
    """comma-separated class names (default: the 8 ABAW classes)"""
    fps: float | None = None
    """frame rate of frame folders without a video"""
    frame_base: int = 1
    """number of the first frame image"""
    val_fraction: float = 0.2
    """fraction of videos for validation when the CSV has no split column"""


LAYOUTS = {
    "affwild2": (AffWild2Options, "an Aff-Wild2 tree as distributed for the ABAW EXPR track"),
    "folder": (FolderOptions, "a folder of videos or frame folders plus a label CSV"),
}


def feature_sets(args: PrepareOptions, clip_given: bool, wav2vec2_given: bool):
    """(visual sets, audio sets, the names of defaults nobody asked for) by name from ``--visual`` / ``--audio
    NAME=SPEC``; ``--clip`` / ``--wav2vec2`` are the sets ``clip`` / ``wav2vec2``, and the defaults when neither form
    names a set of the modality (on an existing store with sets of that modality, an unasked default is dropped)."""
    out, implicit = [], []
    for modality, given, default, flag in (
        ("visual", args.visual, (DEFAULT_VISUAL, clip_encoder_spec(args.clip)), "--clip" if clip_given else ""),
        (
            "audio",
            args.audio,
            (DEFAULT_AUDIO, wav2vec2_encoder_spec(args.wav2vec2)),
            "--wav2vec2" if wav2vec2_given else "",
        ),
    ):
        sets = dict(parse_named(text, modality) for text in given)
        if len(sets) < len(given):
            raise SpecError(f"--{modality}: a set name is given twice")
        if flag and default[0] in sets:
            raise SpecError(f"{flag} is the set '{default[0]}'; --{modality} names it too: give it once")
        if not flag and not sets:
            implicit.append(default[0])
        if flag or not sets:
            sets = {default[0]: default[1], **sets}
        out.append(sets)
    both = set(out[0]) & set(out[1])
    if both:
        raise SpecError(f"feature set names are shared by images and audio: {', '.join(sorted(both))}; rename one")
    return (*out, tuple(implicit))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = parse_options(LAYOUTS, argv, "expr prepare", "prepare", __doc__.split("\n\n")[0])
    try:  # the config's own keys for what it shares with training: backbones.* and loss.prompt_template
        apply_dict(Config(), overrides, "command line")  # a typo gets the config's suggestion
        other = sorted(set(overrides) - set(BACKBONE_KEYS) - {"loss.prompt_template"})
        if other:
            raise ConfigError(
                f"config key '{other[0]}' does not shape a feature store: expr prepare takes "
                f"{', '.join('--' + k for k in BACKBONE_KEYS)} and --loss.prompt_template"
            )
        backbones = {k: v for k, v in overrides.items() if k in BACKBONE_KEYS}
        args.clip, args.wav2vec2 = backbone_options(backbones, args.clip, args.wav2vec2, "expr prepare")
        if "loss.prompt_template" in overrides:
            if args.prompt_template is not None:
                raise ConfigError("expr prepare: give the prompt once, as --prompt-template or --loss.prompt_template")
            args.prompt_template = str(overrides["loss.prompt_template"])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    clip_given, wav2vec2_given = args.clip is not None, args.wav2vec2 is not None
    args.clip = args.clip or DEFAULT_CLIP
    args.wav2vec2 = args.wav2vec2 or DEFAULT_WAV2VEC2
    args.prompt_template = args.prompt_template or LossConfig.prompt_template
    with console_logging(logger, logging.INFO):
        return _prepare(args, clip_given, wav2vec2_given)


def _prepare(args: PrepareOptions, clip_given: bool, wav2vec2_given: bool) -> int:
    try:
        visual_sets, audio_sets, implicit = feature_sets(args, clip_given, wav2vec2_given)
        backbones = Backbones(
            clip=args.clip,
            wav2vec2=args.wav2vec2,
            device=args.device,
            batch_size=args.batch_size,
            chunk_seconds=args.chunk_seconds,
            context_seconds=args.context_seconds,
            visual_sets=visual_sets,
            audio_sets=audio_sets,
            implicit=implicit,
        )
        if isinstance(args, AffWild2Options):
            items, source, classes = _affwild2_items(args)
        else:
            items, source, classes = items_from_folder(args)
        prepare(
            items,
            args.out,
            backbones,
            classes,
            args.prompt_template,
            source,
            args.workers,
            not args.no_progress,
            media=args.media,
        )
    except (
        AnnotationError,
        MtlError,
        LayoutError,
        BackboneError,
        EncoderError,
        SpecError,
        PrepareError,
        StoreError,
        LockedError,
        OSError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: every finished video is saved in {args.out}; run the same command to continue",
            file=sys.stderr,
        )
        return 130
    return 0


def _affwild2_items(args: AffWild2Options):
    """The Aff-Wild2 items the options ask for (``--crop-dirs`` is comma-separated)."""
    crop_dirs = [c.strip() for c in args.crop_dirs.split(",")] if args.crop_dirs else None
    return items_from_affwild2(args.root, args.test_names, args.annotation_dir, crop_dirs)


if __name__ == "__main__":
    sys.exit(main())
