"""Single labelled face crops of a store (``media/frames``, kept by ``expr prepare --media``) for frame classifiers
(``expr finetune``): which frames an epoch draws, and each one decoded, augmented and preprocessed as its encoder's
family does.

An epoch draws ``per_epoch`` frames (all of them by default), class-balanced or uniformly, from (seed, epoch) alone;
a frame's augmentation is drawn from (seed, epoch, draw): the same in any worker, on any number of processes and
after a resume.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch

from expr.data.online import MediaStore
from expr.data.store import FrameStore


def labelled_face_rows(store: FrameStore, split: str) -> np.ndarray:
    """Store rows of the split's frames that have a face crop and a label."""
    rows = store.frame_rows(store.videos_in(split))
    return rows[store.face[rows] & (store.labels[rows] >= 0)]


def spread(rows: np.ndarray, count: int) -> np.ndarray:
    """``count`` of ``rows`` evenly spaced (all of them when ``count`` is 0 or not smaller)."""
    if not count or count >= len(rows):
        return rows
    return rows[np.unique(np.linspace(0, len(rows) - 1, count).round().astype(np.int64))]


class FrameSampler(torch.utils.data.Sampler):
    """Positions into the dataset's frames, ``draw * len(frames) + position`` where ``draw`` numbers the draws of all
    epochs (``epoch * per_epoch + k`` for the k-th draw of an epoch; the dataset seeds augmentation with it, so a
    frame drawn twice in an epoch is augmented twice anew): ``per_epoch`` draws per epoch, with replacement and each
    class equally likely when ``balanced``, else a permutation (its first ``per_epoch``)."""

    def __init__(self, labels: np.ndarray, per_epoch: int, balanced: bool, seed: int):
        self.labels, self.balanced, self.seed, self.epoch = np.asarray(labels), balanced, seed, 0
        self.count = per_epoch or len(self.labels)
        if not balanced:
            self.count = min(self.count, len(self.labels))
        counts = np.bincount(self.labels, minlength=int(self.labels.max()) + 1)
        self.weights = torch.from_numpy(1.0 / counts[self.labels])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.balanced:
            order = torch.multinomial(self.weights, self.count, replacement=True, generator=g)
        else:
            order = torch.randperm(len(self.labels), generator=g)[: self.count]
        draw = self.epoch * self.count + torch.arange(len(order))
        return iter((draw * len(self.labels) + order).tolist())


class FrameDataset(torch.utils.data.Dataset):
    """Item ``draw * len(self) + i``: frame ``rows[i]`` as ``pixels`` (the encoder's input tensor, from
    ``to_tensor(PIL image)``; augmented from (seed, draw) when ``augment``, :class:`FrameSampler` numbering the draws
    of every epoch), ``label`` (-1 where the crop cannot be decoded: it does not count) and ``index``."""

    def __init__(self, store: FrameStore, rows: np.ndarray, to_tensor: Callable, augment: bool = False, seed: int = 0):
        self.media = MediaStore(store.path / "media")
        self.rows = np.asarray(rows, np.int64)
        self.labels = np.asarray(store.labels[self.rows], np.int64)
        self.to_tensor, self.augment, self.seed = to_tensor, augment, seed
        self._aug = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from PIL import Image, UnidentifiedImageError

        draw, i = divmod(int(index), len(self.rows))
        label = int(self.labels[i])
        try:
            with Image.open(io.BytesIO(self.media.jpeg(int(self.rows[i])))) as im:
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            image, label = Image.new("RGB", (32, 32)), -1
        if self.augment:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(((self.seed * 1_000_003 + draw) * 10_000_019 + i) % 2**63)
                image = self._augmentation(image.size)(image)
        return {"pixels": self.to_tensor(image), "label": torch.tensor(label), "index": torch.tensor(i)}

    def _augmentation(self, size: tuple[int, int]):
        """A random resized crop (80-100 % of the face), horizontal flip and colour jitter."""
        if self._aug is None or self._aug[0] != size:
            from torchvision.transforms import v2

            transform = v2.Compose(
                [
                    v2.RandomResizedCrop((size[1], size[0]), scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
                    v2.RandomHorizontalFlip(),
                    v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
                ]
            )
            self._aug = (size, transform)
        return self._aug[1]


__all__ = ["FrameDataset", "FrameSampler", "labelled_face_rows", "spread"]
