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
``--video`` ``DIR/<video>_annotated.mp4`` (:mod:`expr.video.annotate`). Folders are searched recursively, and a video that
cannot be read is reported while the others go on.
"""

from __future__ import annotations

import logging
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expr.atomic import atomic_path
from expr.config import resolve_device
from expr.data.affwild2 import AU_NAMES
from expr.data.folder import VIDEO_SUFFIXES
from expr.data.media import MediaError, decode_audio, probe, timed_frames
from expr.data.store import FrameStore, VideoRecord, write_store
from expr.features.backbones import Backbones, clip_option
from expr.features.faces import Face, face_detector
from expr.features.spec import parse_spec
from expr.plots import pyplot, save_figure
from expr.runs.layout import (
    ensemble_decision,
    ensemble_members,
    load_head,
    member_overrides,
    run_decision,
    run_encoders,
)
from expr.scoring.decision import smooth
from expr.scoring.outputs import predict_outputs
from expr.video.tracks import tracks_of

logger = logging.getLogger("expr.video.predict")


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


@dataclass
class Person:
    """One face track of a video, predicted over its frames ``first`` .. ``first + len(faces) - 1``: ``faces[i]``
    (with its aligned crop) or None where none was found. Outputs are named ``name`` (the video's stem; with
    ``--faces all``, ``<stem>_face<track>``, tracks numbered left to right)."""

    name: str
    track: int
    first: int
    faces: list[Face | None]

    @property
    def face(self) -> np.ndarray:
        return np.array([f is not None for f in self.faces], bool)


@dataclass
class Footage:
    """A video read once: each frame's time (its own timestamp, in seconds), the people found, the audio (16 kHz mono
    wave and its start relative to frame 0; None without) and the warnings."""

    path: Path
    fps: float
    times: np.ndarray
    people: list[Person]
    audio: tuple[np.ndarray, float] | None
    warnings: list[str]


def read_footage(path: Path, detector, faces: str = "largest", min_track_s: float = 1.0, batch: int = 16,
                 progress: bool = True) -> Footage:  # fmt: skip
    """Decode ``path`` once: faces detected (``batch`` frames of one size at a time through the detector) and
    cropped, linked into people (``faces``: ``largest`` or ``all`` with tracks of at least ``min_track_s`` seconds),
    the audio decoded. A stretch that cannot be decoded, a variable frame rate, no face or no audio: warnings."""
    from tqdm.auto import tqdm

    info = probe(path, tolerant=True)
    fps = info.fps
    skipped: list[float] = []
    times, detections, pending = [], [], []

    def flush():
        for (_, frame), found in zip(pending, detector.detect_batch(np.stack([f for _, f in pending])), strict=True):
            found = found if faces == "all" else found[:1]  # largest first
            for face in found:
                face.image = face.crop(frame)
            detections.append(found)
        pending.clear()

    bar = tqdm(total=info.num_frames, unit="frame", desc="faces", disable=not progress)
    with closing(timed_frames(path, skipped)) as frames:
        for time_s, frame in frames:
            if pending and (len(pending) == batch or pending[0][1].shape != frame.shape):
                flush()
            pending.append((time_s, frame))
            times.append(time_s)
            bar.update()
    if pending:
        flush()
    bar.close()
    if not times:
        raise PredictError(f"{path}: no frame could be decoded")
    steps, warnings = np.diff(times), []
    if skipped:  # the frames of a stretch that could not be decoded count as frames without a face: frame i stays at
        # i / fps, where the audio features place it
        missing = np.concatenate([[round(times[0] * fps)], np.maximum(np.round(steps * fps) - 1, 0)]).astype(int)
        steps = steps[missing[1:] == 0]
        full_times, full = [], []
        for time_s, found, gap in zip(times, detections, missing, strict=True):
            full_times += [time_s - (gap - k) / fps for k in range(gap)] + [time_s]
            full += [[] for _ in range(gap)] + [found]
        times, detections = full_times, full
        warnings.append(f"{path.name}: {len(skipped)} packets from {min(skipped):.2f} s to {max(skipped):.2f} s could "
                        f"not be decoded; their {missing.sum()} frames count as frames without a face")  # fmt: skip
    T = len(times)
    if len(steps) > 1 and (steps.max() > 1.5 * np.median(steps) or steps.min() < 0.5 * np.median(steps)):
        warnings.append(f"{path.name}: variable frame rate (frame intervals {steps.min() * 1e3:.0f} to "
                        f"{steps.max() * 1e3:.0f} ms): the CSV's times are the frames' own, the windows count frames "
                        f"at the average {fps:.2f} frames/s")  # fmt: skip
    tracks = tracks_of(detections, faces, min_frames=max(1, round(min_track_s * fps)), max_gap=max(1, round(fps / 2)))
    found = [t for t in tracks if t.frames]
    people = [Person(path.stem, 1, 0, [None] * T)] if faces == "largest" or not found else []
    for k, track in enumerate(found if faces == "all" else [], start=1):
        people.append(Person(f"{path.stem}_face{k}", k, track.first, [None] * (track.last - track.first + 1)))
    for person, track in zip(people, found, strict=False):
        for t, face in zip(track.frames, track.faces, strict=True):
            person.faces[t - person.first] = face
    if not found:
        more = f" in a track of {min_track_s:g} s or longer" if faces == "all" and any(detections) else ""
        warnings.append(f"{path.name}: no face detected{more}; the prediction uses the audio alone")
    audio = None
    if not info.has_audio:
        warnings.append(f"{path.name}: no audio track; the prediction uses the faces alone")
    else:
        try:
            audio = decode_audio(path, video_start=info.start)
        except MediaError as e:
            warnings.append(f"{e}; the prediction uses the faces alone")
    return Footage(path, fps, np.asarray(times), people, audio, warnings)


def person_records(footage: Footage, backbones, media: bool = False) -> list[VideoRecord]:
    """A VideoRecord (split ``test``) per person of ``footage``, through ``backbones``' encoders (the audio encoded
    once, each person's span of it). ``media`` also keeps the face crops (JPEG) and the audio for a head trained in
    online mode."""
    import io

    from PIL import Image

    audio_name = next(iter(backbones.audio_sets))
    audio, start, wave = None, 0.0, np.zeros(0, np.float16)
    if footage.audio is not None:
        wave, start = footage.audio
        audio = {audio_name: backbones.audio(audio_name).encode(wave)}
        wave = wave.astype(np.float16)
    records = []
    for person in footage.people:
        face = person.face
        crops = [Image.fromarray(f.image) for f in person.faces if f is not None]
        visual = {}
        for name in backbones.visual_sets:
            enc = backbones.visual(name)
            visual[name] = np.zeros((len(face), enc.dim), np.float16)
            if crops:
                visual[name][face] = enc.encode(crops)
        rate = backbones.audio(audio_name).rate
        shift = start - person.first / footage.fps  # the audio's start relative to the person's first frame
        record = VideoRecord(person.name, "test", footage.fps, visual, face, np.full(len(face), -1), audio, rate,
                             shift)  # fmt: skip
        if media:
            record.jpeg, record.wave = [], wave
            for f in person.faces:
                buf = io.BytesIO()
                if f is not None:
                    Image.fromarray(f.image).save(buf, format="JPEG", quality=95)
                record.jpeg.append(buf.getvalue())
        records.append(record)
    return records


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
    faces: str = "largest",
    min_track_s: float = 1.0,
    annotate: bool = False,
    batch: int = 16,
) -> dict[str, Any]:
    """Predict every frame of ``video`` with the head of ``run`` (a run directory, an exported folder, or an ensemble
    folder of ``expr ensemble``: its members' weighted probabilities), per person (``faces``: ``largest`` or ``all``
    with tracks of at least ``min_track_s`` seconds); ``overrides`` of its config as for :func:`expr.runs.layout.load_run`
    (e.g. ``eval.smoothing``); ``detector``: the face detector, by name (:func:`expr.features.faces.face_detector`)
    or built; ``annotate``: also write ``<stem>_annotated.mp4``. Returns {people: [{name, track, first, csv, png,
    labels, frames}], frames, warnings, video}."""

    video, out = Path(video), Path(out)
    if not video.is_file():
        raise PredictError(f"{video}: no such file")
    if faces not in ("largest", "all") or min_track_s < 0 or batch < 1:
        raise PredictError(f"faces={faces!r}, min_track={min_track_s}, batch={batch}: faces is largest or all, "
                           f"min_track 0 or more seconds, batch at least 1")  # fmt: skip
    device = resolve_device(device)
    members = ensemble_members(run)
    detector = face_detector(detector, device) if isinstance(detector, str) else detector
    decision = ensemble_decision(run, overrides) if members is not None else None  # checked before the work
    try:
        footage = read_footage(video, detector, faces, min_track_s, batch, progress)
    except MediaError as e:
        raise PredictError(str(e)) from None
    for w in footage.warnings:
        logger.warning("warning: %s", w)
    if members is None:
        probs, cfg = video_probs(footage, run, out, clip, wav2vec2, device, backbones, overrides)
        decision = run_decision(run, cfg)
    else:  # each member on its own encoders (its features under out/members/), raw; the ensemble decides
        parts = [video_probs(footage, member, out / "members" / f"{i:02d}", clip, wav2vec2, device, None,
                             member_overrides(overrides))
                 for i, (member, _) in enumerate(members)]  # fmt: skip
        cfg = parts[0][1]
        for (member, _), part in zip(members[1:], parts[1:], strict=True):
            if list(part[1].data.classes) != list(cfg.data.classes):
                raise PredictError(f"{member}: classes {list(part[1].data.classes)} differ from the first member's")
        common = set.intersection(*(set(part[0][0]) for part in parts))  # the tasks every member trained
        probs = [{t: sum(w * part[0][k][t] for (_, w), part in zip(members, parts, strict=True)) for t in common}
                 for k in range(len(footage.people))]  # fmt: skip
    classes = list(cfg.data.classes)
    expressions = "expr" in cfg.train.tasks  # a VA or AU run's classifier never trained: no labels from it
    out.mkdir(parents=True, exist_ok=True)
    people = []
    for person, outputs in zip(footage.people, probs, strict=True):
        p = decision.video(outputs["expr"])
        tasks = {t: outputs[t] for t in ("va", "au") if t in outputs}  # the other tasks the run trained
        if "va" in tasks:
            tasks["va"] = smooth(tasks["va"], cfg.eval.va_smoothing, cfg.eval.va_smoothing_width)
        csv_path = out / f"{person.name}.csv"
        write_csv(csv_path, person, footage, p if expressions else None, classes, tasks)
        png = out / f"{person.name}_timeline.png" if expressions else None
        title = video.name + (f", face {person.track}" if faces == "all" else "")
        start = footage.times[person.first]
        if expressions:
            plot_timeline(p, person.face, footage.fps, classes, png, title, footage.audio is not None, start=start)
        result = {"name": person.name, "track": person.track, "first": person.first, "csv": csv_path, "png": png,
                  "labels": p.argmax(1), "probs": p, "frames": len(p), **tasks}  # fmt: skip
        if tasks:
            result["tasks_png"] = out / f"{person.name}_tasks.png"
            plot_tasks(tasks, footage.fps, result["tasks_png"], title, start)
        people.append(result)
    mp4 = None
    if annotate and not expressions:
        footage.warnings.append(f"{video.name}: --video shows expression labels, and the run trained none")
        logger.warning("warning: %s", footage.warnings[-1])
    elif annotate:
        from expr.video.annotate import write_annotated_video

        try:
            mp4 = write_annotated_video(video, out / f"{video.stem}_annotated.mp4", footage, people, classes, progress)
        except (OSError, ValueError, RuntimeError) as e:  # PyAV's errors among them: the predictions stand
            footage.warnings.append(f"{video.name}: the annotated video could not be written ({e})")
            logger.warning("warning: %s", footage.warnings[-1])
    return {"people": people, "frames": len(footage.times), "warnings": footage.warnings, "video": mp4}


def write_csv(path: Path, person: Person, footage: Footage, probs: np.ndarray, classes: list[str],
              tasks: dict[str, np.ndarray] | None = None) -> None:  # fmt: skip
    """One row per frame of the person's span: the video's frame index and time, the track, whether a face was
    found and its box (empty without), the label and the class probabilities (``probs`` None: a run without the
    expression task, no such columns); then, for a run trained on them, ``valence``, ``arousal`` and each action
    unit's probability (``p_AU1`` ...)."""
    tasks, T = tasks or {}, len(person.faces)
    extra = (["valence", "arousal"] if "va" in tasks else []) + ([f"p_{n}" for n in AU_NAMES] if "au" in tasks else [])
    columns = np.concatenate([tasks[t] for t in ("va", "au") if t in tasks], 1) if tasks else np.zeros((T, 0))
    expr_columns = ["label", "label_name", *(f"p_{c}" for c in classes)] if probs is not None else []
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(",".join(["frame,time_s,track,face,box_x,box_y,box_w,box_h", *expr_columns, *extra]) + "\n")
        for i in range(T):
            face, t = person.faces[i], person.first + i
            box = ",".join(f"{v:.1f}" for v in face.box) if face is not None else ",,,"
            label = ""
            if probs is not None:
                lab = int(probs[i].argmax())
                label = f",{lab},{classes[lab]}"
            values = [*(probs[i] if probs is not None else []), *columns[i]]
            f.write(f"{t},{footage.times[t]:.3f},{person.track},{int(face is not None)},{box}{label}"
                    + "".join(f",{x:.4f}" for x in values) + "\n")  # fmt: skip


