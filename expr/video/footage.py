"""A video's footage for prediction: frames decoded once, faces detected and tracked, people (face tracks) with
their aligned crops, audio; and each person as a store record for the encoders."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expr.data.media import MediaError, decode_audio, probe, timed_frames
from expr.data.store import VideoRecord
from expr.data.subset import encoded_frames, fill_between
from expr.features.audio_stream import encode_in_pieces
from expr.features.faces import Face
from expr.video.detection import FrameFaces
from expr.video.tracks import tracks_of


class PredictError(RuntimeError):
    """A video or model that cannot be used; the message says which and why."""


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
                 progress: bool = True, every: int = 1, scale: float = 1.0) -> Footage:  # fmt: skip
    """Decode ``path`` once: faces detected (``batch`` frames of one size at a time through the detector; on every
    ``every``-th frame downscaled by ``scale``, :mod:`expr.video.detection`) and cropped, linked into people
    (``faces``: ``largest`` or ``all`` with tracks of at least ``min_track_s`` seconds), the audio decoded. A stretch
    that cannot be decoded, a variable frame rate, no face or no audio: warnings."""
    from tqdm.auto import tqdm

    info = probe(path, tolerant=True)
    fps = info.fps
    skipped: list[float] = []
    times: list[float] = []
    detections: list[list[Face]] = []
    found_faces = FrameFaces(detector, faces, batch, every, scale)
    bar = tqdm(total=info.num_frames, unit="frame", desc="faces", disable=not progress)
    with closing(timed_frames(path, skipped)) as frames:
        for time_s, frame in frames:
            detections += [found for _, found in found_faces.push(frame)]
            times.append(time_s)
            bar.update()
    detections += [found for _, found in found_faces.close()]
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


def person_records(footage: Footage, backbones, media: bool = False, rate: float = 0.0,
                   audio_chunk: tuple[float, float] | None = None) -> list[VideoRecord]:  # fmt: skip
    """A VideoRecord (split ``test``) per person of ``footage``, through ``backbones``' encoders (the audio encoded
    once, each person's span of it). ``media`` also keeps the face crops (JPEG) and the audio for a head trained in
    online mode. ``rate`` (``predict.fps``): only the crops of these many frames per second of the person's span are
    encoded, the frames between filled in (:mod:`expr.data.subset`). ``audio_chunk``: (chunk, context) seconds of
    ``predict.audio_chunk`` (:func:`expr.features.audio_stream.encode_in_pieces`); None: the encoder's own chunks."""
    import io

    from PIL import Image

    audio_name = next(iter(backbones.audio_sets))
    audio, start, wave = None, 0.0, np.zeros(0, np.float16)
    if footage.audio is not None:
        wave, start = footage.audio
        encoder = backbones.audio(audio_name)
        if audio_chunk:
            audio = {audio_name: encode_in_pieces(encoder, wave, *audio_chunk)}
        else:
            audio = {audio_name: encoder.encode(wave)}
        wave = wave.astype(np.float16)
    # every person's crops through each image encoder at once (full batches across tracks)
    picked, crops = [], []
    for person in footage.people:
        encoded = np.zeros(len(person.faces), bool)
        encoded[encoded_frames(len(person.faces), footage.fps, rate)] = True
        picked.append((encoded, person.face & encoded))
        crops += [Image.fromarray(f.image) for f, take in zip(person.faces, picked[-1][1], strict=True) if take]
    features = {name: backbones.visual(name).encode(crops) for name in backbones.visual_sets} if crops else {}
    records, offset = [], 0
    for person, (encoded, take) in zip(footage.people, picked, strict=True):
        face, count = person.face, int(take.sum())
        visual = {}
        for name in backbones.visual_sets:
            visual[name] = np.zeros((len(face), backbones.visual(name).dim), np.float16)
            if count:
                visual[name][take] = features[name][offset : offset + count]
            if not encoded.all():
                visual[name], filled = fill_between(visual[name], person.face, np.flatnonzero(encoded))
                face = filled
        offset += count
        audio_rate = backbones.audio(audio_name).rate
        shift = start - person.first / footage.fps  # the audio's start relative to the person's first frame
        record = VideoRecord(person.name, "test", footage.fps, visual, face, np.full(len(face), -1), audio,
                             audio_rate, shift)  # fmt: skip
        if media:
            record.jpeg, record.wave = [], wave
            for f in person.faces:
                buf = io.BytesIO()
                if f is not None:
                    Image.fromarray(f.image).save(buf, format="JPEG", quality=95)
                record.jpeg.append(buf.getvalue())
        records.append(record)
    return records
