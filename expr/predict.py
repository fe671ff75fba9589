"""``expr predict VIDEO_OR_FOLDER [...] --run RUN_DIR --out DIR``: per-frame expression labels for raw videos.

Faces are detected (MTCNN by default, ``--detector``), aligned and cropped in every frame (``expr.features.faces``),
the audio track is decoded and resampled, the backbones the run's features came from encode both (``--clip`` /
``--wav2vec2`` override), and the head predicts as in evaluation: windows every ``data.eval_stride`` frames, then the
path from window probabilities to frame labels that evaluation and submission share (:mod:`expr.evaluation`: placed
at each window's label frame and interpolated, frames without a face filled from the nearest face frame, the run's
calibration (``expr calibrate``) and smoothing). ``--run`` may also be an ensemble folder (``expr ensemble``): each
member predicts on its own encoders and the ensemble decides on their weighted mean. A video with no detectable face
or no audio still gets an answer, with the missing stream masked and a warning.

Writes ``DIR/<video>.csv`` (frame, time, label, class probabilities), ``DIR/<video>_timeline.png`` and the extracted
features as a one-video store (``DIR/<video>_features/``) for each video; folders are searched recursively, and a
video that cannot be read is reported while the others go on.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from expr.atomic import atomic_path
from expr.config import Config, ConfigError, apply_dict, resolve_device
from expr.data.folder import VIDEO_SUFFIXES
from expr.data.media import MediaError, decode_audio, iter_frames, probe
from expr.data.store import FrameStore, StoreError, VideoRecord, write_store
from expr.features.backbones import BACKBONE_KEYS, BackboneError, Backbones, backbone_options, clip_option
from expr.features.encoders import EncoderError
from expr.features.faces import FaceDetectorError, face_detector
from expr.features.spec import SpecError, parse_spec
from expr.inference import predict_frames
from expr.options import parse_options, positional
from expr.plots import pyplot, save_figure
from expr.runs import (
    RunError,
    ensemble_decision,
    ensemble_members,
    load_head,
    member_overrides,
    run_decision,
    run_encoders,
    run_options_help,
)

logger = logging.getLogger("expr.predict")


class PredictError(RuntimeError):
    """A video or model that cannot be used; the message says which and why."""


def run_backbones(info: dict[str, Any], clip: str | None, wav2vec2: str | None, device: str) -> Backbones:
    """The encoders of the feature sets the head was trained on, from the specs their store recorded (options such as
    views and layers included); ``--clip`` / ``--wav2vec2``, or the recorded backbones of a store without specs,
    for the paper's two."""
    sets = info.get("feature_sets") or {"visual": {"clip": {}}, "audio": {"wav2vec2": {}}}
    unknown = [n for group in sets.values() for n, s in group.items() if not s.get("spec")]
    paper = list(sets["visual"]) == ["clip"] and list(sets["audio"]) == ["wav2vec2"]
    if clip or wav2vec2 or (paper and unknown):
        return Backbones(*backbone_specs(info, clip, wav2vec2), device)
    if unknown:
        raise PredictError(f"the model's feature sets {', '.join(unknown)} do not record their encoders")
    return Backbones(
        device=device,
        visual_sets={n: parse_spec(s["spec"]) for n, s in sets["visual"].items()},
        audio_sets={n: parse_spec(s["spec"]) for n, s in sets["audio"].items()},
    )


def backbone_specs(info: dict[str, Any], clip: str | None, wav2vec2: str | None) -> tuple[str, str]:
    """The ``expr prepare`` style --clip / --wav2vec2 values for the run's recorded backbones."""
    b = info.get("backbones", {})
    if clip is None:
        if "clip_pretrained" not in b:
            raise PredictError(
                "this model was trained on features without recorded backbones (the synthetic demo data); pass "
                "--clip and --wav2vec2 (e.g. 'random' for a smoke test)"
            )
        clip = clip_option(str(b.get("clip", "ViT-B-32")), str(b["clip_pretrained"]))
    if wav2vec2 is None:
        if "wav2vec2" not in b or "none" in str(b["wav2vec2"]):
            raise PredictError("the model's Wav2Vec2 backbone is not recorded; pass --wav2vec2")
        wav2vec2 = b["wav2vec2"]
    return clip, wav2vec2


