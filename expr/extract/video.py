"""One video's features: decoded once (face crops or video frames, and the audio track) for every encoder."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from expr.data.item import Item
from expr.data.media import MediaError, decode_audio, iter_frames, probe
from expr.data.online import MediaStore
from expr.data.store import DEFAULT_AUDIO, DEFAULT_VISUAL, MTL_LABELS, TASK_LABELS
from expr.extract.common import PrepareError, Report


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
    info, fps, T = _probe(item, report)
    labels, task_labels = _align_labels(item, info, T, report)
    frames = _Frames(T, visual, progress, media)
    if item.crops is not None:
        _read_crops(item, T, frames, visual, workers, report)
    elif info is not None:
        _decode_frames(item, T, frames, media, report)
    if not frames.face.any() and visual:
        report.problems.append("no face frames: the visual stream is masked")
    feats, audio_start, wave_kept = _encode_audio(item, info, audio, media, report)
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


def _probe(item: Item, report: Report):
    """(the video's MediaInfo or None when there is no readable video, its frame rate, its frame count T)."""
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
    return info, fps, T


def _align_labels(item: Item, info, T: int, report: Report) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(expression labels [T], every other task's labels [T, width]), each aligned to the video's frames by index."""
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
            task_labels[task] = _by_frame(values, T, width, dtype, missing)
    if item.mtl is not None:  # the multi-task labels, by frame index too
        for task, (width, dtype, missing) in MTL_LABELS.items():
            task_labels[f"mtl_{task}"] = _by_frame(item.mtl[task], T, width, dtype, missing)
        if len(item.mtl["expr"]) > T:  # its array ends at its last listed frame
            report.problems.append(f"multi-task frames past the video's {T} frames ignored")
    return labels, task_labels


def _by_frame(values: np.ndarray, T: int, width: int, dtype, missing) -> np.ndarray:
    """``values`` of frames 0, 1, ... as [T] (``width`` 1) or [T, width]: cut at T, unannotated past their end."""
    out = np.full((T, width) if width > 1 else T, missing, dtype)
    out[: min(T, len(values))] = values[:T]
    return out


def _read_crops(item: Item, T: int, frames: _Frames, visual: dict[str, Any], workers: int, report: Report) -> None:
    """The item's face crop images (JPEG files, read by ``workers`` threads) into ``frames``; unreadable ones masked."""
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


def _decode_frames(item: Item, T: int, frames: _Frames, media: bool, report: Report) -> None:
    """The video's own frames into ``frames``; those after a decoding error are masked."""
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


def _encode_audio(item: Item, info, audio: dict[str, Any], media: bool, report: Report):
    """(each audio set's features, the audio's start in seconds, the 16 kHz wave kept for ``media``); the audio
    stream is masked (empty features) when the video has none or it does not decode."""
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
    return feats, audio_start, wave_kept


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


def _frame_hint(item: Item) -> int:
    """The frame count the annotations (of any task) or crops suggest."""
    annotated = [len(a) for a in (item.labels, item.va, item.au) if a is not None]
    if annotated:
        return max(annotated)
    return len(item.crops) if item.crops else 0
