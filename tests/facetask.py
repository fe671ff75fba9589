"""A synthetic frame task for encoder fine-tuning: each clip's class is written into its face crops as a faint fixed
pixel pattern, with a random sign in every frame, under a random colour cast and strong noise per frame. The
evidence is second-order (its sign averages out over frames and over a clip), so neither a linear probe of a frozen
random encoder nor a temporal head on its features finds much of it; a tuned encoder learns to read it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("calm", "smile", "frown", "shock")


def face_task(root: Path, train_clips: int = 16, val_clips: int = 8, frames: int = 16, size: int = 32,
              amplitude: float = 60.0, noise_std: float = 35.0, seed: int = 0) -> Path:  # fmt: skip
    """ROOT/<clip>/00001.jpg ... and ROOT/labels.csv (video,label,split); returns the CSV."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(1234).choice([-1.0, 1.0], (len(CLASSES), size, size, 1))
    rows = ["video,label,split"]
    for split, count in (("train", train_clips), ("validation", val_clips)):
        for c in range(count):
            label = c % len(CLASSES)
            name = f"{split[:3]}{c:02d}"
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            for f in range(frames):
                cast = rng.uniform(60, 190, (1, 1, 3))
                noise = rng.normal(0, noise_std, (size, size, 3))
                sign = rng.choice([-1.0, 1.0])
                image = np.clip(cast + noise + sign * amplitude * patterns[label], 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / f"{f + 1:05d}.jpg", quality=95)
            rows.append(f"{name},{CLASSES[label]},{split}")
    path = root / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    return path
