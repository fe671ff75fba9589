"""Benchmark 6: the face detectors of ``expr predict`` on clips made from real photographs (scikit-image's samples:
a person, the same person tilted, a person with a camera, and face-free scenes), panned frame by frame as
``tests/test_predict.py`` does: the fraction of frames with a face and frames per second, MTCNN against Haar.

    python bench/faces.py [--frames 30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import machine, print_table

from expr.features.faces import face_detector


def photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.stack([image] * 3, -1) if image.ndim == 2 else image


def clips(frames: int) -> dict[str, list[np.ndarray]]:
    """Frames of 320 x 320 panning over each photograph (4 px a frame)."""
    import cv2

    tilted = cv2.warpAffine(photo("astronaut"), cv2.getRotationMatrix2D((225, 110), -20, 1.0), (512, 512))
    sources = {
        "astronaut (a face)": photo("astronaut"),
        "astronaut tilted 20 degrees": tilted,
        "cameraman (a face, grey)": photo("camera"),
        "coffee (no face)": photo("coffee"),
        "chelsea the cat (no face)": photo("chelsea"),
    }
    out = {}
    for name, image in sources.items():
        step = max(1, (min(image.shape[:2]) - 320) // frames)
        out[name] = [np.ascontiguousarray(image[i * step : i * step + 320, i * step : i * step + 320])
                     for i in range(frames)]  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=30)
    args = parser.parse_args()
    rows = []
    for clip, frames in clips(args.frames).items():
        for name in ("mtcnn", "haar"):
            detector = face_detector(name)
            detector.detect(frames[0])  # warm-up
            start = time.perf_counter()
            found = sum(detector.detect(f) is not None for f in frames)
            rate = len(frames) / (time.perf_counter() - start)
            rows.append([clip, name, f"{found}/{len(frames)}", round(rate, 1)])
    print(f"{machine()}; 320 x 320 frames, one process\n")
    print_table("Face detectors", ["clip", "detector", "frames with a face", "frames/s"], rows)


if __name__ == "__main__":
    main()