def extract_video(path: Path, backbones, detector, progress: bool = True, media: bool = False):
    """VideoRecord of a raw video (split ``test``), plus a list of warnings. ``media`` also keeps the face crops
    (JPEG) and the audio for a head trained in online mode."""
    import io

    from PIL import Image
    from tqdm.auto import tqdm

    info = probe(path)
    visual_encs = {name: backbones.visual(name) for name in backbones.visual_sets}
    audio_name = next(iter(backbones.audio_sets))
    audio_enc = backbones.audio(audio_name)
    crops, found, jpeg = [], [], []
    for frame in tqdm(iter_frames(path), total=info.num_frames, unit="frame", desc="faces", disable=not progress):
        hit = detector.detect(frame)
        found.append(hit is not None)
        if hit is not None:
            crops.append(Image.fromarray(hit.crop(frame)))
        if media:
            buf = io.BytesIO()
            if hit is not None:
                crops[-1].save(buf, format="JPEG", quality=95)
            jpeg.append(buf.getvalue())
    T = len(found)
    face = np.array(found, bool)
    visual = {name: np.zeros((T, enc.dim), np.float16) for name, enc in visual_encs.items()}
    for name, enc in visual_encs.items():
        if crops:
            visual[name][face] = enc.encode(crops)
    warnings = []
    if not face.any():
        warnings.append(f"{path.name}: no face detected in any frame; the prediction uses the audio alone")
    audio, start, wave = None, 0.0, np.zeros(0, np.float16)
    if not info.has_audio:
        warnings.append(f"{path.name}: no audio track; the prediction uses the faces alone")
    else:
        try:
            wave, start = decode_audio(path, video_start=info.start)
            audio = {audio_name: audio_enc.encode(wave)}
            wave = wave.astype(np.float16)
        except MediaError as e:
            warnings.append(f"{e}; the prediction uses the faces alone")
    record = VideoRecord(path.stem, "test", info.fps, visual, face, np.full(T, -1), audio, audio_enc.rate, start)
    if media:
        record.jpeg, record.wave = jpeg, wave
    return record, warnings


def predict_video(
    video: str | Path,
    run: str | Path,
    out: str | Path,
    clip: str | None = None,
    wav2vec2: str | None = None,
    device: str = "auto",
    progress: bool = True,
    backbones=None,
    overrides: dict[str, Any] | None = None,
    detector="auto",
) -> dict[str, Any]:
    """Predict every frame of ``video`` with the head of ``run`` (a run directory, an exported folder, or an ensemble
    folder of ``expr ensemble``: its members' weighted probabilities); ``overrides`` of its config as for
    :func:`expr.runs.load_run` (e.g. ``eval.smoothing``); ``detector``: the face detector, by name
    (:func:`expr.features.faces.face_detector`) or built."""

    video, out = Path(video), Path(out)
    if not video.is_file():
        raise PredictError(f"{video}: no such file")
    device = resolve_device(device)
    members = ensemble_members(run)
    faces = face_detector(detector, device) if isinstance(detector, str) else detector
    if members is None:
        record, probs, warnings, cfg = video_probs(video, run, out, clip, wav2vec2, device, progress, backbones,
                                                   overrides, faces)  # fmt: skip
        decision = run_decision(run, cfg)
    else:  # each member on its own encoders (its features under out/members/), raw; the ensemble decides
        decision = ensemble_decision(run, overrides)  # checked before the members' work
        parts = [
            video_probs(
                video,
                member,
                out / "members" / f"{i:02d}",
                clip,
                wav2vec2,
                device,
                progress,
                None,
                member_overrides(overrides),
                faces,
            )  # fmt: skip
            for i, (member, _) in enumerate(members)
        ]
        record, _, warnings, cfg = parts[0]
        for (member, _), part in zip(members[1:], parts[1:], strict=True):
            if list(part[3].data.classes) != list(cfg.data.classes):
                raise PredictError(f"{member}: classes {list(part[3].data.classes)} differ from the first member's")
        probs = sum(weight * part[1] for (_, weight), part in zip(members, parts, strict=True))
    probs = decision.video(probs)
    labels = probs.argmax(1)
    classes = list(cfg.data.classes)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{video.stem}.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w") as f:
        f.write("frame,time_s,face,label,label_name," + ",".join(f"p_{c}" for c in classes) + "\n")
        for i, (lab, p) in enumerate(zip(labels, probs, strict=True)):
            f.write(
                f"{i},{i / record.fps:.3f},{int(record.face[i])},{lab},{classes[lab]},"
                + ",".join(f"{x:.4f}" for x in p)
                + "\n"
            )
    png = out / f"{video.stem}_timeline.png"
    plot_timeline(probs, record.face, record.fps, classes, png, video.name, has_audio=record.has_audio)
    return {"csv": csv_path, "png": png, "frames": len(labels), "warnings": warnings, "labels": labels}


