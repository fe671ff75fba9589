"""``expr predict SOURCE --stream``: a frame's label as soon as it is decided, by the same rules as the offline
command, stage by stage over bounded buffers.

Each frame goes through the offline command's steps as its inputs arrive: faces detected (:mod:`expr.video.detection`,
one detection frame at a time) as the largest face of each frame; crops encoded, the frames between encoded ones
filled in (:mod:`expr.data.subset`); the audio encoded in short chunks (:mod:`expr.features.audio_stream`); a window
through the head as soon as its last frame and its audio are final (:func:`expr.data.windows.window_inputs`); the
frames between two window targets interpolated (:func:`expr.scoring.decision.between_targets`); a frame without a
face given the outputs of the nearest frame with one; calibration and smoothing (the run's :class:`Decision`).

The latency rule: a frame waits for the window whose target follows it (``data.eval_stride`` frames at most) to be
complete (``data.window // 2`` frames past its target with ``data.label_frame`` center) and for the audio of that
window's end (one ``predict.audio_chunk`` and one ``predict.audio_context``); a frame without a face waits for the
nearest face frame, at most ``data.window`` frames (then it takes the previous face frame's outputs, or its own before
any face: a place a stream can differ from the offline CSV, where a face reappears after more than
``2 x data.window`` frames without one or first appears more than ``data.window`` frames in); audio that falls more
than :data:`AUDIO_WAIT` seconds behind its frames is not waited for (the other such place); smoothing adds half its
width. At the end of the input every frame still held is decided as the offline command decides the video's last
frames.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from expr.data.store.span import audio_overlap
from expr.data.subset import fill_between
from expr.data.targets import label_offset
from expr.data.windows import window_inputs
from expr.features.audio_stream import AudioStream
from expr.scoring.decision import between_targets, smooth
from expr.scoring.outputs import head_scores
from expr.tasks import AU_NAMES, OTHER_TASKS
from expr.video.detection import FrameFaces
from expr.video.footage import PredictError
from expr.video.sources import Audio, Frame

STREAM = {"predict.audio_chunk": 0.4, "predict.audio_context": 0.2}
"""What ``--stream`` sets besides the run's config (an explicit option wins): short audio chunks, so a frame waits at
most 0.6 s for its audio (BENCHMARKS.md section 6 measures the latency)."""


AUDIO_WAIT = 2.0
"""Seconds of frames past a window's end after which the window stops waiting for its audio (a track that ends early,
a network stream whose audio stalls): it sees the audio that has come."""


class Held:
    """The frames and audio features a stream holds, as the one video of a store (:func:`window_inputs` reads it):
    ``base`` / ``audio_base``: the first frame / audio frame held."""

    def __init__(self, fps: float, visual_dim: int, audio_dim: int, audio_rate: float):
        self.fps, self.audio_dim, self.audio_rate = fps, audio_dim, audio_rate
        self.visual, self.face = np.zeros((0, visual_dim), np.float16), np.zeros(0, bool)
        self.audio = np.zeros((0, audio_dim), np.float16)
        self.base = self.audio_base = 0
        self.frames = 0  # frames with final features (the video's length, once closed)
        self.audio_frames = 0  # audio frames encoded
        self.audio_start: float | None = None  # the audio's start relative to frame 0 (s), once known

    @property
    def num_frames(self):
        return np.array([self.frames])

    @property
    def frame_offset(self):
        return np.array([-self.base])

    @property
    def num_audio(self):
        return np.array([self.audio_frames])

    @property
    def audio_offset(self):
        return np.array([-self.audio_base])

    def audio_span(self, video, start, length):
        return audio_overlap(start, length, self.fps, self.audio_start or 0.0, self.audio_rate)

    def add_frames(self, visual: np.ndarray, face: np.ndarray) -> None:
        self.visual = np.concatenate([self.visual, visual])
        self.face = np.concatenate([self.face, face])
        self.frames += len(face)

    def add_audio(self, features: np.ndarray) -> None:
        self.audio = np.concatenate([self.audio, features])
        self.audio_frames += len(features)

    def drop_before(self, frame: int, audio_frame: int) -> None:
        """Forget the frames before ``frame`` and the audio frames before ``audio_frame``."""
        if frame > self.base:
            cut = min(frame, self.frames) - self.base
            self.visual, self.face, self.base = self.visual[cut:].copy(), self.face[cut:].copy(), self.base + cut
        if audio_frame > self.audio_base:
            cut = min(audio_frame, self.audio_frames) - self.audio_base
            self.audio, self.audio_base = self.audio[cut:].copy(), self.audio_base + cut


class Latency:
    """Seconds from a frame's arrival to its line: a histogram of 5 ms bins (flat memory however long it runs)."""

    BIN, BINS = 0.005, 12_000

    def __init__(self):
        self.counts = np.zeros(self.BINS, np.int64)
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.counts[min(self.BINS - 1, int(seconds / self.BIN))] += 1
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float:
        """The upper edge of the bin holding quantile ``q`` (NaN before any frame)."""
        total = self.counts.sum()
        if not total:
            return float("nan")
        return float(np.searchsorted(np.cumsum(self.counts), q * total) + 1) * self.BIN


