"""The annotated video of ``expr predict --video``: every frame of the source with each person's face box, current
label and a bar of the class probabilities, the source's audio kept (AAC), written as H.264 MP4 (yuv420p, which
common players decode; the index at the front, so a browser starts playing at once). Frames keep their own
timestamps, so a variable frame rate or a stretch the decoder skipped stays in sync with the sound.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from fractions import Fraction
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from expr.atomic import atomic_path
from expr.data.media import timed_frames

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip
"""RGB of matplotlib's tab10: the classes' colours, as in the timeline plots."""
TIME_BASE = Fraction(1, 90_000)


def draw(frame: np.ndarray, people: list[dict[str, Any]], footage, t: int, classes: list[str]) -> np.ndarray:
    """Frame ``t`` with each person's box (coloured by its label), ``label p`` above it and the stacked class
    probabilities as a bar below; a person without a face in this frame is listed at the top left instead."""
    import cv2

    img = np.ascontiguousarray(frame)
    H = img.shape[0]
    scale = max(0.35, H / 720)
    thick = max(1, round(2 * scale))
    line = 0
    for person, spec in zip(footage.people, people, strict=True):
        i = t - person.first
        if not 0 <= i < len(person.faces):
            continue
        p = spec["probs"][i]
        label = int(p.argmax())
        text = f"{classes[label]} {p[label]:.2f}" + (f" (face {person.track})" if len(people) > 1 else "")
        color = COLORS[label % len(COLORS)]
        face = person.faces[i]
        if face is None:
            line += 1
            origin = (4, round(line * 24 * scale) + 4)
            caption(img, f"no face: {text}", origin, scale, color, thick)
            continue
        x, y, w, h = (round(float(v)) for v in face.box)
        cv2.rectangle(img, (x, y), (x + w, y + h), color, thick)
        caption(img, text, (x, max(y - 4, 10)), scale, color, thick)
        bar_y, bar_h, left = y + h + 3, max(4, round(8 * scale)), float(x)
        for c, share in enumerate(p):
            right = left + share * w
            cv2.rectangle(img, (round(left), bar_y), (round(right), bar_y + bar_h), COLORS[c % len(COLORS)], -1)
            left = right
    return img


def caption(img: np.ndarray, text: str, origin: tuple[int, int], scale: float, color, thick: int) -> None:
    """``text`` in ``color`` with a dark outline (legible on any background)."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, text, origin, font, 0.6 * scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, origin, font, 0.6 * scale, color, thick, cv2.LINE_AA)


def write_annotated_video(video: Path, path: Path, footage, people: list[dict[str, Any]], classes: list[str],
                          progress: bool = True) -> Path:  # fmt: skip
    """Write ``path`` (MP4) from ``video``'s frames, each matched by its time to the frame of ``footage`` (a stretch
    the decoder skipped stays out), and each person's probabilities (``people[k]['probs']``, [frames of its span,
    C]). Sound and pictures are interleaved as they go."""
    import av
    from tqdm.auto import tqdm

    with closing(timed_frames(video, [])) as frames:
        first = next(frames, None)
        if first is None:
            raise ValueError(f"{video}: no frame could be decoded")
        H, W = first[1].shape[:2]
        options = {"movflags": "+faststart"}
        with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4", options=options) as out:
            stream = out.add_stream("libx264", rate=Fraction(footage.fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = W + W % 2, H + H % 2, "yuv420p"  # yuv420p: even sides
            stream.time_base = stream.codec_context.time_base = TIME_BASE  # the frames' own times, not 1 / rate
            stream.options = {"crf": "20"}
            sound = audio_stream(out, video) if footage.audio is not None else None
            with closing(audio_packets(sound, video) if sound is not None else (x for x in ())) as audio:
                upcoming = next(audio, None)
                last_pts, bar = -1, tqdm(total=len(footage.times), unit="frame", desc="video", disable=not progress)
                for time_s, frame in chain([first], frames):
                    t = int(np.searchsorted(footage.times, time_s - 1e-6))
                    if t >= len(footage.times) or abs(footage.times[t] - time_s) > 1e-6:
                        continue  # not a frame the prediction saw
                    while upcoming is not None and upcoming[0] <= time_s:  # the sound up to this picture
                        out.mux(upcoming[1])
                        upcoming = next(audio, None)
                    img = np.pad(draw(frame, people, footage, t, classes), ((0, H % 2), (0, W % 2), (0, 0)), "edge")
                    out_frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                    last_pts = max(round(time_s / TIME_BASE), last_pts + 1)  # strictly increasing, whatever the file
                    out_frame.pts, out_frame.time_base = last_pts, TIME_BASE
                    for packet in stream.encode(out_frame):
                        out.mux(packet)
                    bar.update()
                bar.close()
                for packet in stream.encode():
                    out.mux(packet)
                while upcoming is not None:
                    out.mux(upcoming[1])
                    upcoming = next(audio, None)
    return path


def audio_stream(out, video: Path):
    """An AAC stream in ``out`` for the first audio track of ``video`` (its rate, mono or stereo)."""
    import av

    with av.open(str(video)) as src:
        source = src.streams.audio[0]
        stream = out.add_stream("aac", rate=source.rate or 48_000)
        stream.layout = "stereo" if source.layout.nb_channels > 1 else "mono"
    return stream


def audio_packets(stream, video: Path) -> Iterator[tuple[float, Any]]:
    """(time in seconds, packet) of the first audio track of ``video`` re-encoded for ``stream``, on the video's clock
    (time 0: the first video frame; sound before it is dropped); a stretch that cannot be decoded ends the sound
    there."""
    import av

    rate = stream.rate
    resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)
    with av.open(str(video)) as src:
        v = src.streams.video[0]
        zero = float(v.start_time * v.time_base) if v.start_time is not None else 0.0
        pts = None

        def encode(chunks):
            nonlocal pts
            for chunk in chunks:
                if pts >= 0:
                    chunk.pts, chunk.time_base = pts, Fraction(1, rate)
                    for packet in stream.encode(chunk):
                        yield pts / rate, packet
                pts += chunk.samples

        try:
            for frame in src.decode(src.streams.audio[0]):
                if pts is None:
                    pts = round(((frame.time if frame.time is not None else zero) - zero) * rate)
                yield from encode(resampler.resample(frame))
        except av.error.FFmpegError:
            pass  # the sound so far stands: the pictures are the point
        if pts is not None:
            yield from encode(resampler.resample(None))
    for packet in stream.encode():
        yield float("inf"), packet
