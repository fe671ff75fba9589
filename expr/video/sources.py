"""What ``expr predict --stream`` reads: a video file at its own frame rate (or faster), a camera, or a network stream
(RTSP, RTMP, HTTP, UDP, SRT, through PyAV), as events in the order they come: each frame with its time, and the audio
decoded, mixed to mono and resampled to 16 kHz as :func:`expr.data.media.decode_audio` does for a whole file."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expr.data.media import AUDIO_RATE, MediaError, upright, video_stream

logger = logging.getLogger("expr.video.predict")

NETWORK = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://", "srt://")


@dataclass
class Frame:
    """A decoded frame: its index, its time in seconds from the first frame, [H, W, 3] uint8 RGB, and the wall-clock
    time (``time.perf_counter``) it was ready to read (a file played at its own rate: when it was due, so a reader
    that falls behind sees its lag as latency)."""

    index: int
    time: float
    rgb: np.ndarray
    ready: float


@dataclass
class Audio:
    """Decoded audio: 16 kHz mono float32 samples; ``start``: the audio's start in seconds relative to the first
    frame (of the pass, for a replay), on its first piece only."""

    wave: np.ndarray
    start: float | None = None


def is_camera(source: str) -> bool:
    return source.isdigit() or source.startswith("/dev/video")


def open_container(source: str):
    """A PyAV container of a camera (``/dev/videoN`` or an index), a network address or a file; a
    :class:`MediaError` naming it when it cannot be opened."""
    import av

    options, fmt = {}, None
    if is_camera(source):
        if sys.platform.startswith("linux"):
            fmt, source = "v4l2", source if source.startswith("/dev/") else f"/dev/video{source}"
        elif sys.platform == "darwin":
            fmt, source = "avfoundation", source.removeprefix("/dev/video")
        else:
            raise MediaError(f"{source}: cameras are read through v4l2 (Linux) or avfoundation (macOS); on this system "
                             f"stream the camera over RTSP or give a file")  # fmt: skip
    elif source.startswith(("rtsp://", "rtsps://")):
        options = {"rtsp_transport": "tcp"}
    elif not source.startswith(NETWORK) and not Path(source).is_file():
        raise MediaError(f"{source}: no such file, camera (/dev/videoN or an index) or stream address "
                         f"({', '.join(NETWORK)})")  # fmt: skip
    try:
        return av.open(source, format=fmt, options=options, timeout=(10.0, 10.0))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"{source}: cannot open ({e})") from None


class Source:
    """The frames and audio of ``source`` in the order they come (:meth:`events`). A file is played at ``speed``
    times its own frame rate (0: as fast as it decodes), ``repeat`` times in a row (a replay: times and audio go on
    from where the previous pass ended); a camera or a network stream is read as it comes."""

    def __init__(self, source: str, speed: float = 1.0, repeat: int = 1):
        self.source, self.speed, self.repeat = source, speed, repeat
        self.live = is_camera(source) or source.startswith(NETWORK)
        with open_container(source) as container:
            stream = video_stream(container, Path(source))
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.fps = float(rate) if rate else 30.0
            self.has_audio = bool(container.streams.audio)
        self.name = Path(source).stem if not self.live else "stream"
        self.warnings: list[str] = []
        self.failed = False  # the input ended with an error (a warning says which)

    def events(self) -> Iterator[Frame | Audio]:
        index, offset, clock, sent, audio_start = 0, 0.0, None, 0, None
        for _ in range(self.repeat):
            end = offset
            for event in self._pass(offset, index):
                if isinstance(event, Frame):
                    if clock is None:
                        clock = time.perf_counter() - event.time / self.speed if self.speed else None
                    event.ready = time.perf_counter()
                    if clock is not None and not self.live:  # due at its time: a late reader's lag counts
                        event.ready = clock + event.time / self.speed
                        time.sleep(max(0.0, event.ready - time.perf_counter()))
                    index, end = event.index + 1, event.time + 1.0 / self.fps
                elif audio_start is None:
                    audio_start = event.start
                elif event.start is not None:  # a replay's next pass: its audio goes on where its frames begin
                    need = round((offset + event.start - audio_start) * AUDIO_RATE) - sent
                    wave = event.wave[-need:] if need < 0 else np.concatenate([np.zeros(need, np.float32), event.wave])
                    event = Audio(wave)
                if isinstance(event, Audio):
                    sent += len(event.wave)
                yield event
            offset = end
            if self.failed:
                return

    def _pass(self, offset: float, index: int) -> Iterator[Frame | Audio]:
        """One pass over the source: its frames numbered from ``index`` at times from ``offset``, its audio cut or
        padded to start where the previous pass's frames ended."""
        import av

        with open_container(self.source) as container:
            video = video_stream(container, Path(self.source))
            video.thread_type = "SLICE" if self.live else "AUTO"  # frame threads hold frames back: not live
            audio = container.streams.audio[0] if container.streams.audio else None
            start = float(video.start_time * video.time_base) if video.start_time is not None else None
            resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE) if audio else None
            first_audio, samples = None, 0
            for packet in self._packets(container.demux(*(s for s in (video, audio) if s is not None))):
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as e:
                    self._warn(f"{self.source}: a packet could not be decoded ({e}); going on")
                    continue
                for frame in decoded:
                    if packet.stream is video:
                        if start is None:  # a live source: time from its first frame
                            start = float(frame.time) if frame.time is not None else 0.0
                        t = float(frame.time) - start if frame.time is not None else (index / self.fps)
                        rgb = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
                        yield Frame(index, offset + t, rgb, 0.0)
                        index += 1
                        continue
                    if first_audio is None and frame.time is not None:
                        first_audio = float(frame.time)
                    for out in resampler.resample(frame):
                        wave = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                        yield Audio(wave, None if samples else (first_audio or 0.0) - (start or 0.0))
                        samples += len(wave)
            for out in resampler.resample(None) if resampler else []:
                yield Audio(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))

    def _packets(self, demux) -> Iterator:
        """``demux``'s packets until it ends or fails: a network stream that drops, a source silent for 10 s, a
        truncated file end the input (a warning names the source) and the frames read are decided."""
        import av

        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except (av.error.FFmpegError, OSError) as e:
                self.failed = True
                self._warn(f"{self.source}: the input ended with an error ({e}); the frames read are predicted")
                return
            yield packet

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            logger.warning("warning: %s", message)
