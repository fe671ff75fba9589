"""``expr prepare``: extract frozen CLIP and Wav2Vec2 features once into a feature store that training reads.

    expr prepare affwild2 ROOT --out CACHE [--test-names FILE] [--clip ViT-B-32/openai] [--wav2vec2 NAME|DIR]
    expr prepare folder ROOT --labels LABELS.csv --out CACHE [--classes a,b,c]

Work is kept per video: each finished video is written to ``CACHE/.parts/<name>.npz`` (a temporary file renamed
into place, so a kill never leaves a half-written part that a later run trusts); a re-run skips finished videos;
at the end the parts are assembled into the store (``store.json``, ``frames/``, ``audio/``, ``videos/``, and the
class prompts' CLIP text embeddings in ``text.safetensors``) and removed. A later run with more videos (e.g. the
test list) adds them to the existing store. Problems with one video (a corrupt JPEG, an unreadable video, no audio
track, an annotation that is longer or shorter than the video) are reported by file, masked, and counted in the
summary; they never stop the run. A malformed annotation line stops it before any extraction, naming file and line.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expr.atomic import atomic_path, write_text
from expr.cli.options import parse_options, positional
from expr.config import ABAW_CLASSES, Config, ConfigError, LossConfig, apply_dict, resolve_device
from expr.data.affwild2 import (
    AnnotationError,
    LayoutError,
    crop_frames,
    discover,
    read_annotation,
    read_au_annotation,
    read_test_names,
    read_va_annotation,
)
from expr.data.folder import items_from_folder
from expr.data.item import Item
from expr.data.media import MediaError, decode_audio, iter_frames, probe
from expr.data.online import MediaStore
from expr.data.store import (
    DEFAULT_AUDIO,
    DEFAULT_VISUAL,
    TASK_LABELS,
    FrameStore,
    StoreError,
    VideoRecord,
    add_sets,
    problem_lines,
    write_header,
    write_store,
)
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
from expr.features.spec import EncoderSpec, SpecError, parse_named, parse_spec
from expr.locks import FolderLock, LockedError

logger = logging.getLogger("expr.extract.prepare")

PARTS = ".parts"


class PrepareError(RuntimeError):
    """A preparation that cannot go on; the message names the file or option."""


@dataclass
class Report:
    """What happened to one video, kept in the store's header."""

    frames: int = 0
    faces: int = 0
    annotated: int | None = None
    fps: float = 0.0
    audio_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- one video
