"""Prediction on raw videos (``expr predict``, :mod:`expr.cli.predict`): per-frame expression labels for raw videos.

How to run it, and what it writes: :mod:`expr.cli.predict`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from expr.config import resolve_device
from expr.data.folder import VIDEO_SUFFIXES
from expr.data.media import MediaError
from expr.data.store import FrameStore, write_store
from expr.features.backbones import Backbones, clip_option
from expr.features.faces import face_detector
from expr.features.spec import parse_spec
from expr.runs.run import Run
from expr.scoring.decision import smooth
from expr.video.footage import Footage, PredictError, person_records, read_footage
from expr.video.timeline import plot_tasks, plot_timeline, write_csv

logger = logging.getLogger("expr.video.predict")

REALTIME = {"predict.fps": 8.0, "predict.detect_every": 3, "predict.detect_scale": 0.5, "predict.precision": "auto"}
"""``expr predict --realtime``: faster than real time on a 2-core CPU with the paper's encoders (BENCHMARKS.md section
6), each choice's accuracy cost measured there; an explicit ``--predict.*`` option overrides its part."""


def run_backbones(info: dict[str, Any], clip: str | None, wav2vec2: str | None, device: str,
                  precision: str = "fp32") -> Backbones:  # fmt: skip
    """The encoders of the feature sets the head was trained on, from the specs their store recorded (options such as
    views and layers included); ``--clip`` / ``--wav2vec2``, or the recorded backbones of a store without specs,
    for the paper's two."""
    sets = info.get("feature_sets") or {"visual": {"clip": {}}, "audio": {"wav2vec2": {}}}
    unknown = [n for group in sets.values() for n, s in group.items() if not s.get("spec")]
    paper = list(sets["visual"]) == ["clip"] and list(sets["audio"]) == ["wav2vec2"]
    if clip or wav2vec2 or (paper and unknown):
        return Backbones(*backbone_specs(info, clip, wav2vec2), device, precision=precision)
    if unknown:
        raise PredictError(f"the model's feature sets {', '.join(unknown)} do not record their encoders")
    return Backbones(
        device=device,
        precision=precision,
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
    with tracks of at least ``min_track_s`` seconds); ``overrides`` of its config as for
    :func:`expr.runs.layout.load_run` (e.g. ``eval.smoothing``); ``detector``: the face detector, by name
    (:func:`expr.features.faces.face_detector`) or built; ``annotate``: also write ``<stem>_annotated.mp4``. Returns
    {people: [{name, track, first, csv, png, labels, frames}], frames, warnings, video}."""

    video, out = Path(video), Path(out)
    if not video.is_file():
        raise PredictError(f"{video}: no such file")
    if faces not in ("largest", "all") or min_track_s < 0 or batch < 1:
        raise PredictError(f"faces={faces!r}, min_track={min_track_s}, batch={batch}: faces is largest or all, "
                           f"min_track 0 or more seconds, batch at least 1")  # fmt: skip
    device = resolve_device(device)
    run = run if isinstance(run, Run) else Run.open(run, overrides)
    decision = run.decision  # its errors before the work
    detector = face_detector(detector, device) if isinstance(detector, str) else detector
    try:
        footage = read_footage(video, detector, faces, min_track_s, batch, progress, run.cfg.predict.detect_every,
                               run.cfg.predict.detect_scale)  # fmt: skip
    except MediaError as e:
        raise PredictError(str(e)) from None
    for w in footage.warnings:
        logger.warning("warning: %s", w)
    # Each ensemble member runs on its own encoders (its features under out/members/), raw; the ensemble decides.
    probs = run.combine(lambda r, i: video_probs(footage, r, out if i is None else out / "members" / f"{i:02d}", clip,
                                                 wav2vec2, device, backbones if i is None else None))  # fmt: skip
    cfg = run.cfg
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


def video_probs(footage: Footage, run: Run, out: Path, clip, wav2vec2, device: str, backbones):
    """Each person's raw frame outputs ({"expr": probabilities [T, C] before the run's decision, and "va" [T, 2] /
    "au" [T, 12] of a run trained on them}) of one run or exported head; the extracted features are kept under
    ``out`` (one store, a video per person)."""
    cfg, info = run.cfg, run.info
    if backbones is None:
        backbones = run_backbones(info, clip, wav2vec2, device, cfg.predict.precision)
    online = cfg.data.mode == "online"  # per-window audio and crops through the frozen encoders, as trained
    chunk = (cfg.predict.audio_chunk, cfg.predict.audio_context) if cfg.predict.audio_chunk else None
    records = person_records(footage, backbones, media=online, rate=cfg.predict.fps, audio_chunk=chunk)
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
    probs = []
    for v in range(len(records)):
        rows, p = run.window_outputs(store, "test", np.array([v]), device)
        order = np.argsort(rows)
        probs.append({t: o[order] for t, o in p.items()})
    return probs


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


def prepare(run, overrides, detector, backend: str, clip, wav2vec2, device: str):
    """(the run, its encoders loaded, the face detector) for predicting with ``run`` (a run, export or ensemble folder;
    ``backend`` ``onnxruntime``: an ONNX export's models); the encoders are None for an ensemble (each member loads
    its own)."""
    detector = face_detector(detector, device)  # one fallback warning, not one per video
    run = Run.open(run, overrides)
    if backend == "onnxruntime":
        from expr.runs.onnx import onnx_run

        if clip or wav2vec2:
            raise PredictError("--backend onnxruntime runs the encoders exported with the run: drop --clip/--wav2vec2")
        if run.cfg.predict.precision == "bf16":
            raise PredictError("--predict.precision bf16 is for the torch backend: ONNX Runtime runs the exported "
                               "fp32 models")  # fmt: skip
        run, backbones = onnx_run(run, detector, device)
    else:
        precision = run.cfg.predict.precision
        backbones = None if run.is_ensemble else run_backbones(run.info, clip, wav2vec2, device, precision)
    if backbones is not None:
        backbones.load_all()  # now, not inside the first video's time (and a missing checkpoint fails first)
        if backbones.run_precision() == "bf16":
            logger.info("the encoders run in %s (predict.precision %s)", backbones.run_precision(), precision)
    import datasets  # noqa: F401  (the feature store's writer: imported here, not in the first video's time)

    from expr.plots import pyplot

    pyplot()  # the plotting library's import too: a cost of the process, not of each video
    return run, backbones, detector


def predict_videos(videos: list[Path], run, out, clip=None, wav2vec2=None, device="auto", progress=True,
                   overrides=None, detector="auto", backend="torch", **options):  # fmt: skip
    """:func:`predict_video` for each of ``videos`` into ``out``, the face detector and (for a run or export) the
    encoders built once; a video that cannot be read is reported and the others go on. ``backend`` ``onnxruntime``:
    the head and encoders of an ONNX export (``expr export --format onnx``) under ONNX Runtime. Returns (results,
    [(video, error)])."""
    from tqdm.auto import tqdm

    device = resolve_device(device)
    run, backbones, detector = prepare(run, overrides, detector, backend, clip, wav2vec2, device)
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