def video_probs(video: Path, run, out: Path, clip, wav2vec2, device: str, progress: bool, backbones, overrides, faces):
    """(the video's record, its raw frame probabilities [T, C] (before the run's decision), warnings, the run's
    config) of one run or exported head; the extracted features are kept under ``out``."""
    model, info = load_head(run, overrides=overrides)
    cfg = info["cfg"]
    if backbones is None:
        backbones = run_backbones(info, clip, wav2vec2, device)
    try:
        online = cfg.data.mode == "online"  # per-window audio and crops through the frozen encoders, as trained
        record, warnings = extract_video(video, backbones, faces, progress, media=online)
    except MediaError as e:
        raise PredictError(str(e)) from None
    for w in warnings:
        logger.warning("warning: %s", w)
    width = sum(v.shape[1] for v in record.visual_sets().values())
    if width != cfg.model.visual_dim:
        raise PredictError(
            f"the image features are {width}-d but the head expects {cfg.model.visual_dim}-d: use the encoders the "
            f"model was trained with"
        )
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "source": {"video": str(video.resolve())},
        "classes": list(cfg.data.classes),
        "backbones": backbones.identity(),
        "sets": {
            **{n: backbones.set_identity(n) for n in backbones.visual_sets},
            **{n: {**backbones.set_identity(n), "dim": cfg.model.audio_dim} for n in backbones.audio_sets},
        },
        "media": online,
    }
    path = write_store(out / f"{video.stem}_features", [record], meta)
    store = FrameStore(path, visual=list(backbones.visual_sets), audio=next(iter(backbones.audio_sets)))
    rows, probs = predict_frames(
        model,
        store,
        "test",
        cfg.data.window,
        cfg.data.resolved_eval_stride(),
        device=device,
        label_rule=cfg.data.label_frame,
        mode=cfg.data.mode,
        encoders=run_encoders(run, cfg, store, device),
        flip=cfg.eval.flip,
    )
    return record, probs, warnings, cfg


