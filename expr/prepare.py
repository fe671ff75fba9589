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

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expr.atomic import atomic_path
from expr.config import ABAW_CLASSES, Config, ConfigError, LossConfig, apply_dict
from expr.data.affwild2 import AnnotationError, LayoutError, crop_frames, discover, read_annotation, read_test_names
from expr.data.folder import items_from_folder
from expr.data.item import Item
from expr.data.media import MediaError, decode_audio, iter_frames, probe
from expr.data.online import MediaStore
from expr.data.store import FrameStore, StoreError, VideoRecord, write_store
from expr.features.backbones import (
    BACKBONE_KEYS,
    DEFAULT_CLIP,
    DEFAULT_WAV2VEC2,
    BackboneError,
    Backbones,
    backbone_options,
)
from expr.options import parse_options, positional

logger = logging.getLogger("expr.prepare")

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


def extract_item(
    item: Item, visual, audio, workers: int = 4, progress=None, media: bool = False
) -> tuple[dict[str, np.ndarray], Report]:
    """Features of one item: ``visual`` [T, D] fp16, ``face`` [T], ``labels`` [T], ``audio`` [Ta, Da] fp16 (may be
    empty), plus ``fps`` and ``audio_start``; and its :class:`Report`. With ``media`` also the face crops' bytes
    (``jpeg`` concatenated, ``jpeg_offsets`` [T + 1]) and the 16 kHz audio (``wave`` fp16) for online mode."""
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
        T = max(len(item.labels) if item.labels is not None else 0, crop_last)
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
    vis = np.zeros((T, visual.dim), np.float16)
    face = np.zeros(T, bool)
    jpeg = [b""] * T
    if item.crops is not None:
        frames = sorted(i for i in item.crops if i < T)
        if len(frames) < len(item.crops):
            report.problems.append(f"{len(item.crops) - len(frames)} crops beyond the video's {T} frames ignored")
        corrupt = []
        step = max(visual.batch_size, 64)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for b in range(0, len(frames), step):
                chunk = frames[b : b + step]
                loaded = list(pool.map(_load_image, [item.crops[i] for i in chunk]))
                images = [im for im, _ in loaded]
                ok = [(i, im) for i, im in zip(chunk, images, strict=True) if im is not None]
                corrupt += [str(item.crops[i]) for i, im in zip(chunk, images, strict=True) if im is None]
                if media:
                    for i, (im, data) in zip(chunk, loaded, strict=True):
                        jpeg[i] = data if im is not None else b""
                if ok:
                    idx = np.array([i for i, _ in ok])
                    vis[idx] = visual.encode([im for _, im in ok])
                    face[idx] = True
                if progress is not None:
                    progress(len(chunk))
        if corrupt:
            report.problems.append(f"{len(corrupt)} unreadable face crops masked: {', '.join(corrupt[:5])}")
    elif info is not None:
        batch: list[tuple[int, Any]] = []
        try:
            from PIL import Image

            for i, frame in enumerate(iter_frames(item.video)):
                if i >= T:
                    break
                batch.append((i, Image.fromarray(frame)))
                if media:
                    jpeg[i] = _jpeg_bytes(batch[-1][1])
                if len(batch) == visual.batch_size:
                    _encode_into(visual, batch, vis, face, progress)
                    batch = []
        except MediaError as e:
            report.problems.append(f"frames masked after a decoding error: {e}")
        if batch:
            _encode_into(visual, batch, vis, face, progress)
    if not face.any():
        report.problems.append("no face frames: the visual stream is masked")
    audio_feats = np.zeros((0, audio.dim), np.float16)
    audio_start = 0.0
    wave_kept = np.zeros(0, np.float16)
    if info is None:
        if item.video is None:
            report.problems.append("no video: the audio stream is masked")
    elif not info.has_audio:
        report.problems.append(f"no audio track in {item.video.name}: the audio stream is masked")
    else:
        try:
            wave, audio_start = decode_audio(item.video, video_start=info.start)
            audio_feats = audio.encode(wave)
            if media:
                wave_kept = wave.astype(np.float16)
            report.audio_seconds = len(wave) / 16_000
        except MediaError as e:
            report.problems.append(f"audio masked: {e}")
    report.frames, report.faces, report.fps = T, int(face.sum()), float(fps)
    arrays = {
        "visual": vis,
        "face": face,
        "labels": labels,
        "audio": audio_feats,
        "fps": np.float64(fps),
        "audio_start": np.float64(audio_start),
        "audio_rate": np.float64(audio.rate),
    }
    if media:
        arrays["jpeg"] = np.frombuffer(b"".join(jpeg), np.uint8)
        arrays["jpeg_offsets"] = np.cumsum([0] + [len(b) for b in jpeg], dtype=np.int64)
        arrays["wave"] = wave_kept
    return arrays, report


