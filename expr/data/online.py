"""Online mode's data: windows of decoded face crops and raw audio instead of cached features.

``expr prepare ... --media`` keeps each frame's face crop (the JPEG file's own bytes) and each video's 16 kHz mono
audio (fp16) in the store's ``media/`` folder, so a store is all online training needs, on any machine:

- ``media/frames/``: one row per store frame, column ``jpeg`` (binary; empty where the frame has no face crop).
- ``media/audio/``: one row per video, column ``wave`` (binary: fp16 samples at 16 kHz; sample s lies at time
  ``audio_start + s / 16000`` relative to video frame 0, the same clock as the audio features).

:class:`OnlineWindowDataset` takes the same window index as :class:`~expr.data.windows.WindowDataset`; each window
becomes ``pixels`` [T, 3, S, S] uint8 (decoded and resized by open_clip's own PIL steps in DataLoader workers;
normalised on the device by :class:`~expr.models.online.OnlineEncoders`) and ``wave`` [L] float32, the window's
own audio span, which Wav2Vec2 encodes per window as the paper does. Training windows can be augmented: one random
resized crop, flip and colour jitter per window, the same for all its frames so motion stays coherent.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from expr.data.media import AUDIO_RATE
from expr.data.store import FrameStore, StoreError, audio_overlap
from expr.data.windows import WindowDataset


class MediaStore:
    """Memory-mapped face crops and audio of a store (``media/``); opened lazily, so it pickles as a path and each
    DataLoader worker maps the files itself."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "frames").is_dir() or not (self.path / "audio").is_dir():
            raise StoreError(
                f"{self.path.parent}: the store keeps no face crops and audio for online mode (no {self.path}); "
                f"prepare it with `expr prepare ... --media`, or train from the cached features (data.mode=cached)"
            )
        self._jpeg = None
        self._waves = None

    def __getstate__(self):
        return {"path": self.path, "_jpeg": None, "_waves": None}

    def _open(self):
        import datasets

        frames = datasets.load_from_disk(str(self.path / "frames")).data.table.column("jpeg")
        waves = datasets.load_from_disk(str(self.path / "audio")).data.table.column("wave")
        # (first row, offsets, data buffer) of every arrow chunk: slicing bytes straight out of the memory map.
        self._jpeg = _chunk_index(frames)
        self._waves = _chunk_index(waves)

    def jpeg(self, row: int) -> memoryview:
        if self._jpeg is None:
            self._open()
        return _binary_at(self._jpeg, row)

    def wave(self, video: int) -> np.ndarray:
        """fp16 samples of one video's audio (empty when it has none); a view into the memory map."""
        if self._waves is None:
            self._open()
        return np.frombuffer(_binary_at(self._waves, video), np.float16)


def _chunk_index(column) -> tuple[np.ndarray, list[tuple[np.ndarray, memoryview]]]:
    starts, chunks, row = [], [], 0
    for chunk in column.chunks:
        _, offsets, data = chunk.buffers()
        dtype = np.int64 if str(chunk.type).startswith("large_") else np.int32
        off = np.frombuffer(offsets, dtype)[chunk.offset : chunk.offset + len(chunk) + 1]
        chunks.append((off, memoryview(data) if data is not None else memoryview(b"")))
        starts.append(row)
        row += len(chunk)
    return np.asarray(starts, np.int64), chunks


def _binary_at(index, row: int) -> memoryview:
    starts, chunks = index
    c = int(np.searchsorted(starts, row, side="right") - 1)
    off, data = chunks[c]
    i = row - int(starts[c])
    return data[int(off[i]) : int(off[i + 1])]