def _load_image(path: Path):
    """(RGB image or None when unreadable, the file's bytes)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB"), data
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None, b""


def _jpeg_bytes(image, short_side: int = 256) -> bytes:
    """A decoded video frame kept for online mode: JPEG (quality 95), shrunk to ``short_side`` pixels (CLIP looks at
    224) so a full-HD video does not fill the disk."""
    import io

    scale = short_side / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), 3)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _named(encoders, default: str) -> dict[str, Any]:
    """Encoders by set name; one encoder is the set ``default``."""
    if encoders is None:
        return {}
    return encoders if isinstance(encoders, dict) else {default: encoders}


def extract_item(
    item: Item, visual, audio, workers: int = 4, progress=None, media: bool = False
) -> tuple[dict[str, np.ndarray], Report]:
    """Features of one item: ``visual.<set>`` [T, D] fp16 for each image encoder of ``visual`` (set name ->
    encoder; one encoder is the set ``clip``), ``face`` [T], ``labels`` [T], ``audio.<set>`` [Ta, Da] fp16 (may be
    empty) for each of ``audio`` (one encoder: ``wav2vec2``), plus ``fps`` and ``audio_start``; and its
    :class:`Report`. With ``media`` also the face crops' bytes (``jpeg`` concatenated, ``jpeg_offsets`` [T + 1])
    and the 16 kHz audio (``wave`` fp16) for online mode. Frames are decoded once for every encoder."""
    visual, audio = _named(visual, DEFAULT_VISUAL), _named(audio, DEFAULT_AUDIO)
    report = Report()
    info = None
    if item.video is not None:
        try:
            info = probe(item.video)
        except MediaError as e:
            report.problems.append(f"unreadable video: {e}")
    fps = info.fps if info else (item.fps or 30.0)
    if info is None and item.fps is None:
        report.problems.append("no readable video: frame rate assumed 30 fps")
    crop_last = max(item.crops) + 1 if item.crops else 0
    if info is not None:
        T = info.num_frames
    else:
        T = max(_frame_hint(item), crop_last)
    labels = np.full(T, -1, np.int64)
    if item.labels is not None:
        report.annotated = len(item.labels)
        n = min(T, len(item.labels))
        labels[:n] = item.labels[:n]
        if info is not None and len(item.labels) != T:
            report.problems.append(
                f"frame count mismatch: annotation {item.source or item.name} has {len(item.labels)} frames, video "
                f"{item.video.name} has {T}; aligned by frame index"
                + (", extra annotation lines ignored" if len(item.labels) > T else ", missing frames unlabelled")
            )
    task_labels = {}
    for task, (width, dtype, missing) in TASK_LABELS.items():
        values = getattr(item, task)
        if values is not None:  # aligned by frame index, like the expression labels
            task_labels[task] = np.full((T, width), missing, dtype)
            task_labels[task][: min(T, len(values))] = values[:T]
    frames = _Frames(T, visual, progress, media)
    if item.crops is not None:
        chosen = sorted(i for i in item.crops if i < T)
        if len(chosen) < len(item.crops):
            report.problems.append(f"{len(item.crops) - len(chosen)} crops beyond the video's {T} frames ignored")
        corrupt = []
        step = max([e.batch_size for e in visual.values()] + [64])
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for b in range(0, len(chosen), step):
                chunk = chosen[b : b + step]
                loaded = list(pool.map(_load_image, [item.crops[i] for i in chunk]))
                corrupt += [str(item.crops[i]) for i, (im, _) in zip(chunk, loaded, strict=True) if im is None]
                frames.add([(i, im, data) for i, (im, data) in zip(chunk, loaded, strict=True)])
        if corrupt:
            report.problems.append(f"{len(corrupt)} unreadable face crops masked: {', '.join(corrupt[:5])}")
    elif info is not None:
        batch: list[tuple[int, Any, bytes]] = []
        try:
            from PIL import Image

            for i, frame in enumerate(iter_frames(item.video)):
                if i >= T:
                    break
                image = Image.fromarray(frame)
                batch.append((i, image, _jpeg_bytes(image) if media else b""))
                if len(batch) == 64:
                    frames.add(batch)
                    batch = []
        except MediaError as e:
            report.problems.append(f"frames masked after a decoding error: {e}")
        frames.add(batch)
    if not frames.face.any() and visual:
        report.problems.append("no face frames: the visual stream is masked")
    feats = {name: np.zeros((0, enc.dim), np.float16) for name, enc in audio.items()}
    audio_start = 0.0
    wave_kept = np.zeros(0, np.float16)
    if info is None:
        if item.video is None:
            report.problems.append("no video: the audio stream is masked")
    elif not info.has_audio:
        report.problems.append(f"no audio track in {item.video.name}: the audio stream is masked")
    elif audio or media:
        try:
            wave, audio_start = decode_audio(item.video, video_start=info.start)
            feats = {name: enc.encode(wave) for name, enc in audio.items()}
            if media:
                wave_kept = wave.astype(np.float16)
            report.audio_seconds = len(wave) / 16_000
        except MediaError as e:
            report.problems.append(f"audio masked: {e}")
    report.frames, report.faces, report.fps = T, int(frames.face.sum()), float(fps)
    rates = {float(enc.rate) for enc in audio.values()} or {50.0}
    if len(rates) > 1:
        raise PrepareError(f"audio sets {', '.join(audio)} have different frame rates {sorted(rates)}")
    arrays = {
        **{f"visual.{name}": v for name, v in frames.features.items()},
        "face": frames.face,
        "labels": labels,
        **{f"task.{task}": values for task, values in task_labels.items()},
        **{f"audio.{name}": a for name, a in feats.items()},
        "fps": np.float64(fps),
        "audio_start": np.float64(audio_start),
        "audio_rate": np.float64(rates.pop()),
    }
    if media:
        arrays["jpeg"] = np.frombuffer(b"".join(frames.jpeg), np.uint8)
        arrays["jpeg_offsets"] = np.cumsum([0] + [len(b) for b in frames.jpeg], dtype=np.int64)
        arrays["wave"] = wave_kept
    return arrays, report


class _Frames:
    """One video's frames as they are decoded: every image encoder's features, the face mask, the kept crops."""

    def __init__(self, T: int, visual: dict[str, Any], progress, media: bool):
        self.visual, self.progress, self.media = visual, progress, media
        self.features = {name: np.zeros((T, enc.dim), np.float16) for name, enc in visual.items()}
        self.face = np.zeros(T, bool)
        self.jpeg = [b""] * T

    def add(self, batch: list[tuple[int, Any, bytes]]) -> None:
        """(frame index, RGB image or None when unreadable, file bytes) of a batch of frames."""
        ok = [(i, im) for i, im, _ in batch if im is not None]
        if self.media:
            for i, im, data in batch:
                self.jpeg[i] = data if im is not None else b""
        if ok:
            idx = np.array([i for i, _ in ok])
            for name, encoder in self.visual.items():
                self.features[name][idx] = encoder.encode([im for _, im in ok])
            self.face[idx] = True
        if self.progress is not None and batch:
            self.progress(len(batch))


def extract_from_store(store, v: int, visual: dict[str, Any], audio: dict[str, Any], progress=None):
    """New feature sets of video ``v`` of a store that keeps its face crops and audio (``media/``): nothing is
    decoded again from the source files. Returns the ``visual.<set>`` / ``audio.<set>`` arrays."""
    import io

    from PIL import Image

    media = MediaStore(store.path / "media")
    f0, T = int(store.frame_offset[v]), int(store.num_frames[v])
    frames = _Frames(T, visual, progress, media=False)
    rows = [i for i in range(T) if store.face[f0 + i]]

    def image(i: int):
        return Image.open(io.BytesIO(bytes(media.jpeg(f0 + i)))).convert("RGB")

    for b in range(0, len(rows), 64):
        frames.add([(i, image(i), b"") for i in rows[b : b + 64]])
    wave = np.asarray(media.wave(v), np.float32)
    arrays = {f"visual.{name}": f for name, f in frames.features.items()}
    for name, encoder in audio.items():
        arrays[f"audio.{name}"] = encoder.encode(wave) if len(wave) else np.zeros((0, encoder.dim), np.float16)
    return arrays


# --------------------------------------------------------------------------------------------- parts
def _part_path(out: Path, name: str) -> Path:
    return out / PARTS / f"{name}.npz"


def save_part(out: Path, item: Item, arrays: dict[str, np.ndarray], report: Report) -> Path:
    """Write one finished video atomically (temporary file, then rename)."""
    path = _part_path(out, item.name)
    meta = {"name": item.name, "split": item.split, "task_splits": item.task_splits, "report": report.__dict__}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        f.flush()
        os.fsync(f.fileno())
    return path


def _sets_of(z, prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: z[k] for k in z.files if k.startswith(prefix)}


def load_part(path: Path):
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if "face" not in z:  # only new feature sets of a video already in the store
            return {"visual": _sets_of(z, "visual."), "audio": _sets_of(z, "audio.")}, meta["report"]
        audio = _sets_of(z, "audio.")
        record = VideoRecord(
            name=meta["name"],
            split=meta["split"],
            fps=float(z["fps"]),
            visual=_sets_of(z, "visual."),
            face=z["face"],
            labels=z["labels"],
            audio=audio if all(len(a) for a in audio.values()) else None,
            audio_rate=float(z["audio_rate"]),
            audio_start=float(z["audio_start"]),
            va=z["task.va"] if "task.va" in z else None,
            au=z["task.au"] if "task.au" in z else None,
            task_splits=meta.get("task_splits"),
        )
        if "jpeg" in z:
            blob, off = z["jpeg"].tobytes(), z["jpeg_offsets"]
            record.jpeg = [blob[off[i] : off[i + 1]] for i in range(len(off) - 1)]
            record.wave = z["wave"]
    return record, meta["report"]


def _store_media(store):
    if store is None or not (store.path / "media" / "frames").is_dir():
        return None
    return MediaStore(store.path / "media")


def _record_from_store(store, media, v: int, added: dict[str, dict[str, np.ndarray]] | None = None):
    """Video ``v`` of an existing store as a record, every feature set of it (views into the loaded store) plus the
    sets ``added`` for it, to write it again."""
    f0, n = store.frame_offset[v], store.num_frames[v]
    sets = store.feature_sets
    visual = {name: store.video_features(name, v) for name, s in sets.items() if s["modality"] == "visual"}
    audio = {name: store.video_features(name, v) for name, s in sets.items() if s["modality"] == "audio"}
    visual.update((added or {}).get("visual", {}))
    audio.update((added or {}).get("audio", {}))
    return VideoRecord(
        name=store.names[v],
        split=str(store.splits[v]),
        fps=float(store.fps[v]),
        visual=visual,
        face=store.face[f0 : f0 + n],
        labels=store.labels[f0 : f0 + n],
        audio=audio if store.num_audio[v] else None,
        audio_rate=float(store.audio_rate[v]),
        audio_start=float(store.audio_start[v]),
        jpeg=[bytes(media.jpeg(int(r))) for r in range(f0, f0 + n)] if media else None,
        wave=media.wave(v).copy() if media else None,
        **{t: store.task_labels[t][f0 : f0 + n] if store.task_splits[t][v] else None for t in store.task_labels},
        task_splits={t: str(splits[v]) for t, splits in store.task_splits.items() if splits[v]},
    )


# --------------------------------------------------------------------------------------------- the run
SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}


@dataclass
class Plan:
    """What a run of prepare adds to the store at ``out``: every set the store will have (name -> modality and
    spec), the sets new to it, and which sets each video still needs."""

    sets: dict[str, tuple[str, EncoderSpec]]
    new_sets: list[str]
    todo: list[tuple[Item, list[str]]]
    existing: Any

    def identity(self) -> dict[str, Any]:
        return {n: {"modality": m, **spec.identity()} for n, (m, spec) in self.sets.items()}


def plan_work(out: Path, items: Sequence[Item], backbones: Backbones, classes, media: bool) -> Plan:
    """Check the request against the store at ``out`` (if any) and list the work: a requested set that exists with
    another provenance is an error (never overwritten), a set the store has is reused, and videos new to the store
    need every set of the store (their specs come from its provenance)."""
    existing = FrameStore(out) if (out / "store.json").is_file() else None
    sets = dict(backbones.specs())
    if existing is not None:
        have = {s["modality"] for s in existing.feature_sets.values()}
        sets = {n: (m, s) for n, (m, s) in sets.items() if not (n in backbones.implicit and m in have)}
        if list(existing.classes) != list(classes):
            raise PrepareError(f"{out} was prepared with classes {existing.classes}, not {list(classes)}")
        _check_media(out / "store.json", bool(existing.meta.get("media", False)), media)
        for name, info in existing.feature_sets.items():
            recorded = info.get("spec")
            if name in sets and recorded != str(sets[name][1]):
                raise PrepareError(
                    f"{out} has a feature set '{name}' made by {recorded or 'an unrecorded encoder'}; this run asks "
                    f"for {sets[name][1]}. A set is never overwritten: give the new one another name "
                    f"(--{sets[name][0]} OTHER={sets[name][1]}), or use another --out"
                )
            if name not in sets:
                sets[name] = (info["modality"], parse_spec(recorded) if recorded else None)
    in_store = set(existing.names) if existing is not None else set()
    new_sets = [n for n in sets if existing is None or n not in existing.feature_sets]
    todo = []
    for item in items:
        needed = new_sets if item.name in in_store else list(sets)
        if item.name not in in_store and any(sets[n][1] is None for n in needed):
            missing = [n for n in needed if sets[n][1] is None]
            raise PrepareError(
                f"{out}: adding video {item.name} needs the feature sets {', '.join(missing)}, whose encoders the "
                f"store does not record; prepare the videos into a new --out"
            )
        if needed and not _part_path(out, item.name).is_file():
            todo.append((item, needed))
    return Plan(sets, new_sets, todo, existing)


def prepare(
    items: Sequence[Item],
    out: str | Path,
    backbones: Backbones,
    classes: Sequence[str] = ABAW_CLASSES,
    prompt_template: str = LossConfig.prompt_template,
    source: dict[str, Any] | None = None,
    workers: int = 4,
    progress: bool = True,
    stop_after: int | None = None,
    media: bool = False,
) -> dict[str, Any]:
    """Extract every item not yet done into ``out`` and assemble the store; returns the summary (also printed and
    stored in ``store.json``). On an existing store, new videos are added (with every set of the store) and new
    feature sets are added for its videos (from its kept face crops and audio when it has them). ``stop_after``
    stops after that many newly extracted videos without assembling (for tests of interrupted runs). ``media`` also
    keeps every face crop and audio track in the store for online training (``data.mode=online``)."""
    out = Path(out)
    names = [it.name for it in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PrepareError(f"video names appear twice: {', '.join(dup[:10])}")
    staging = out.with_name(out.name + ".assembling")
    job = Job.current(backbones)
    lock = None
    if job.rank == 0:  # one preparation of a store at a time (they would share its parts and staging folder)
        lock = FolderLock(out, "store", "wait for that expr prepare to finish, then run this one", beside=True)
        lock.acquire()
    try:
        return _prepare(items, out, staging, job, backbones, classes, prompt_template, source, workers, progress,
                        stop_after, media)  # fmt: skip
    finally:
        if lock is not None:
            lock.release()


def _prepare(items, out, staging, job, backbones, classes, prompt_template, source, workers, progress, stop_after,
             media) -> dict[str, Any]:  # fmt: skip
    if job.rank == 0:
        if (staging / "store.json").is_file():  # killed while moving the assembled store into place
            logger.info("finishing the interrupted assembly of %s", out)
            _swap_in(staging, out)
        for old in (out / PARTS).glob(".progress-*.json"):  # the progress of an earlier, killed job
            old.unlink()
    job.wait()
    media = media or _recorded_media(out)  # a store that keeps its crops and audio keeps them for every video
    plan = plan_work(out, items, backbones, classes, media)
    _check_parts(out, plan, classes, media)
    job.wait()  # every process has its work list before any writes a part
    random = [n for n, (_, s) in plan.sets.items() if s is not None and s.random]
    if random and job.rank == 0:
        _loud(f"RANDOM BACKBONE WEIGHTS ({', '.join(random)}): smoke runs only; the store records it in store.json")
    encoders = _Encoders(backbones, plan)
    if plan.todo:  # load the weights before writing anything: a missing checkpoint must not leave a cache behind
        encoders.load(sorted({n for _, sets in plan.todo for n in sets}))
        if job.rank == 0:
            write_text(
                out / PARTS / "plan.json",
                json.dumps({"sets": plan.identity(), "classes": list(classes), "media": media}, indent=2),
            )
    skipped = len(items) - len(plan.todo)
    if skipped and plan.existing is None and job.rank == 0:
        logger.info("%d of %d videos already extracted in %s: skipped", skipped, len(items), out)
    done = extract_all(out, plan, encoders, job, workers, progress and job.rank == 0, stop_after, media)
    job.wait()  # every process's videos are in their parts
    if done is not None:
        return done
    if job.rank != 0:
        return {"rank": job.rank}
    summary = assemble(out, staging, plan, encoders, classes, prompt_template, source, media)
    _print_summary(out, summary, plan)
    return summary


@dataclass
class Job:
    """The processes of one preparation: under ``accelerate launch`` each extracts every ``world``-th video of the
    work list on its own device and writes its parts; the main process assembles the store."""

    rank: int = 0
    world: int = 1
    state: Any = None

    @classmethod
    def current(cls, backbones: Backbones) -> Job:
        if int(os.environ.get("WORLD_SIZE", 1)) == 1:
            return cls()
        from accelerate import PartialState

        # A long timeout: a process with one long video left keeps the others waiting at the final barrier.
        state = PartialState(cpu=resolve_device(backbones.device) == "cpu", timeout=datetime.timedelta(hours=12))
        if backbones.device == "auto":
            backbones.device = str(state.device)  # this process's GPU, not cuda:0 for everyone
        return cls(state.process_index, state.num_processes, state)

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def extract_all(out: Path, plan: Plan, encoders, job: Job, workers: int, progress: bool, stop_after, media: bool):
    """Extract this process's share of ``plan.todo`` into parts. The main process's progress bar counts the videos
    and frames of every process (each writes its totals to ``.parts/.progress-<rank>.json``). Returns
    ``{"stopped_after": n}`` when ``stop_after`` stopped it, else None."""
    from tqdm.auto import tqdm

    existing = plan.existing
    media_of_store = _store_media(existing)
    index = {n: v for v, n in enumerate(existing.names)} if existing is not None else {}
    mine = plan.todo[job.rank :: job.world]
    bar = tqdm(total=len(plan.todo), unit="video", disable=not progress or not plan.todo, dynamic_ncols=True)
    t0, frames = time.perf_counter(), [0]

    def totals() -> tuple[int, int]:
        if job.world == 1:
            return bar.n, frames[0]
        counts = [json.loads(p.read_text()) for p in (out / PARTS).glob(".progress-*.json")]
        return sum(c["videos"] for c in counts), sum(c["frames"] for c in counts)

    def tick(n: int) -> None:
        frames[0] += n
        rate = totals()[1] / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix_str(f"{rate:.0f} frames/s" + (f" ({job.world} processes)" if job.world > 1 else ""), False)

    for count, (item, sets) in enumerate(mine):
        if stop_after is not None and count >= stop_after:
            bar.close()
            return {"stopped_after": count}
        bar.set_description_str(f"extracting {item.name}"[:40])
        visual, audio = encoders.pick(sets)
        if item.name in index and media_of_store is not None:  # new sets from the store's own crops and audio
            arrays, report = extract_from_store(existing, index[item.name], visual, audio, tick), Report()
        else:
            arrays, report = extract_item(item, visual, audio, workers, tick, media and item.name not in index)
            if item.name in index:  # a video of the store: keep only its new sets
                arrays = {k: v for k, v in arrays.items() if k.startswith(("visual.", "audio."))}
        save_part(out, item, arrays, report)
        for problem in report.problems:
            tqdm.write(f"{item.name}: {problem}", file=sys.stderr)
        if job.world > 1:
            mine_done = {"videos": count + 1, "frames": frames[0]}
            write_text(out / PARTS / f".progress-{job.rank}.json", json.dumps(mine_done))
            bar.n = totals()[0]
            bar.refresh()
        else:
            bar.update(1)
    bar.close()
    if mine:
        seconds = time.perf_counter() - t0
        logger.info("extracted %d videos (%d frames) in %.0f s", len(mine), frames[0], seconds)
    return None


class _Encoders:
    """The encoders of a plan by set name: the run's own, or (for sets of the store) built from their recorded
    specs, with the run's device and batch settings."""

    def __init__(self, backbones: Backbones, plan: Plan):
        extra_visual = {n: s for n, (m, s) in plan.sets.items() if m == "visual" and n not in backbones.visual_sets}
        extra_audio = {n: s for n, (m, s) in plan.sets.items() if m == "audio" and n not in backbones.audio_sets}
        backbones.visual_sets = {**backbones.visual_sets, **extra_visual}
        backbones.audio_sets = {**backbones.audio_sets, **extra_audio}
        self.backbones, self.plan = backbones, plan

    def load(self, names) -> None:
        self.backbones.load_all(names)

    def pick(self, names) -> tuple[dict[str, Any], dict[str, Any]]:
        b = self.backbones
        return (
            {n: b.visual(n) for n in names if n in b.visual_sets},
            {n: b.audio(n) for n in names if n in b.audio_sets},
        )