def plot_timeline(probs, face, fps, classes, path: Path, title: str, has_audio: bool) -> None:
    import matplotlib

    plt = pyplot()

    t = np.arange(len(probs)) / fps
    colors = plt.get_cmap("tab10").colors
    fig, (ax, strip) = plt.subplots(
        2, 1, figsize=(11, 4.5), dpi=110, sharex=True, gridspec_kw={"height_ratios": [5, 1]}
    )
    ax.stackplot(t, probs.T, labels=classes, colors=colors[: len(classes)], alpha=0.85)
    ax.set_ylim(0, 1)
    ax.set_xlim(0, len(t) / fps)
    ax.set_ylabel("class probability")
    ax.set_title(title + ("" if has_audio else "  (no audio: faces only)"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    labels = probs.argmax(1)
    strip.imshow(
        labels[None, :],
        aspect="auto",
        cmap=matplotlib.colors.ListedColormap(colors[: len(classes)]),
        vmin=-0.5,
        vmax=len(classes) - 0.5,
        extent=(t[0] if len(t) else 0, (len(t)) / fps, 0, 1),
    )
    no_face = ~np.asarray(face, bool)
    if no_face.any():
        strip.fill_between(t, 0, 1, where=no_face, color="white", alpha=0.6, step="mid", label="no face")
        strip.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    strip.set_yticks([])
    strip.set_ylabel("label", rotation=0, ha="right", va="center")
    strip.set_xlabel("time (s)")
    save_figure(fig, path)


@dataclass(kw_only=True)
class PredictOptions:
    videos: tuple[str, ...] = positional()
    """video files and/or folders (searched recursively for .mp4 .avi .mov .mkv .webm .m4v)"""
    run: str
    """a run directory, a folder written by `expr export`, or an ensemble folder (`expr ensemble`)"""
    out: str
    """output folder"""
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
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        videos = find_videos(args.videos)
        kw = dict(clip=args.clip, wav2vec2=args.wav2vec2, device=args.device, progress=not args.no_progress,
                  overrides=overrides, detector=args.detector)  # fmt: skip
        results, failed = predict_videos(videos, args.run, args.out, **kw)
    except (PredictError, RunError, BackboneError, EncoderError, SpecError, StoreError, FaceDetectorError,
            ConfigError) as e:  # fmt: skip
        print(f"error: {e}", file=sys.stderr)
        return 2
    for result in results:
        print(f"wrote {result['csv']} ({result['frames']} frames) and {result['png']}")
    frames, seconds = sum(r["frames"] for r in results), sum(r["seconds"] for r in results)
    rate = frames / max(seconds, 1e-9)
    print(f"{len(results)} of {len(videos)} videos, {frames} frames in {seconds:.1f} s ({rate:.1f} frames/s)")
    for video, error in failed:
        print(f"error: {video}: {error}", file=sys.stderr)
    return 1 if failed else 0


def find_videos(paths) -> list[Path]:
    """The video files among ``paths``: files as given, folders searched recursively (sorted), each once."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        elif path.is_file():
            out.append(path)
        else:
            raise PredictError(f"{path}: no such file or folder")
    if not out:
        raise PredictError(f"no video files ({' '.join(VIDEO_SUFFIXES)}) in {', '.join(map(str, paths))}")
    out = list(dict.fromkeys(out))
    stems: dict[str, Path] = {}
    for video in out:
        if video.stem in stems:
            raise PredictError(f"{stems[video.stem]} and {video} would write the same outputs ({video.stem}.csv): "
                               f"predict them into separate --out folders")  # fmt: skip
        stems[video.stem] = video
    return out


def predict_videos(videos: list[Path], run, out, clip=None, wav2vec2=None, device="auto", progress=True,
                   overrides=None, detector="auto"):  # fmt: skip
    """:func:`predict_video` for each of ``videos`` into ``out``, the face detector and (for a run or export) the
    encoders built once; a video that cannot be read is reported and the others go on. Returns (results,
    [(video, error)])."""
    from tqdm.auto import tqdm

    device = resolve_device(device)
    faces = face_detector(detector, device)  # one fallback warning, not one per video
    backbones = None
    if ensemble_members(run) is None:  # one set of encoders for every video
        _, info = load_head(run, overrides=overrides)
        backbones = run_backbones(info, clip, wav2vec2, device)
    results, failed = [], []
    bar = tqdm(videos, unit="video", desc="videos", disable=not progress or len(videos) < 2)
    for video in bar:
        bar.set_postfix_str(video.name)
        start = time.perf_counter()
        try:
            result = predict_video(video, run, out, clip, wav2vec2, device, progress, backbones, overrides, faces)
        except PredictError as e:
            logger.warning("error: %s (going on with the other videos)", e)
            failed.append((video, str(e)))
            continue
        results.append({**result, "seconds": time.perf_counter() - start})
    return results, failed