class OnlineWindowDataset(WindowDataset):
    """Windows as decoded face crops and raw audio; same window index, labels and masks as the cached dataset.

    Items (collated by :func:`collate_online`): ``pixels`` [T, 3, S, S] uint8, ``visual_mask`` [T], ``wave`` [L]
    float32, ``wave_mask`` [L], ``label``, ``frame_labels`` [T], ``index``.
    """

    def __init__(self, store: FrameStore, windows, image_transform, augment: bool = False, seed: int = 0,
                 label_rule="center", split=None, tasks=("expr",), overlap="exclude"):  # fmt: skip
        super().__init__(store, windows, label_rule, seed, split, tasks, overlap)
        self.media = MediaStore(store.path / "media")
        self.image_transform = image_transform  # PIL -> PIL: open_clip's resize / crop / RGB steps
        self.augment = augment
        self.size = _output_size(image_transform)
        self._aug = _augmentation(self.size) if augment else None
        self.store = None  # workers need only the small per-frame arrays below, not the feature arrays
        self.face = store.face
        self.labels = store.labels if self.targets is None else self.targets.labels  # masked to the split's EXPR videos
        self.fps, self.audio_start = store.fps, store.audio_start

    def __getitems__(self, indices):
        return [self[int(i)] for i in indices]

    def __getitem__(self, index: int):
        """``index`` may carry the epoch (``epoch * len(self) + window``, from ``EpochSampler(with_epoch=True)``)."""
        epoch, i = divmod(int(index), len(self))
        return self.item(i, epoch)

    def item(self, i: int, epoch: int = 0) -> dict[str, torch.Tensor]:
        """Window ``i``; its augmentation is drawn from (seed, epoch, i) alone: the same in any worker, on any number
        of processes, and after a resume."""
        from PIL import Image, UnidentifiedImageError

        start, label = self.starts(np.array([i]), epoch)
        v, start, T = int(self.video[i]), int(start[0]), self.window
        n = int(self.num_frames[v])
        frame = start + np.arange(T)
        inside = (frame >= 0) & (frame < n)  # a window may reach past either end of the video
        rows = int(self.frame_offset[v]) + np.clip(frame, 0, n - 1)
        mask = inside & self.face[rows]
        pixels = torch.zeros((T, 3, self.size, self.size), dtype=torch.uint8)
        for t in np.flatnonzero(mask):
            try:
                with Image.open(io.BytesIO(self.media.jpeg(int(rows[t])))) as im:
                    image = self.image_transform(im.convert("RGB"))
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
                mask[t] = False
                continue
            pixels[t] = torch.from_numpy(np.asarray(image, np.uint8).copy()).permute(2, 0, 1)
        if self._aug is not None and mask.any():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(((self.seed * 1_000_003 + epoch) * 10_000_019 + i) % 2**63)
                pixels[torch.from_numpy(mask)] = self._aug(pixels[torch.from_numpy(mask)])
        wave, wave_mask = self.audio(v, start, T)
        return {
            "pixels": pixels,
            "visual_mask": torch.from_numpy(mask),
            "wave": torch.from_numpy(wave),
            "wave_mask": torch.from_numpy(wave_mask),
            "label": torch.tensor(int(label[0])),
            "frame_labels": torch.from_numpy(np.where(inside, self.labels[rows], -1)),
            "index": torch.tensor(i),
            **{task: t[0] for task, t in self.task_targets(np.array([v]), np.array([start])).items()},
        }

    def audio(self, video: int, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """The samples of frames [start, start + length): zero-padded where the track has none, with their mask."""
        first, count = audio_overlap(start, length, float(self.fps[video]), float(self.audio_start[video]), AUDIO_RATE)
        s0, count = int(first), int(count)
        track = self.media.wave(video)
        out = np.zeros(count, np.float32)
        mask = np.zeros(count, bool)
        a, b = max(0, s0), min(len(track), s0 + count)
        if b > a:
            out[a - s0 : b - s0] = track[a:b]
            mask[a - s0 : b - s0] = True
        return out, mask


def collate_online(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a batch; waves of different lengths (videos with other frame rates) are zero-padded and masked, and
    ``wave_length`` [B] keeps each window's own length (the encoder runs each length apart: no padding can reach
    Wav2Vec2)."""
    longest = max(len(it["wave"]) for it in items)
    out = {k: torch.stack([it[k] for it in items]) for k in items[0] if k not in ("wave", "wave_mask")}
    wave = torch.zeros((len(items), longest), dtype=torch.float32)
    wave_mask = torch.zeros((len(items), longest), dtype=torch.bool)
    for j, it in enumerate(items):
        wave[j, : len(it["wave"])] = it["wave"]
        wave_mask[j, : len(it["wave"])] = it["wave_mask"]
    out["wave"], out["wave_mask"] = wave, wave_mask
    out["wave_length"] = torch.tensor([len(it["wave"]) for it in items], dtype=torch.int64)
    return out


def _output_size(transform) -> int:
    for step in getattr(transform, "transforms", []):
        size = getattr(step, "size", None)
        if size is not None and type(step).__name__ == "CenterCrop":
            return int(size[0] if isinstance(size, (tuple, list)) else size)
    for step in getattr(transform, "transforms", []):
        size = getattr(step, "size", None)
        if isinstance(size, int):
            return size
    raise StoreError(f"cannot tell the image size of the CLIP preprocessing {transform}")


def _augmentation(size: int):
    """One random resized crop, horizontal flip and colour jitter per call, applied alike to every frame of a
    [N, 3, S, S] uint8 stack (torchvision.transforms.v2 draws the parameters once per call)."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ]
    )


__all__ = ["MediaStore", "OnlineWindowDataset", "collate_online"]
