"""Face detection and cropping for raw videos (``expr predict``), with the detector that ships inside
``opencv-python-headless`` (Haar cascades in ``cv2.data``; nothing is downloaded).

Each frame: the largest frontal face; the two eyes inside it give the in-plane angle; the face is rotated upright,
cut as a square 1.25 times the detected box around its centre and resized to 112 x 112, like Aff-Wild2's
``cropped_aligned`` crops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CROP_SIZE = 112
MARGIN = 1.25


class FaceDetectorError(RuntimeError):
    """The detector's model files are missing from the installed package."""


class FaceDetector:
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

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, float] | None:
        """(box x, y, w, h of the largest face, eye angle in degrees) or None."""
        import cv2

        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        found = self.face.detectMultiScale(gray, 1.1, 5, minSize=(self.min_size, self.min_size))
        if len(found) == 0:
            return None
        x, y, w, h = max(found, key=lambda b: b[2] * b[3])
        angle = 0.0
        eyes = self.eyes.detectMultiScale(gray[y : y + h * 2 // 3, x : x + w], 1.1, 5)
        if len(eyes) >= 2:
            two = sorted(sorted(eyes, key=lambda e: -e[2] * e[3])[:2], key=lambda e: e[0])
            (lx, ly), (rx, ry) = ((e[0] + e[2] / 2, e[1] + e[3] / 2) for e in two)
            if rx - lx > w / 5:  # two distinct eyes, left and right
                angle = float(np.degrees(np.arctan2(ry - ly, rx - lx)))
        return np.array([x, y, w, h]), angle


def crop_face(rgb: np.ndarray, box: np.ndarray, angle: float = 0.0, size: int = CROP_SIZE) -> np.ndarray:
    """The upright square crop around ``box``, ``size`` x ``size`` RGB."""
    import cv2

    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    side = MARGIN * max(w, h)
    rot = cv2.getRotationMatrix2D((cx, cy), angle, size / side)  # rotate upright and scale to the output size
    rot[0, 2] += size / 2 - cx
    rot[1, 2] += size / 2 - cy
    return cv2.warpAffine(rgb, rot, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