def _encode_into(visual, batch, vis, face, progress) -> None:
    idx = np.array([i for i, _ in batch])
    vis[idx] = visual.encode([im for _, im in batch])
    face[idx] = True
    if progress is not None:
        progress(len(batch))


# --------------------------------------------------------------------------------------------- parts
def _part_path(out: Path, name: str) -> Path:
    return out / PARTS / f"{name}.npz"


def save_part(out: Path, item: Item, arrays: dict[str, np.ndarray], report: Report) -> Path:
    """Write one finished video atomically (temporary file, then rename)."""
    path = _part_path(out, item.name)
    meta = {"name": item.name, "split": item.split, "report": report.__dict__}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        f.flush()
        os.fsync(f.fileno())
    return path


def load_part(path: Path):

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        audio = z["audio"]
        record = VideoRecord(
            name=meta["name"],
            split=meta["split"],
            fps=float(z["fps"]),
            visual=z["visual"],
            face=z["face"],
            labels=z["labels"],
            audio=audio if len(audio) else None,
            audio_rate=float(z["audio_rate"]),
            audio_start=float(z["audio_start"]),
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


def _record_from_store(store, media, v: int):
    """Video ``v`` of an existing store as a record (views into the loaded store), to write it again."""

    f0, n = store.frame_offset[v], store.num_frames[v]
    a0, na = store.audio_offset[v], store.num_audio[v]
    return VideoRecord(
        name=store.names[v],
        split=str(store.splits[v]),
        fps=float(store.fps[v]),
        visual=store.visual[f0 : f0 + n],
        face=store.face[f0 : f0 + n],
        labels=store.labels[f0 : f0 + n],
        audio=store.audio[a0 : a0 + na] if na else None,
        audio_rate=float(store.audio_rate[v]),
        audio_start=float(store.audio_start[v]),
        jpeg=[bytes(media.jpeg(int(r))) for r in range(f0, f0 + n)] if media else None,
        wave=media.wave(v).copy() if media else None,
    )


# --------------------------------------------------------------------------------------------- the run
SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}


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
    stored in ``store.json``). ``stop_after`` stops after that many newly extracted videos without assembling (for
    tests of interrupted runs). ``media`` also keeps every face crop and audio track in the store for online
    training (``data.mode=online``)."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    out = Path(out)
    identity = backbones.identity()
    names = [it.name for it in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PrepareError(f"video names appear twice: {', '.join(dup[:10])}")
    staging = out.with_name(out.name + ".assembling")
    if (staging / "store.json").is_file():  # a run killed while moving the assembled store into place
        logger.info("finishing the interrupted assembly of %s", out)
        _swap_in(staging, out)
    existing = None
    if (out / "store.json").is_file():
        existing = FrameStore(out)
        _check_identity(out / "store.json", existing.meta.get("backbones", {}), identity, existing.classes, classes)
        _check_media(out / "store.json", bool(existing.meta.get("media", False)), media)
    id_path = out / PARTS / "backbones.json"
    has_parts = any(p for p in (out / PARTS).glob("*.npz") if not p.name.startswith("."))
    if id_path.is_file() and has_parts:
        recorded = json.loads(id_path.read_text())
        _check_identity(id_path, recorded["backbones"], identity, recorded["classes"], classes)
        _check_media(id_path, bool(recorded.get("media", False)), media)
    if identity["random_weights"]:
        _loud(
            "RANDOM BACKBONE WEIGHTS: features of randomly initialised CLIP/Wav2Vec2 (smoke runs only); the cache "
            "records it in store.json"
        )
    in_store = set(existing.names) if existing is not None else set()
    todo = [it for it in items if it.name not in in_store and not _part_path(out, it.name).is_file()]
    if todo:  # load the weights before writing anything: a missing checkpoint must not leave a cache behind
        backbones.visual(), backbones.audio()
        id_path.parent.mkdir(parents=True, exist_ok=True)
        id_path.write_text(json.dumps({"backbones": identity, "classes": list(classes), "media": media}, indent=2))
    skipped = len(items) - len(todo)
    if skipped:
        logger.info("%d of %d videos already extracted in %s: skipped", skipped, len(items), out)
    total_frames = sum(_frame_hint(it) for it in todo)
    bar = tqdm(total=len(todo), unit="video", disable=not progress or not todo, desc="extracting", dynamic_ncols=True)
    t0, done_frames = time.perf_counter(), [0]

    def tick(n: int) -> None:
        done_frames[0] += n
        bar.set_postfix_str(f"{done_frames[0] / max(time.perf_counter() - t0, 1e-9):.0f} frames/s", refresh=False)

    for count, item in enumerate(todo):
        if stop_after is not None and count >= stop_after:
            bar.close()
            return {"stopped_after": count}
        bar.set_description_str(f"extracting {item.name}"[:40])
        arrays, report = extract_item(item, backbones.visual(), backbones.audio(), workers, tick, media)
        save_part(out, item, arrays, report)
        for problem in report.problems:
            tqdm.write(f"{item.name}: {problem}", file=sys.stderr)
        bar.update(1)
    bar.close()
    if todo:
        logger.info("extracted %d videos (%d frames) in %.0f s", len(todo), total_frames, time.perf_counter() - t0)

    # Assemble: videos already in the store, plus every finished part, in (split, name) order, streamed one video at
    # a time into the store writer (a full Aff-Wild2 store is larger than memory).
    reports = dict(existing.meta.get("report", {}).get("videos", {})) if existing is not None else {}
    sources: list[tuple[str, str, Any]] = []
    if existing is not None:
        sources += [(str(existing.splits[v]), name, v) for v, name in enumerate(existing.names)]
    part_names = set()
    for path in sorted((out / PARTS).glob("*.npz")):
        if path.name.startswith("."):
            continue
        with np.load(path, allow_pickle=False) as z:
            part = json.loads(str(z["meta"]))
        if part["name"] in in_store:
            continue
        sources.append((part["split"], part["name"], path))
        reports[part["name"]] = part["report"]
        part_names.add(part["name"])
    sources.sort(key=lambda s: (SPLIT_ORDER.get(s[0], 3), s[1]))
    if existing is not None and not part_names and (out / "text.safetensors").is_file():
        logger.info("%s is up to date", out)
        summary = existing.meta.get("report", {}).get("summary") or {}
    else:
        stats = _Summary(reports)
        media_of_store = _store_media(existing)

        def records():
            for _, _, where in sources:
                if isinstance(where, Path):
                    record = load_part(where)[0]
                else:
                    record = _record_from_store(existing, media_of_store, where)
                stats.add(record)
                yield record

        def meta() -> dict[str, Any]:
            return {
                "source": source or {},
                "classes": list(classes),
                "prompt_template": prompt_template,
                "backbones": identity,
                "media": media,
                "report": {"summary": stats.result(), "videos": reports},
            }

        text = backbones.text(classes, prompt_template)
        write_store(staging, records(), meta)
        save_file(
            {"text": text.contiguous()},
            str(staging / "text.safetensors"),
            metadata={"template": prompt_template, "classes": json.dumps(list(classes))},
        )
        _swap_in(staging, out)
        summary = stats.result()
    _print_summary(out, summary)
    return summary


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
    if item.labels is not None:
        return len(item.labels)
    return len(item.crops) if item.crops else 0


def _check_identity(where: Path, recorded: dict, identity: dict, recorded_classes, classes) -> None:
    keys = ("clip", "clip_pretrained", "wav2vec2")
    if any(recorded.get(k) != identity[k] for k in keys):
        was = ", ".join(f"{k}={recorded.get(k)}" for k in keys)
        now = ", ".join(f"{k}={identity[k]}" for k in keys)
        raise PrepareError(
            f"{where} was prepared with other backbones ({was}); this run asks for {now}. Use another --out, or the "
            f"same --clip/--wav2vec2 to continue it"
        )
    if list(recorded_classes) != list(classes):
        raise PrepareError(f"{where} was prepared with classes {list(recorded_classes)}, not {list(classes)}")


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
        if record.audio is None:
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


def _print_summary(out: Path, s: dict[str, Any]) -> None:
    videos = ", ".join(f"{k} {v}" for k, v in s["videos"].items() if v)
    lines = [
        f"feature store: {out}",
        f"  videos: {videos}; frames {s['frames']} (labelled {s['labelled_frames']}, with a face {s['face_frames']})",
    ]
    for key, what in (
        ("no_audio", "without audio (masked)"),
        ("unreadable_video", "with an unreadable video"),
        ("corrupt_crops", "with corrupt face crops (masked)"),
        ("frame_count_mismatch", "whose annotation and video frame counts differ (aligned by index)"),
    ):
        if s[key]:
            names = ", ".join(s[key][:8]) + (" ..." if len(s[key]) > 8 else "")
            lines.append(f"  {len(s[key])} videos {what}: {names}")
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
    prompt_template: str | None = None
    """text prompt of each class (default 'A face expressing {emotion}'; or --loss.prompt_template)"""
    media: bool = False
    """also keep every face crop (JPEG) and audio track (16 kHz) in the store, for online training (--data.mode
    online: frozen backbones in the loop, frame augmentation, per-window audio encoding)"""
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
    for e in layout.entries:  # read every annotation first: a malformed line stops before any extraction
        labels = read_annotation(e.annotation) if e.annotation is not None else None
        crops = None
        if e.crop_dir is not None:
            crops = {int(i): e.crop_dir / f"{i + 1:05d}.jpg" for i in crop_frames(e.crop_dir)}
        items.append(
            Item(e.name, e.split, labels, crops if crops is not None else {}, e.video, None, str(e.annotation))
        )
    source = {
        "layout": "affwild2",
        "root": str(Path(args.root).resolve()),
        "annotation_dir": layout.annotation_dir.name,
        "crop_dirs": [c.name for c in layout.crop_roots],
        "test_names": str(args.test_names) if args.test_names else None,
    }
    return items, source, list(ABAW_CLASSES)


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
    args.clip = args.clip or DEFAULT_CLIP
    args.wav2vec2 = args.wav2vec2 or DEFAULT_WAV2VEC2
    args.prompt_template = args.prompt_template or LossConfig.prompt_template
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        if isinstance(args, AffWild2Options):
            items, source, classes = items_from_affwild2(args)
        else:
            items, source, classes = items_from_folder(args)
        backbones = Backbones(
            args.clip, args.wav2vec2, args.device, args.batch_size, args.chunk_seconds, args.context_seconds
        )
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
    except (AnnotationError, LayoutError, BackboneError, PrepareError, StoreError, OSError) as e:
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
