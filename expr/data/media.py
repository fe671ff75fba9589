"""Reading raw media with PyAV (FFmpeg): a video's real frame rate, time base and frame count, its audio track
decoded, mixed to mono and resampled, and its frames as RGB arrays. Nothing here assumes 30 fps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AUDIO_RATE = 16_000  # Wav2Vec2's sampling rate


class MediaError(RuntimeError):
    """A video or audio track that cannot be read; the message names the file."""


@dataclass
class VideoInfo:
    path: Path
    fps: float  # the stream's average frame rate
    num_frames: int  # counted from the demuxed packets, not taken from the (often missing) header field
    time_base: float
    start: float  # presentation time of the first frame, seconds
    has_audio: bool


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"{path}: cannot open video ({e})") from None


def video_stream(container, path: Path):
    """The first video stream that is a video (not an audio file's cover picture); none: a :class:`MediaError`
    saying what the file is."""
    import av

    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if videos:
        return videos[0]
    if container.streams.audio:
        art = " and a cover picture" if container.streams.video else ""
        raise MediaError(f"{path}: an audio file (sound{art}, no video): expr needs video of faces")
    raise MediaError(f"{path}: no video stream")


def probe(path: str | Path, tolerant: bool = False) -> VideoInfo:
    """Frame rate, frame count, time base and start of the first video stream of ``path``; ``tolerant``: a container
    that breaks off counts the packets before the break instead of raising."""
    import av

    path = Path(path)
    with _open(path) as container:
        stream = video_stream(container, path)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise MediaError(f"{path}: the video stream has no frame rate")
        time_base = float(stream.time_base) if stream.time_base else 1.0 / float(rate)
        try:
            num_frames, first_pts = 0, None
            for packet in container.demux(stream):
                if packet.size:
                    num_frames += 1
                    if packet.pts is not None and (first_pts is None or packet.pts < first_pts):
                        first_pts = packet.pts
        except av.error.FFmpegError as e:
            if not tolerant or not num_frames:
                raise MediaError(f"{path}: cannot read video packets ({e})") from None
        if stream.start_time is not None:
            start = float(stream.start_time) * time_base
        else:
            start = (first_pts or 0) * time_base
        return VideoInfo(path, float(rate), num_frames, time_base, start, bool(container.streams.audio))


def decode_audio(
    path: str | Path, rate: int = AUDIO_RATE, video_start: float | None = None
) -> tuple[np.ndarray, float]:
    """The first audio track of ``path`` as mono float32 at ``rate`` Hz, and its start in seconds relative to the
    first video frame (``video_start``; probed when not given). Raises :class:`MediaError` when there is no audio
    track or it cannot be decoded."""
    import av

    path = Path(path)
    if video_start is None:
        video_start = probe(path).start
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio track")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[np.ndarray] = []
        first_time = None
        try:
            for frame in container.decode(stream):
                if first_time is None and frame.time is not None:
                    first_time = float(frame.time)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as e:
            raise MediaError(f"{path}: cannot decode the audio track ({e})") from None
    if not chunks:
        raise MediaError(f"{path}: the audio track is empty")
    wave = np.concatenate(chunks).astype(np.float32, copy=False)
    return wave, (first_time or 0.0) - video_start


def upright(rgb: np.ndarray, rotation: float) -> np.ndarray:
    """A decoded picture as it is meant to be shown: phones store portrait video sideways with a display matrix that
    says to rotate it (``rotation``: degrees counter-clockwise, as FFmpeg's players apply it)."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def iter_frames(path: str | Path) -> Iterator[np.ndarray]:
    """The video's frames in order as [H, W, 3] uint8 RGB arrays; a stretch that cannot be decoded raises
    :class:`MediaError`."""
    for _, rgb in timed_frames(path):
        yield rgb


def timed_frames(path: str | Path, skipped: list[float] | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """(presentation time in seconds, [H, W, 3] uint8 RGB) of each frame in order; the time is the frame's own
    timestamp (variable frame rates included), counted at the average rate where a frame has none. With a list
    ``skipped``, a packet that cannot be decoded is left out and its time appended there (the frames around it still
    come); without, it raises :class:`MediaError`."""
    import av

    path = Path(path)
    with _open(path) as container:
        stream = video_stream(container, path)
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 30)
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        index, packets = 0, container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as e:  # the container itself breaks off: what came so far stands
                if skipped is None:
                    raise MediaError(f"{path}: cannot read video packets ({e})") from None
                skipped.append(index / rate)
                return
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                if skipped is None:
                    raise MediaError(f"{path}: cannot decode frames ({e})") from None
                skipped.append(float(packet.pts * packet.time_base) - start if packet.pts is not None else index / rate)
                continue
            for frame in frames:
                time = float(frame.time) - start if frame.time is not None else index / rate
                index += 1
                yield time, upright(frame.to_ndarray(format="rgb24"), frame.rotation)