def plot_tasks(tasks: dict[str, np.ndarray], fps: float, path: Path, title: str, start: float = 0.0) -> None:
    """Valence and arousal over time (lines) above the action units' probabilities (a heat map, a row per unit)."""
    plt = pyplot()
    panels = [t for t in ("va", "au") if t in tasks]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.6 * len(panels) + 0.6), dpi=110, sharex=True,
                             squeeze=False)  # fmt: skip
    T = len(next(iter(tasks.values())))
    t = start + np.arange(T) / fps
    for ax, task in zip(axes[:, 0], panels, strict=True):
        if task == "va":
            ax.plot(t, tasks["va"][:, 0], label="valence", color="#C44E52")
            ax.plot(t, tasks["va"][:, 1], label="arousal", color="#4C72B0")
            ax.axhline(0, color="0.6", lw=0.8)
            ax.set_ylim(-1, 1)
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        else:
            image = ax.imshow(tasks["au"].T, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest",
                              extent=(start, start + T / fps, len(AU_NAMES) - 0.5, -0.5))  # fmt: skip
            ax.set_yticks(range(len(AU_NAMES)), AU_NAMES, fontsize=7)
            fig.colorbar(image, cax=ax.inset_axes([1.01, 0.0, 0.015, 1.0]), label="probability")  # panels aligned
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("time (s)")
    save_figure(fig, path)


