"""Windows over a frame store: a ``datasets.Dataset`` of (video, start, length, label) rows that reference the
store's frames, and a torch ``Dataset`` whose ``__getitems__`` gathers a whole batch of windows at once.

Windows never copy features, so changing the window length or stride costs one pass of integer arithmetic.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import torch

from expr.data.store import FrameStore


def window_starts(num_frames: int, window: int, stride: int) -> np.ndarray:
    """Start frames of windows of ``window`` frames every ``stride`` frames, the last one ending at the video's
    end; a video shorter than a window gets one window starting at 0 (padded, the padding masked)."""
    if num_frames <= window:
        return np.zeros(1, np.int64)
    starts = np.arange(0, num_frames - window + 1, stride, dtype=np.int64)
    if starts[-1] != num_frames - window:
        starts = np.append(starts, num_frames - window)
    return starts


def window_labels(store: FrameStore, video: np.ndarray, start: np.ndarray, window: int, rule: str) -> np.ndarray:
    """The label of each window by ``rule`` (``center``, ``last`` or ``majority`` of labelled frames); -1 when the
    chosen frame is unlabelled or, for ``majority``, no frame of the window is labelled."""
    n = store.num_frames[video]
    if rule in ("center", "last"):
        pos = start + (window // 2 if rule == "center" else window - 1)
        pos = np.minimum(pos, n - 1)
        return store.labels[store.frame_offset[video] + pos]
    if rule != "majority":
        raise ValueError(f"unknown window label rule '{rule}'")
    num_classes = len(store.classes)
    onehot = np.zeros((len(store.labels) + 1, num_classes), np.int32)
    labelled = store.labels >= 0
    onehot[1:][labelled, store.labels[labelled]] = 1
    cumulative = np.cumsum(onehot, axis=0)  # row r: counts over frames [0, r)
    first = store.frame_offset[video] + start
    last = store.frame_offset[video] + np.minimum(start + window, n)
    counts = cumulative[last] - cumulative[first]  # [W, C]
    return np.where(counts.sum(1) > 0, counts.argmax(1), -1)


def build_windows(
    store: FrameStore,
    split: str,
    window: int,
    stride: int | None = None,
    label_rule: str = "center",
    drop_unlabelled: bool = True,
):
    """The windows of one split as a ``datasets.Dataset`` with columns video, start, length, label."""
    import datasets

    stride = stride or window
    videos = store.videos_in(split)
    per_video = [window_starts(int(store.num_frames[v]), window, stride) for v in videos]
    video = (
        np.concatenate([np.full(len(s), v, np.int64) for v, s in zip(videos, per_video, strict=True)])
        if videos.size
        else np.zeros(0, np.int64)
    )
    start = np.concatenate(per_video) if per_video else np.zeros(0, np.int64)
    label = window_labels(store, video, start, window, label_rule) if video.size else np.zeros(0, np.int64)
    if drop_unlabelled:
        keep = label >= 0
        video, start, label = video[keep], start[keep], label[keep]
    return datasets.Dataset.from_dict(
        {"video": video, "start": start, "length": np.full(len(video), window, np.int64), "label": label}
    )


def load_or_build_windows(
    store: FrameStore,
    split: str,
    window: int,
    stride: int | None = None,
    label_rule: str = "center",
    keep_unlabelled: bool = False,
):
    """:func:`build_windows`, saved on disk next to the store (``windows/<key>/``) and reused: the window index is
    a ``datasets.Dataset`` of integers, so any length or stride costs seconds, never a new extraction.
    ``keep_unlabelled`` keeps windows without a label (label -1): frame-level evaluation needs every frame."""
    import datasets

    datasets.disable_progress_bars()
    stride = stride or window
    name = f"{split}-w{window}-s{stride}-{label_rule}" + ("-all" if keep_unlabelled else "")
    if store.split_tag:
        name += f"-{store.split_tag}"
    path = store.path / "windows" / name
    if (path / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(path))
    windows = build_windows(store, split, window, stride, label_rule, drop_unlabelled=not keep_unlabelled)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    windows.save_to_disk(str(tmp))
    try:
        os.replace(tmp, path)
    except OSError:  # another process saved the same index first
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(path))


class WindowDataset(torch.utils.data.Dataset):
    """Batches of windows gathered from a :class:`FrameStore`.

    ``__getitems__`` (used by the DataLoader for a whole batch) returns one dict of tensors:
    ``visual`` [B, T, Dv] fp16, ``visual_mask`` [B, T] (a face and inside the video), ``audio`` [B, Ta, Da] fp16,
    ``audio_mask`` [B, Ta], ``label`` [B], ``frame_labels`` [B, T] (-1 outside the video), ``index`` [B].
    """

    def __init__(self, store: FrameStore, windows):
        self.store = store
        cols = windows.with_format("numpy")[:]
        self.video = np.asarray(cols["video"], np.int64)
        self.start = np.asarray(cols["start"], np.int64)
        self.label = np.asarray(cols["label"], np.int64)
        lengths = np.unique(cols["length"])
        if len(lengths) > 1:
            raise ValueError("all windows of a WindowDataset must have the same length")
        self.window = int(lengths[0]) if len(lengths) else 1

    def __len__(self) -> int:
        return len(self.video)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        s = self.store
        idx = np.asarray(indices, np.int64)
        video, start, T = self.video[idx], self.start[idx], self.window
        # Visual frames: [B, T]
        frame = start[:, None] + np.arange(T)[None, :]
        inside = frame < s.num_frames[video][:, None]
        rows = s.frame_offset[video][:, None] + np.minimum(frame, s.num_frames[video][:, None] - 1)
        visual = s.visual[rows]  # [B, T, Dv]
        visual_mask = inside & s.face[rows]
        frame_labels = np.where(inside, s.labels[rows], -1)
        # Audio frames spanning the same time: [B, Ta]
        a0, count = s.audio_span(video, start, T)
        ta = int(count.max()) if len(count) else 1
        apos = a0[:, None] + np.arange(ta)[None, :]
        audio_mask = (apos >= 0) & (apos < s.num_audio[video][:, None]) & (np.arange(ta)[None, :] < count[:, None])
        if len(s.audio):
            arows = np.clip(s.audio_offset[video][:, None] + apos, 0, len(s.audio) - 1)
            audio = s.audio[arows]  # [B, Ta, Da]
            audio = np.where(audio_mask[..., None], audio, np.float16(0))
        else:
            audio = np.zeros((len(idx), ta, s.meta["audio_dim"]), np.float16)
        return {
            "visual": torch.from_numpy(np.ascontiguousarray(visual)),
            "visual_mask": torch.from_numpy(visual_mask),
            "audio": torch.from_numpy(np.ascontiguousarray(audio)),
            "audio_mask": torch.from_numpy(audio_mask),
            "label": torch.from_numpy(self.label[idx]),
            "frame_labels": torch.from_numpy(frame_labels),
            "index": torch.from_numpy(idx),
        }


def collate_batch(batch):
    """``__getitems__`` already returns a collated batch; the DataLoader's collate only passes it on."""
    return batch


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the dataset drawn from (seed, epoch) alone: the same on every process and after resume,
    new each epoch (``set_epoch``). ``shuffle=False`` gives the identity order."""

    def __init__(self, length: int, seed: int, shuffle: bool = True, with_epoch: bool = False):
        """``with_epoch``: yield ``epoch * length + index`` so a dataset in (persistent) worker processes knows the
        epoch of every item it loads (:class:`~expr.data.online.OnlineWindowDataset` seeds augmentation with it)."""
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0
        self.with_epoch = with_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        if not self.shuffle:
            order = list(range(self.length))
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        if self.with_epoch:
            order = [self.epoch * self.length + i for i in order]
        return iter(order)