def _part_features(parts: dict[str, Path], videos: list[str], modality: str, name: str):
    """Set ``name``'s features of each of ``videos`` from their parts, one at a time."""
    for video in videos:
        yield load_part(parts[video])[0][modality][name]


def _check_parts(out: Path, plan: Plan, classes, media: bool) -> None:
    """Parts left by an interrupted run must come from the same request."""
    path = out / PARTS / "plan.json"
    has_parts = any(p for p in (out / PARTS).glob("*.npz") if not p.name.startswith("."))
    if not (path.is_file() and has_parts):
        return
    recorded = json.loads(path.read_text())
    theirs = {n: s.get("spec") for n, s in recorded["sets"].items()}
    ours = {n: str(spec) if spec is not None else None for n, (_, spec) in plan.sets.items()}
    if theirs != ours:
        raise PrepareError(
            f"{path}: an interrupted run left videos extracted with other feature sets ({theirs}); this run asks for "
            f"{ours}. Run the same command to continue it, or use another --out"
        )
    if list(recorded["classes"]) != list(classes):
        raise PrepareError(f"{path} was prepared with classes {list(recorded['classes'])}, not {list(classes)}")
    _check_media(path, bool(recorded.get("media", False)), media)


def assemble(out: Path, staging: Path, plan: Plan, encoders: _Encoders, classes, prompt_template, source, media):
    """Put the finished parts into the store: new sets of the store's videos are added beside the others; new
    videos mean writing the store again (streamed one video at a time: a full Aff-Wild2 store is larger than
    memory), in (split, name) order."""
    from safetensors.torch import save_file

    existing = plan.existing
    in_store = set(existing.names) if existing is not None else set()
    parts = {}
    for path in sorted((out / PARTS).glob("*.npz")):
        if not path.name.startswith("."):
            with np.load(path, allow_pickle=False) as z:
                parts[json.loads(str(z["meta"]))["name"]] = path
    new_videos = [n for n in parts if n not in in_store]
    missing = [n for n in (existing.names if existing is not None and plan.new_sets else []) if n not in parts]
    if missing:
        raise PrepareError(
            f"{out}: new feature sets ({', '.join(plan.new_sets)}) need every video of the store; {len(missing)} are "
            f"not in this run's list ({', '.join(missing[:5])}): run it over the same videos"
        )
    reports = dict(existing.meta.get("report", {}).get("videos", {})) if existing is not None else {}
    backbones = encoders.backbones
    if existing is not None and not new_videos:
        if not plan.new_sets:
            logger.info("%s is up to date", out)
            shutil.rmtree(out / PARTS, ignore_errors=True)  # parts of a run killed after its store was complete
            return existing.meta.get("report", {}).get("summary") or {}
        added = {}
        for name in plan.new_sets:
            modality, spec = plan.sets[name]
            info = {"modality": modality, **spec.identity()}
            info["dim"] = (backbones.visual(name) if modality == "visual" else backbones.audio(name)).dim
            if modality == "audio":
                info["rate"] = backbones.audio(name).rate
            added[name] = (info, _part_features(parts, existing.names, modality, name))
        add_sets(out, added)
        shutil.rmtree(out / PARTS, ignore_errors=True)
        logger.info("added feature sets %s to %s", ", ".join(plan.new_sets), out)
        return existing.meta.get("report", {}).get("summary") or {}
    sources: list[tuple[str, str, Any]] = []
    if existing is not None:
        sources += [(str(existing.splits[v]), name, v) for v, name in enumerate(existing.names)]
    for name in new_videos:
        record, report = load_part(parts[name])
        sources.append((record.split, name, parts[name]))
        reports[name] = report
    sources.sort(key=lambda s: (SPLIT_ORDER.get(s[0], 3), s[1]))
    stats = _Summary(reports)
    media_of_store = _store_media(existing)

    def records():
        for _, name, where in sources:
            if isinstance(where, Path):
                record = load_part(where)[0]
            else:
                added = load_part(parts[name])[0] if name in parts and plan.new_sets else None
                added = added if isinstance(added, dict) else None  # a full part left by a killed run: stale
                record = _record_from_store(existing, media_of_store, where, added)
            stats.add(record)
            yield record

    def meta() -> dict[str, Any]:
        sets = {}
        for name, (modality, spec) in plan.sets.items():
            recorded = existing.feature_sets.get(name, {}) if existing is not None else {}
            sets[name] = {"modality": modality, **(spec.identity() if spec is not None else {}), **recorded}
            if name not in recorded and modality == "audio":
                sets[name]["dim"] = backbones.audio(name).dim
        return {
            "source": source or {},
            "classes": list(classes),
            "prompt_template": prompt_template,
            "backbones": existing.meta.get("backbones", {}) if existing is not None else backbones.identity(),
            "sets": sets,
            "text_set": backbones.text_set(),
            "media": media,
            "report": {"summary": stats.result(), "videos": reports},
        }

    write_store(staging, records(), meta)
    if backbones.text_set() is not None:
        text = backbones.text(classes, prompt_template)
        save_file(
            {"text": text.contiguous()},
            str(staging / "text.safetensors"),
            metadata={"template": prompt_template, "classes": json.dumps(list(classes)), "set": backbones.text_set()},
        )
        write_header(staging, json.loads((staging / "store.json").read_text()))  # its size and checksum recorded too
    _swap_in(staging, out)
    return stats.result()