def video_probs(footage: Footage, run, out: Path, clip, wav2vec2, device: str, backbones, overrides):
    """(each person's raw frame outputs: {"expr": probabilities [T, C] before the run's decision, and "va" [T, 2] /
    "au" [T, 12] of a run trained on them}, the run's config) of one run or
    exported head; the extracted features are kept under ``out`` (one store, a video per person)."""
    model, info = load_head(run, overrides=overrides)
    cfg = info["cfg"]
    if backbones is None:
        backbones = run_backbones(info, clip, wav2vec2, device)
    online = cfg.data.mode == "online"  # per-window audio and crops through the frozen encoders, as trained
    records = person_records(footage, backbones, media=online)
    width = sum(v.shape[1] for v in records[0].visual_sets().values())
    if width != cfg.model.visual_dim:
        raise PredictError(
            f"the image features are {width}-d but the head expects {cfg.model.visual_dim}-d: use the encoders the "
            f"model was trained with"
        )
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "source": {"video": str(footage.path.resolve())},
        "classes": list(cfg.data.classes),
        "backbones": backbones.identity(),
        "sets": {
            **{n: backbones.set_identity(n) for n in backbones.visual_sets},
            **{n: {**backbones.set_identity(n), "dim": cfg.model.audio_dim} for n in backbones.audio_sets},
        },
        "media": online,
    }
    path = write_store(out / f"{footage.path.stem}_features", records, meta)
    store = FrameStore(path, visual=list(backbones.visual_sets), audio=next(iter(backbones.audio_sets)))
    kw = dict(device=device, label_rule=cfg.data.label_frame, mode=cfg.data.mode, flip=cfg.eval.flip,
              encoders=run_encoders(run, cfg, store, device))  # fmt: skip
    probs = []
    for v in range(len(records)):
        rows, p = predict_outputs(model, store, "test", cfg.data.window, cfg.data.resolved_eval_stride(),
                                  videos=np.array([v]), tasks=cfg.train.tasks, **kw)  # fmt: skip
        order = np.argsort(rows)
        probs.append({t: o[order] for t, o in p.items()})
    return probs, cfg