class StreamPredictor:
    """Feed a source's events (:meth:`push`, then :meth:`close`); each returns the lines of the frames now decided,
    in order: dicts of frame, time, track, face, box, and label, label_name, probabilities (a run trained on
    expressions), valence and arousal, AU probabilities (a run trained on them)."""

    def __init__(self, run, backbones, detector, fps: float, has_audio: bool, device: str = "cpu"):
        cfg = run.cfg
        if run.is_ensemble or cfg.data.mode == "online" or cfg.data.label_frame == "majority":
            raise PredictError("--stream predicts with one run of cached features whose windows label one frame "
                               "(data.label_frame center or last); predict ensembles, online-mode runs and majority "
                               "windows from files without --stream")  # fmt: skip
        if has_audio and not cfg.predict.audio_chunk:
            raise PredictError("--stream encodes the audio in short chunks: set predict.audio_chunk above 0 (--stream "
                               "sets 0.4)")  # fmt: skip
        self.run, self.cfg, self.backbones, self.device, self.fps = run, cfg, backbones, device, fps
        p = cfg.predict
        self.detect = FrameFaces(detector, "largest", 1, p.detect_every, p.detect_scale)
        self.sets = list(backbones.visual_sets)
        audio = backbones.audio(next(iter(backbones.audio_sets)))
        self.audio = AudioStream(audio, p.audio_chunk, p.audio_context) if has_audio else None
        dim = sum(backbones.visual(n).dim for n in self.sets)
        if dim != cfg.model.visual_dim:
            raise PredictError(f"the image features are {dim}-d but the head expects {cfg.model.visual_dim}-d: use "
                               f"the encoders the model was trained with")  # fmt: skip
        self.held = Held(fps, dim, cfg.model.audio_dim, audio.rate)
        self.step = fps / p.fps if p.fps and p.fps < fps else 1.0  # frames between encoded frames
        self.grid = 0  # the next encoded frame is round(grid * step)
        self.segment: list[tuple[int, object]] = []  # (frame, face) from the last encoded frame (it included) on
        self.keys: list[int] = []  # the positions in ``segment`` of the frames to encode next
        self.segment_features: np.ndarray | None = None  # the last encoded frame's features per set
        self.window, self.stride = cfg.data.window, cfg.data.resolved_eval_stride()
        self.offset = label_offset(self.window, cfg.data.label_frame)
        self.label = 0  # the next window target
        self.targets: list[tuple[int, np.ndarray]] = []  # the last window target and its outputs
        self.names = ("expr", *(t for t in OTHER_TASKS if t in cfg.train.tasks))
        self.widths: list[int] = []
        self.frames: dict[int, dict] = {}  # per frame held: time, ready, face, filled face flag
        self.placed: list[tuple[int, np.ndarray]] = []  # frames with outputs awaiting the face rule
        self.last_face: tuple[int, np.ndarray] | None = None
        self.rows: dict[int, np.ndarray] = {}  # frames with their final (face-filled) outputs, for smoothing
        self.decided = 0  # frames through the face rule
        self.emitted = 0
        self.closed = False
        self.latency = Latency()

    # ---- input
    def push(self, event: Frame | Audio) -> list[dict]:
        if isinstance(event, Audio):
            if self.audio is None:
                return []
            if self.held.audio_start is None:
                self.held.audio_start = event.start or 0.0
            self.held.add_audio(self.audio.push(event.wave))
            return self._advance()
        self.frames[event.index] = {"time": event.time, "ready": event.ready, "face": None}
        for i, found in self.detect.push(event.rgb):
            self._faced(i, found[0] if found else None)
        return self._advance()

    def close(self) -> list[dict]:
        """The frames still held, decided as the end of a video is."""
        for i, found in self.detect.close():
            self._faced(i, found[0] if found else None)
        last = len(self.segment) - 1
        if last > 0 and (not self.keys or self.keys[-1] != last):  # the last frame is encoded (subset.encoded_frames)
            self.keys.append(last)
        if self.keys:
            self._encode_segment()
        if self.audio is not None:
            self.held.add_audio(self.audio.close())
        self.closed = True
        return self._advance()

    def held_sizes(self) -> dict[str, int]:
        """What the stream holds (frames, audio frames, samples): bounded however long it runs."""
        return {"frames": len(self.held.face), "audio_frames": len(self.held.audio), "frame_info": len(self.frames),
                "samples": self.audio.held if self.audio else 0, "rows": len(self.rows)}  # fmt: skip

    # ---- faces and image features
    def _faced(self, i: int, face) -> None:
        self.frames[i]["face"] = face
        self.segment.append((i, face))
        if i == round(self.grid * self.step) or self.step == 1.0:
            self.grid += 1
            self.keys.append(len(self.segment) - 1)
            if len(self.keys) >= self.cfg.predict.stream_batch:
                self._encode_segment()

    def _encode_segment(self) -> None:
        """Encode the crops of the frames to encode held (``keys``, one batch per image encoder); every frame up to
        the last of them gets its final features, those between encoded frames filled in (:mod:`expr.data.subset`)."""
        from PIL import Image

        keys, faces = self.keys, [self.segment[k][1] for k in self.keys]
        found = [k for k, f in enumerate(faces) if f is not None]
        feats = []
        for name in self.sets:
            enc = self.backbones.visual(name)
            rows = np.zeros((len(keys), enc.dim), np.float16)
            if found:
                rows[found] = enc.encode([Image.fromarray(faces[k].image) for k in found])
            feats.append(rows)
        if self.segment_features is None:  # the first frame: no frame before it
            i, face = self.segment[0]
            self.held.add_frames(np.concatenate([f[:1] for f in feats], 1), np.array([face is not None]))
            self.frames[i]["filled"] = face is not None
        else:
            feats = [np.concatenate([p, f]) for p, f in zip(self.segment_features, feats, strict=True)]
            keys = [0, *keys]
        for n, (a, b) in enumerate(zip(keys[:-1], keys[1:], strict=True)):
            segment = self.segment[a : b + 1]
            flags, idx = np.array([f is not None for _, f in segment]), np.array([0, b - a])
            parts, filled = [], flags
            for rows in feats:
                x = np.zeros((len(flags), rows.shape[1]), np.float16)
                x[0], x[-1] = rows[n], rows[n + 1]
                x, filled = fill_between(x, flags, idx)
                parts.append(x[1:])
            self.held.add_frames(np.concatenate(parts, 1), filled[1:])
            for (j, _), flag in zip(segment[1:], filled[1:], strict=True):
                self.frames[j]["filled"] = bool(flag)
        self.segment_features = [f[-1:] for f in feats]
        self.segment, self.keys = self.segment[keys[-1] :], []

    # ---- windows, targets, faces, decision
    def _advance(self) -> list[dict]:
        self._windows()
        return self._emit()

    def _ready(self, label: int) -> bool:
        h = self.held
        if self.closed:
            return label < h.frames
        start = label - self.offset
        if start + self.window > h.frames:
            return False
        if self.audio is None or (h.frames - start - self.window) / self.fps > AUDIO_WAIT:
            return True  # no audio, or audio too far behind its frames to wait for
        if h.audio_start is None:
            return False
        a0, count = h.audio_span(None, np.array([start]), self.window)
        return h.audio_frames >= int(a0[0] + count[0])

    def _windows(self) -> None:
        labels = []
        while self._ready(self.label):
            labels.append(self.label)
            self.label += self.stride
        if self.closed and self.held.frames and (not labels or labels[-1] != self.held.frames - 1):
            last = self.held.frames - 1
            if not self.targets or self.targets[-1][0] != last:
                labels.append(last)
        if not labels and not (self.closed and self.targets):
            return
        if not labels:  # closed, the last frame a target already
            last, row = self.targets[-1]
            self._place(last, between_targets(np.array([last]), row[None], np.array([last]))[0])
            return
        starts = np.array(labels) - self.offset
        inputs, _, _ = window_inputs(self.held, np.zeros(len(labels), np.int64), starts, self.window)
        batch = {k: torch.from_numpy(v) for k, v in inputs.items()}
        with torch.no_grad():
            scores = head_scores(self.run.model.to(self.device), batch, self.names, self.device)
        self.widths = [scores[t].shape[1] for t in self.names]
        outputs = torch.cat([scores[t] for t in self.names], -1).cpu().numpy()
        for label, row in zip(labels, outputs, strict=True):
            self._target(label, np.asarray(row, np.float64))
        if self.closed:  # the last frame is the last target: its own outputs
            last, row = self.targets[-1]
            self._place(last, between_targets(np.array([last]), row[None], np.array([last]))[0])
        first = max(0, self.label - self.offset)  # the next window's first frame
        a0 = 0
        if self.held.audio_start is not None:
            a0 = int(self.held.audio_span(None, np.array([self.label - self.offset]), self.window)[0][0])
        self.held.drop_before(first, max(0, a0))

    def _target(self, label: int, row: np.ndarray) -> None:
        if self.targets:
            prev, means = self.targets[-1]
            frames = np.arange(prev, label)
            values = between_targets(np.array([prev, label]), np.stack([means, row]), frames)
            for t, v in zip(frames, values, strict=True):
                self._place(int(t), v)
        self.targets = [(label, row)]

    def _place(self, t: int, row: np.ndarray) -> None:
        """Frame ``t``'s outputs, through the face rule (:func:`expr.scoring.decision.fill_missing_faces`)."""
        face = self.frames[t]["filled"]
        self.placed.append((t, row))
        if face:
            for u, _ in self.placed[:-1]:
                b = self.last_face
                self._decide(u, b[1] if b is not None and u - b[0] <= t - u else row)
            self.placed = []
            self.last_face = (t, row)
            self._decide(t, row)
        self._wait_faces(t)

    def _wait_faces(self, now: int) -> None:
        while self.placed:
            u, own = self.placed[0]
            b = self.last_face
            if b is not None and now + 1 - u >= u - b[0]:  # a later face could not be nearer
                self._decide(u, b[1])
            elif now - u >= self.window:  # waited the longest a frame without a face waits
                self._decide(u, own if b is None else b[1])
            else:
                return
            self.placed.pop(0)

    def _decide(self, t: int, row: np.ndarray) -> None:
        self.rows[t] = row
        self.decided = t + 1

    def _emit(self) -> list[dict]:
        if self.closed:
            for u, own in self.placed:
                self._decide(u, own if self.last_face is None else self.last_face[1])
            self.placed = []
        ev = self.cfg.eval
        smoothing = {"expr": (ev.smoothing, ev.smoothing_width), "va": (ev.va_smoothing, ev.va_smoothing_width)}
        delay = max((w - w // 2 - 1 for m, w in smoothing.values() if m != "none" and w > 1), default=0)
        end = self.decided if self.closed else self.decided - delay
        lines = [self._line(t) for t in range(self.emitted, max(self.emitted, end))]
        self.emitted = max(self.emitted, end)
        keep = self.emitted - max((w // 2 for _, w in smoothing.values()), default=0)
        for t in [t for t in self.rows if t < keep]:
            del self.rows[t]
        return lines

    def _line(self, t: int) -> dict:
        cfg, info = self.cfg, self.frames.pop(t)
        edges = np.cumsum([0, *self.widths])
        columns = dict(zip(self.names, zip(edges[:-1], edges[1:], strict=True), strict=True))
        out = {"frame": t, "time": round(info["time"], 3), "track": 1, "face": info["face"] is not None,
               "box": None if info["face"] is None else [round(float(v), 1) for v in info["face"].box]}  # fmt: skip
        if "expr" in cfg.train.tasks:
            p = self._smoothed(t, columns["expr"], None)
            label = int(p.argmax())
            out.update(label=label, label_name=cfg.data.classes[label])
            out["probs"] = {c: round(float(x), 4) for c, x in zip(cfg.data.classes, p, strict=True)}
        if "va" in columns:
            va = self._smoothed(t, columns["va"], (cfg.eval.va_smoothing, cfg.eval.va_smoothing_width))
            out.update(valence=round(float(va[0]), 4), arousal=round(float(va[1]), 4))
        if "au" in columns:
            a, b = columns["au"]
            out["au"] = {n: round(float(x), 4) for n, x in zip(AU_NAMES, self.rows[t][a:b], strict=True)}
        self.latency.add(time.perf_counter() - info["ready"])
        return out

    def _smoothed(self, t: int, span: tuple[int, int], va: tuple[str, int] | None) -> np.ndarray:
        """Frame ``t``'s expression probabilities after the run's decision (``va``: valence-arousal after its
        smoothing), from the rows around it."""
        method, width = va or (self.cfg.eval.smoothing, self.cfg.eval.smoothing_width)
        a, b = span
        if method == "none" or width <= 1:
            lo, hi = t, t + 1
        else:
            lo, hi = max(0, t - width // 2), min(t - width // 2 + width, self.decided)
        seg = np.stack([self.rows[u][a:b] for u in range(lo, hi)])
        out = smooth(seg, method, width) if va else self.run.decision.video(seg)
        return out[t - lo]
