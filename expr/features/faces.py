"""Face detection and aligned crops for raw videos (``expr predict``). Nothing is downloaded: the detectors' weights
ship inside installed packages.

- ``mtcnn`` (default): MTCNN's boxes and five landmarks (:mod:`expr.features.mtcnn`, weights from the
  ``facenet-pytorch`` wheel); the crop is the similarity transform that maps the landmarks onto the standard
  112 x 112 five-point template (ArcFace's), the way Aff-Wild2's ``cropped_aligned`` crops were made from a landmark
  detector (their exact template is not published; this is the common one).
- ``haar``: OpenCV's Haar cascades (``opencv-python-headless``): the largest frontal face, the in-plane angle from
  the two eyes, an upright square 1.25 times the box. A fallback: it misses profiles and finds false faces.

Both give every face of a frame (largest first) or the largest; ``detect_batch`` takes a batch of frames (MTCNN
runs its networks once per batch, on the GPU when there is one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CROP_SIZE = 112
MARGIN = 1.25
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
"""Where the eyes, nose tip and mouth corners land in a 112 x 112 aligned crop (the ArcFace template)."""
DETECTORS = ("auto", "mtcnn", "haar")

logger = logging.getLogger("expr.faces")


class FaceDetectorError(RuntimeError):
    """The detector's model files are missing from the installed package."""


@dataclass
class Face:
    """One detected face: ``box`` x, y, w, h; ``angle`` (Haar: the eye line's tilt in degrees); ``landmarks`` [5, 2]
    (MTCNN: left eye, right eye, nose, left and right mouth corners, in image pixels)."""

    box: np.ndarray
    angle: float = 0.0
    landmarks: np.ndarray | None = None
    score: float = 1.0
    image: np.ndarray | None = None  # its aligned crop, once taken (``expr predict``)

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])

    def crop(self, rgb: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
        """The aligned ``size`` x ``size`` RGB crop."""
        if self.landmarks is not None:
            return align(rgb, self.landmarks, size)
        return crop_face(rgb, self.box, self.angle, size)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity transform (rotation, uniform scale, translation) mapping points ``src`` [N, 2] onto
    ``dst`` [N, 2] in the least-squares sense (Umeyama 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sigma) @ sign) / s.var(0).sum()
    return np.hstack([scale * rot, (md - scale * rot @ ms)[:, None]])


def align(rgb: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The crop whose five landmarks fall on :data:`TEMPLATE` (scaled to ``size``)."""
    import cv2

    matrix = similarity(landmarks, TEMPLATE * size / CROP_SIZE)
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class MTCNNDetector:
    def __init__(self, min_size: int = 40, threshold: float = 0.9, device: str = "cpu"):
        from expr.features.mtcnn import MTCNN, MTCNNError

        try:
            self.model = MTCNN(min_size=min_size, device=device)
        except MTCNNError as e:
            raise FaceDetectorError(str(e)) from None
        self.threshold = threshold

    def detect_all(self, rgb: np.ndarray) -> list[Face]:
        return self.detect_batch(np.asarray(rgb)[None])[0]

    def detect_batch(self, frames: np.ndarray) -> list[list[Face]]:
        """Each frame's faces with a score of at least ``threshold``, largest first; one network pass per batch of
        frames [B, H, W, 3] (one size)."""
        out = []
        for boxes, scores, points in self.model.detect_batch(frames):
            faces = [Face(np.array([x1, y1, x2 - x1, y2 - y1]), 0.0, marks.astype(np.float64), float(score))
                     for (x1, y1, x2, y2), score, marks in zip(boxes, scores, points, strict=True)
                     if score >= self.threshold]  # fmt: skip
            out.append(sorted(faces, key=lambda f: -f.area))
        return out

    def detect(self, rgb: np.ndarray) -> Face | None:
        """The largest face, or None."""
        faces = self.detect_all(rgb)
        return faces[0] if faces else None


class HaarDetector:
    def __init__(self, min_size: int = 40):
        import cv2

        root = Path(getattr(cv2, "data", None).haarcascades) if hasattr(cv2, "data") else None
        face_xml = root / "haarcascade_frontalface_default.xml" if root else None
        eye_xml = root / "haarcascade_eye.xml" if root else None
        if face_xml is None or not face_xml.is_file() or not eye_xml.is_file():
            raise FaceDetectorError(
                f"OpenCV's Haar cascade files are missing ({root}); install opencv-python-headless 4.x "
                f"(`pip install 'opencv-python-headless<5'`): version 5 no longer ships them"
            )
        self.face = cv2.CascadeClassifier(str(face_xml))
        self.eyes = cv2.CascadeClassifier(str(eye_xml))
        self.min_size = min_size

    def detect_all(self, rgb: np.ndarray) -> list[Face]:
        """Every face (its box and eye angle in degrees), largest first."""
        import cv2

        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        found = self.face.detectMultiScale(gray, 1.1, 5, minSize=(self.min_size, self.min_size))
        return [Face(np.array([x, y, w, h]), self.eye_angle(gray, x, y, w, h))
                for x, y, w, h in sorted(found, key=lambda b: -b[2] * b[3])]  # fmt: skip

    def eye_angle(self, gray: np.ndarray, x: int, y: int, w: int, h: int) -> float:
        """The tilt of the line through the two eyes found in the upper two thirds of the box (0 without two)."""
        eyes = self.eyes.detectMultiScale(gray[y : y + h * 2 // 3, x : x + w], 1.1, 5)
        if len(eyes) >= 2:
            two = sorted(sorted(eyes, key=lambda e: -e[2] * e[3])[:2], key=lambda e: e[0])
            (lx, ly), (rx, ry) = ((e[0] + e[2] / 2, e[1] + e[3] / 2) for e in two)
            if rx - lx > w / 5:  # two distinct eyes, left and right
                return float(np.degrees(np.arctan2(ry - ly, rx - lx)))
        return 0.0

    def detect_batch(self, frames: np.ndarray) -> list[list[Face]]:
        return [self.detect_all(frame) for frame in frames]

    def detect(self, rgb: np.ndarray) -> Face | None:
        """The largest face, or None."""
        faces = self.detect_all(rgb)
        return faces[0] if faces else None


def face_detector(name: str = "auto", device: str = "cpu"):
    """The detector ``name``: ``mtcnn``, ``haar``, or ``auto`` (MTCNN; Haar with a warning when MTCNN's weights are
    not installed)."""
    if name not in DETECTORS:
        raise FaceDetectorError(f"--detector {name}: choose one of {', '.join(DETECTORS)}")
    if name == "haar":
        return HaarDetector()
    try:
        return MTCNNDetector(device=device)
    except FaceDetectorError as e:
        if name == "mtcnn":
            raise
        logger.warning("warning: %s; falling back to OpenCV's Haar cascade (frontal faces only)", e)
        return HaarDetector()


def crop_face(rgb: np.ndarray, box: np.ndarray, angle: float = 0.0, size: int = CROP_SIZE) -> np.ndarray:
    """The upright square crop around ``box`` (x, y, w, h) rotated by ``angle``, ``size`` x ``size`` RGB."""
    import cv2

    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    side = MARGIN * max(w, h)
    rot = cv2.getRotationMatrix2D((cx, cy), angle, size / side)  # rotate upright and scale to the output size
    rot[0, 2] += size / 2 - cx
    rot[1, 2] += size / 2 - cy
    return cv2.warpAffine(rgb, rot, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
