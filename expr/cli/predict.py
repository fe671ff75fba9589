"""``expr predict VIDEO_OR_FOLDER [...] --run RUN_DIR --out DIR``: per-frame expression labels for raw videos.

Each video is decoded once: faces are detected in batches of frames (MTCNN by default, ``--detector``), aligned and
cropped (:mod:`expr.features.faces`), and linked into people (:mod:`expr.video.tracks`: ``--faces largest``, one
track of each frame's largest face, or ``all``, one track per person); the audio is decoded and resampled. For each
track, the backbones the run's features came from encode its crops and the audio (``--clip`` / ``--wav2vec2``
override), and the head predicts as in evaluation: windows every ``data.eval_stride`` frames, then the path from
window probabilities to frame labels that evaluation and submission share (:mod:`expr.scoring.decision`: placed at each
window's label frame and interpolated, frames without a face filled from the nearest face frame, the run's
calibration (``expr calibrate``) and smoothing). ``--run`` may also be an ensemble folder (``expr ensemble``): each
member predicts on its own encoders and the ensemble decides on their weighted mean. A video with no detectable face
or no audio, a variable frame rate or a stretch that cannot be decoded still gets an answer, with a warning.

Writes, per track, ``DIR/<name>.csv`` (frame, time, track, face found and its box, label, class probabilities) and
``DIR/<name>_timeline.png``; per video the extracted features (``DIR/<video>_features/``, a video per track) and with
``--video`` ``DIR/<video>_annotated.mp4`` (:mod:`expr.video.annotate`). Folders are searched recursively, and a video
that cannot be read is reported while the others go on."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from expr.cli.console import console_logging
from expr.cli.options import parse_options, positional
from expr.config import Config, ConfigError, apply_dict
from expr.data.store import StoreError
from expr.features.backbones import BACKBONE_KEYS, BackboneError, backbone_options
from expr.features.encoders import EncoderError
from expr.features.faces import FaceDetectorError
from expr.features.spec import SpecError
from expr.runs.layout import (
    RunError,
    run_options_help,
)
from expr.video.predict import REALTIME, PredictError, find_videos, logger, predict_videos


@dataclass(kw_only=True)
class PredictOptions:
    videos: tuple[str, ...] = positional()
    """video files and/or folders (searched recursively for .mp4 .avi .mov .mkv .webm .m4v)"""
    run: str
    """a run directory, a folder written by `expr export`, or an ensemble folder (`expr ensemble`)"""
    out: str | None = None
    """output folder (with --stream: a file for the JSON lines; default standard output)"""
    clip: str | None = None
    """CLIP weights, as expr prepare takes them (default: those of the model's training features; or
    --backbones.clip / --backbones.clip_pretrained)"""
    wav2vec2: str | None = None
    """Wav2Vec2 weights (default: those of the model's training features; or --backbones.wav2vec2)"""
    device: str = "auto"
    """cuda, cpu or auto"""
    detector: Literal["auto", "mtcnn", "haar"] = "auto"
    """face detector: mtcnn (five landmarks, aligned crops), haar (OpenCV's cascade, frontal faces), auto (mtcnn;
    haar with a warning when its weights are not installed)"""
    faces: Literal["largest", "all"] = "largest"
    """largest: one prediction per video, each frame's largest face; all: one per person (face track), written as
    <video>_face1, _face2, ... numbered left to right"""
    min_track: float = 1.0
    """with --faces all: the shortest face track predicted, in seconds"""
    video: bool = False
    """also write <video>_annotated.mp4: each frame with its face boxes, labels and probabilities, the audio kept"""
    batch: int = 16
    """frames per face-detector batch (more keeps a GPU busier)"""
    backend: Literal["torch", "onnxruntime"] = "torch"
    """onnxruntime: run the head and encoders of an ONNX export (expr export RUN --format onnx --out DIR; --run DIR)
    under ONNX Runtime, with no torch module"""
    realtime: bool = False
    """faster than real time on a laptop CPU: --predict.fps 8 --predict.detect_every 3 --predict.detect_scale 0.5
    --predict.precision auto (image encodings per second, detection on every 3rd frame at half size, bf16 encoders on
    a CPU that multiplies bf16 natively); each of them can be set on its own"""
    stream: bool = False
    """predict one SOURCE as it comes (a file at its own frame rate, a camera /dev/videoN or index, an rtsp:// or
    http:// stream): one JSON line per frame as soon as it is decided (time, track, label, probabilities, VA / AUs of
    a run trained on them); Ctrl-C ends it with every frame read written; sets --predict.audio_chunk 0.4
    --predict.audio_context 0.2"""
    speed: float = 1.0
    """with --stream and a file: play it at this many times its frame rate (0: as fast as it decodes)"""
    no_progress: bool = False
    """no progress bar"""


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_options(
        PredictOptions,
        sys.argv[1:] if argv is None else argv,
        "expr predict",
        "predict",
        __doc__.split("\n\n")[0],
        run_options_help(),
    )
    try:
        backbones = {k: overrides.pop(k) for k in BACKBONE_KEYS if k in overrides}
        apply_dict(Config(), backbones, "command line")
        args.clip, args.wav2vec2 = backbone_options(backbones, args.clip, args.wav2vec2, "expr predict")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.realtime:
        overrides = {**REALTIME, **overrides}
    with console_logging(logger):
        return _predict(args, overrides)


def _predict(args: PredictOptions, overrides: dict) -> int:
    if args.stream:
        return stream(args, overrides)
    if args.out is None:
        print("error: expr predict: --out DIR is required (the folder for the CSVs and plots)", file=sys.stderr)
        return 2
    try:
        videos = find_videos(args.videos)
        kw = dict(clip=args.clip, wav2vec2=args.wav2vec2, device=args.device, progress=not args.no_progress,
                  overrides=overrides, detector=args.detector, faces=args.faces, min_track_s=args.min_track,
                  annotate=args.video, batch=args.batch, backend=args.backend)  # fmt: skip
        results, failed = predict_videos(videos, args.run, args.out, **kw)
    except (PredictError, RunError, BackboneError, EncoderError, SpecError, StoreError, FaceDetectorError,
            ConfigError) as e:  # fmt: skip
        print(f"error: {e}", file=sys.stderr)
        return 2
    for result in results:
        for person in result["people"]:
            plots = ", ".join(str(p) for p in (person["png"], person.get("tasks_png")) if p)
            print(f"wrote {person['csv']} ({person['frames']} frames) and {plots}")
        if result["video"]:
            print(f"wrote {result['video']}")
    frames, seconds = sum(r["frames"] for r in results), sum(r["seconds"] for r in results)
    rate = frames / max(seconds, 1e-9)
    print(f"{len(results)} of {len(videos)} videos, {frames} frames in {seconds:.1f} s ({rate:.1f} frames/s)")
    for video, error in failed:
        print(f"error: {video}: {error}", file=sys.stderr)
    return 1 if failed else 0


def stream(args: PredictOptions, overrides: dict) -> int:
    """``--stream``: :func:`expr.video.live.predict_stream`, its summary on standard error."""
    from expr.data.media import MediaError
    from expr.video.live import predict_stream

    if len(args.videos) != 1 or args.faces != "largest" or args.video or args.speed < 0:
        print("error: expr predict --stream reads one SOURCE, with --faces largest, without --video, at a --speed of "
              "0 or more", file=sys.stderr)  # fmt: skip
        return 2
    try:
        result = predict_stream(args.videos[0], args.run, args.out, args.clip, args.wav2vec2, args.device, overrides,
                                args.detector, args.backend, args.speed)  # fmt: skip
    except (PredictError, RunError, BackboneError, EncoderError, SpecError, StoreError, FaceDetectorError,
            ConfigError, MediaError) as e:  # fmt: skip
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped by a second Ctrl-C: the lines written before it stand, the frames still held are lost",
              file=sys.stderr)  # fmt: skip
        return 130
    late = result["latency"]
    rate = result["frames"] / max(result["seconds"], 1e-9)
    print(f"{result['frames']} frames in {result['seconds']:.1f} s ({rate:.1f} frames/s); latency median "
          f"{late.quantile(0.5):.2f} s, 95th percentile {late.quantile(0.95):.2f} s, max {late.max:.2f} s"
          + (" (stopped by Ctrl-C)" if result["interrupted"] else "")
          + (" (the input ended with an error, warned above)" if result["failed"] else ""),
          file=sys.stderr)  # fmt: skip
    return 0