def _swap_in(staging: Path, out: Path) -> None:
    """Move the assembled store's files into ``out`` (keeping ``.parts`` until the store is complete), then drop the
    parts: a kill before the last step leaves the parts, and the next run assembles again."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    (out / "store.json").unlink(missing_ok=True)  # the header goes last: no header, no store
    for child in staging.iterdir():
        if child.name == "store.json":
            continue
        target = out / child.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(child, target)
    shutil.rmtree(out / "windows", ignore_errors=True)  # window indexes of the old store no longer match
    os.replace(staging / "store.json", out / "store.json")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(out / PARTS, ignore_errors=True)


def _frame_hint(item: Item) -> int:
    """The frame count the annotations (of any task) or crops suggest."""
    annotated = [len(a) for a in (item.labels, item.va, item.au) if a is not None]
    if annotated:
        return max(annotated)
    return len(item.crops) if item.crops else 0


def _recorded_media(out: Path) -> bool:
    """Whether the store at ``out`` (or the parts an interrupted run left there) keeps face crops and audio."""
    for record in (out / "store.json", out / PARTS / "plan.json"):
        if record.is_file():
            return bool(json.loads(record.read_text()).get("media", False))
    return False


def _check_media(where: Path, recorded: bool, media: bool) -> None:
    if recorded != media:
        raise PrepareError(
            f"{where} was prepared {'with' if recorded else 'without'} --media (face crops and audio for online "
            f"training); run it {'with' if recorded else 'without'} --media again to continue, or use another --out"
        )


class _Summary:
    """The closing summary, counted while the videos stream into the store."""

    def __init__(self, reports: dict[str, dict]):
        self.reports = reports
        self.videos = dict.fromkeys(SPLIT_ORDER, 0)
        self.frames = self.labelled = self.faces = 0
        self.no_audio: list[str] = []

    def add(self, record) -> None:
        self.videos[record.split] = self.videos.get(record.split, 0) + 1
        self.frames += len(record.labels)
        self.labelled += int((np.asarray(record.labels) >= 0).sum())
        self.faces += int(np.asarray(record.face).sum())
        if not record.has_audio:
            self.no_audio.append(record.name)

    def result(self) -> dict[str, Any]:
        def count(word: str) -> list[str]:
            return sorted(n for n, r in self.reports.items() if any(word in p for p in r.get("problems", [])))

        return {
            "videos": self.videos,
            "frames": self.frames,
            "labelled_frames": self.labelled,
            "face_frames": self.faces,
            "no_audio": sorted(self.no_audio),
            "unreadable_video": count("unreadable video"),
            "corrupt_crops": count("unreadable face crops"),
            "frame_count_mismatch": count("frame count mismatch"),
        }


def _print_summary(out: Path, s: dict[str, Any], plan: Plan | None = None) -> None:
    lines = [f"feature store: {out}"]
    if s:
        videos = ", ".join(f"{k} {v}" for k, v in s["videos"].items() if v)
        counts = f"frames {s['frames']} (labelled {s['labelled_frames']}, with a face {s['face_frames']})"
        lines.append(f"  videos: {videos}; {counts}")
    if plan is not None:
        sets = ", ".join(f"{n} ({m}{', new' if n in plan.new_sets else ''})" for n, (m, _) in plan.sets.items())
        lines.append(f"  feature sets: {sets}")
    lines += problem_lines(s)
    lines.append(f"  details per video: {out / 'store.json'} (report.videos); train with --data.cache {out}")
    print("\n".join(lines))


def _loud(message: str) -> None:
    bar = "!" * min(100, len(message) + 4)
    print(f"{bar}\n! {message}\n{bar}", file=sys.stderr)


# --------------------------------------------------------------------------------------------- command line
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


def items_from_affwild2(args: AffWild2Options) -> tuple[list[Item], dict[str, Any], list[str]]:

    test_names = read_test_names(args.test_names) if args.test_names else []
    crop_dirs = [c.strip() for c in args.crop_dirs.split(",")] if args.crop_dirs else None
    layout = discover(args.root, test_names, args.annotation_dir, crop_dirs)
    print(layout.summary())
    items = []
    readers = {"va": read_va_annotation, "au": read_au_annotation}
    for e in layout.entries:  # read every annotation first: a malformed line stops before any extraction
        labels = read_annotation(e.annotation) if e.annotation is not None else None
        crops = None
        if e.crop_dir is not None:
            crops = {int(i): e.crop_dir / f"{i + 1:05d}.jpg" for i in crop_frames(e.crop_dir)}
        item = Item(e.name, e.split, labels, crops if crops is not None else {}, e.video, None, str(e.annotation))
        for task, (_, path) in e.tasks.items():
            setattr(item, task, readers[task](path))
        item.task_splits = {task: split for task, (split, _) in e.tasks.items()} or None
        items.append(item)
    source = {
        "layout": "affwild2",
        "root": str(Path(args.root).resolve()),
        "annotation_dir": layout.annotation_dir.name if layout.annotation_dir else None,
        "task_dirs": {task: folder.name for task, folder in layout.task_dirs.items()},
        "crop_dirs": [c.name for c in layout.crop_roots],
        "test_names": str(args.test_names) if args.test_names else None,
    }
    return items, source, list(ABAW_CLASSES)


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
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        backbones = Backbones(
            args.clip,
            args.wav2vec2,
            args.device,
            args.batch_size,
            args.chunk_seconds,
            args.context_seconds,
            *feature_sets(args, clip_given, wav2vec2_given),
        )
        if isinstance(args, AffWild2Options):
            items, source, classes = items_from_affwild2(args)
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


if __name__ == "__main__":
    sys.exit(main())