def plot_timeline(probs, face, fps, classes, path: Path, title: str, has_audio: bool, start: float = 0.0) -> None:
    """Stacked class probabilities over time (from ``start`` seconds) above a strip of the labels, frames without a
    face greyed."""
    import matplotlib

    plt = pyplot()

    t = start + np.arange(len(probs)) / fps
    colors = plt.get_cmap("tab10").colors
    fig, (ax, strip) = plt.subplots(
        2, 1, figsize=(11, 4.5), dpi=110, sharex=True, gridspec_kw={"height_ratios": [5, 1]}
    )
    ax.stackplot(t, probs.T, labels=classes, colors=colors[: len(classes)], alpha=0.85)
    ax.set_ylim(0, 1)
    ax.set_xlim(start, start + len(t) / fps)
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
        extent=(start, start + len(t) / fps, 0, 1),
    )
    no_face = ~np.asarray(face, bool)
    if no_face.any():
        strip.fill_between(t, 0, 1, where=no_face, color="white", alpha=0.6, step="mid", label="no face")
        strip.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    strip.set_yticks([])
    strip.set_ylabel("label", rotation=0, ha="right", va="center")
    strip.set_xlabel("time (s)")
    save_figure(fig, path)


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
                   overrides=None, detector="auto", **options):  # fmt: skip
    """:func:`predict_video` for each of ``videos`` into ``out``, the face detector and (for a run or export) the
    encoders built once; a video that cannot be read is reported and the others go on. Returns (results,
    [(video, error)])."""
    from tqdm.auto import tqdm

    device = resolve_device(device)
    detector = face_detector(detector, device)  # one fallback warning, not one per video
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
            result = predict_video(video, run, out, clip, wav2vec2, device, progress, backbones, overrides, detector,
                                   **options)  # fmt: skip
        except PredictError as e:
            logger.warning("error: %s (going on with the other videos)", e)
            failed.append((video, str(e)))
            continue
        results.append({**result, "seconds": time.perf_counter() - start})
    return results, failed
