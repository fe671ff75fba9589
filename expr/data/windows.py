"""Windows over a frame store: a ``datasets.Dataset`` of (video, start, length, label) rows that reference the
store's frames, and a torch ``Dataset`` whose ``__getitems__`` gathers a whole batch of windows at once.
The label frame, labels and task targets of windows are :mod:`expr.data.targets` (re-exported here).

Windows never copy features, so changing the window length or stride costs one pass of integer arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch

from expr.atomic import atomic_path
from expr.data.store import FrameStore
from expr.data.targets import TaskTargets, WindowLabeler, label_offset
from expr.data.targets import label_position as label_position  # re-exported: other modules import it from here
from expr.data.targets import window_labels as window_labels  # re-exported

INDEX_VERSION = "v3"
"""Part of every saved window index's name: raise it when what an index holds or how its labels are chosen changes."""


def window_starts(num_frames: int, window: int, stride: int, rule: str = "center") -> np.ndarray:
    """Start frames of a video's windows every ``stride`` frames.

    ``center`` / ``last``: label frames 0, ``stride``, ``2 * stride``, ... and the video's last frame, each window
    placed so that its label frame is its centre (or last frame): windows near the ends reach past the video, the
    frames outside it masked like frames without a face, so the first and last frames are predicted from windows of
    their own. ``majority``: windows inside the video, the last one ending at its end; a video shorter than a window
    gets one window starting at 0 (padded, the padding masked)."""
    if rule != "majority":
        label = np.arange(0, num_frames, stride, dtype=np.int64)
        if label[-1] != num_frames - 1:
            label = np.append(label, num_frames - 1)
        return label - label_offset(window, rule)
    if num_frames <= window:
        return np.zeros(1, np.int64)
    starts = np.arange(0, num_frames - window + 1, stride, dtype=np.int64)
    if starts[-1] != num_frames - window:
        starts = np.append(starts, num_frames - window)
    return starts


def window_slots(num_frames: int, window: int, stride: int, rule: str = "center") -> tuple[np.ndarray, np.ndarray]:
    """Training slots with a drawn offset: slot k may start anywhere in ``first .. first + span - 1``. ``center`` /
    ``last``: slot k's label frames are ``k * stride .. k * stride + span - 1``, so every frame of the video is the
    label frame of exactly one slot position (windows near the ends reach past the video, masked); ``majority``:
    every full-window start belongs to exactly one slot, and a video shorter than a window has one slot, start 0.
    Returns (first start, span) per slot."""
    if rule != "majority":
        base = np.arange(0, num_frames, stride, dtype=np.int64)  # the slots' first label frames
        return base - label_offset(window, rule), np.minimum(stride, num_frames - base)
    last = max(0, num_frames - window)  # the last start of a full window
    base = np.arange(0, last + 1, stride, dtype=np.int64)
    return base, np.minimum(stride, last + 1 - base)


def draw_offsets(seed: int, epoch: int, index: np.ndarray, count: int) -> np.ndarray:
    """[len(index), count] pseudo-random keys from (seed, epoch, window index, position) alone (splitmix64): the
    same in any process or worker and after a resume, new each epoch."""
    x = (  # uint64 arrays wrap silently (numpy scalars would warn)
        np.asarray([seed % 2**32], np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        + np.asarray([epoch], np.uint64) * np.uint64(0xD1B54A32D192ED03)
        + np.asarray(index, np.uint64)[:, None] * np.uint64(0x94D049BB133111EB)
        + np.arange(count, dtype=np.uint64)[None, :]
    )
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def build_windows(
    store: FrameStore,
    split: str,
    window: int,
    stride: int | None = None,
    label_rule: str = "center",
    drop_unlabelled: bool = True,
    random_offset: bool = False,
    tasks=("expr",),
    overlap: str = "exclude",
):
    """The windows of one split as a ``datasets.Dataset`` with columns video, start, length, label, span: of the
    videos in ``split`` of any of ``tasks``, kept when some task has a target (:class:`TaskTargets`; ``label`` is
    the EXPR one).

    A fixed grid (``random_offset`` False): windows every ``stride`` frames, the last one ending at the video's end;
    span 1. With ``random_offset``: the slots of :func:`window_slots`, each kept when at least one of its starts
    has a labelled target; ``label`` is then the label at the slot's first start (the one drawn each epoch is
    computed by :class:`WindowDataset`)."""
    import datasets

    stride = stride or window
    targets = TaskTargets(store, split, tasks, window, label_rule, overlap)
    videos = targets.videos
    if random_offset:
        per_video = [window_slots(int(store.num_frames[v]), window, stride, label_rule) for v in videos]
    else:
        per_video = [(window_starts(int(store.num_frames[v]), window, stride, label_rule), None) for v in videos]
    empty = np.zeros(0, np.int64)
    video = np.concatenate(
        [np.full(len(s), v, np.int64) for v, (s, _) in zip(videos, per_video, strict=True)] or [empty]
    )
    start = np.concatenate([s for s, _ in per_video] or [empty])
    span = np.concatenate([p for _, p in per_video] or [empty]) if random_offset else np.ones(len(start), np.int64)
    label = targets.labeler(video, start) if video.size else empty
    keep = targets.labelled(video, start) if video.size else np.zeros(0, bool)
    if random_offset and video.size:
        first = np.cumsum(span) - span
        position = np.arange(span.sum()) - np.repeat(first, span)
        labelled = targets.labelled(np.repeat(video, span), np.repeat(start, span) + position)
        keep = np.add.reduceat(labelled.astype(np.int64), first) > 0
    if drop_unlabelled:
        video, start, label, span = video[keep], start[keep], label[keep], span[keep]
    return datasets.Dataset.from_dict(
        {"video": video, "start": start, "length": np.full(len(video), window, np.int64), "label": label, "span": span}
    )


def load_or_build_windows(
    store: FrameStore,
    split: str,
    window: int,
    stride: int | None = None,
    label_rule: str = "center",
    keep_unlabelled: bool = False,
    random_offset: bool = False,
    tasks=("expr",),
    overlap: str = "exclude",
):
    """:func:`build_windows`, saved on disk next to the store (``windows/<key>/``) and reused: the window index is
    a ``datasets.Dataset`` of integers, so any length or stride costs seconds, never a new extraction.
    ``keep_unlabelled`` keeps windows without a label (label -1): frame-level evaluation needs every frame. The key
    starts with :data:`INDEX_VERSION`, so an index built by an older labelling rule is never reused."""
    import datasets

    datasets.disable_progress_bars()
    stride = stride or window
    name = f"{INDEX_VERSION}-{split}-w{window}-s{stride}-{label_rule}" + ("-all" if keep_unlabelled else "")
    name += "-offsets" if random_offset else ""
    name += "" if tuple(tasks) == ("expr",) else "-" + "+".join(tasks)
    name += "-overlap" if overlap == "allow" and split == "train" and tuple(tasks) != ("expr",) else ""
    if store.split_tag:
        name += f"-{store.split_tag}"
    path = store.path / "windows" / name
    if (path / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(path))
    windows = build_windows(store, split, window, stride, label_rule, not keep_unlabelled, random_offset, tasks,
                            overlap)  # fmt: skip
    with atomic_path(path, replace=False) as tmp:  # another process may save the same index first
        windows.save_to_disk(str(tmp))
    return datasets.load_from_disk(str(path))


class WindowDataset(torch.utils.data.Dataset):
    """Batches of windows gathered from a :class:`FrameStore`.

    ``__getitems__`` (used by the DataLoader for a whole batch) returns one dict of tensors:
    ``visual`` [B, T, Dv] fp16, ``visual_mask`` [B, T] (a face and inside the video), ``audio`` [B, Ta, Da] fp16,
    ``audio_mask`` [B, Ta], ``label`` [B], ``frame_labels`` [B, T] (-1 outside the video), ``index`` [B].

    An index may carry the epoch (``epoch * len(self) + window``, from ``EpochSampler(with_epoch=True)``): windows
    with a random offset (span > 1) then start where :meth:`starts` draws them for that epoch.
    """

    def __init__(self, store: FrameStore, windows, label_rule: str = "center", seed: int = 0, split=None,
                 tasks=("expr",), overlap: str = "exclude"):  # fmt: skip
        """``split`` and ``tasks``: the windows' targets are those of :class:`TaskTargets` (a batch also holds ``va``
        [B, 2] and ``au`` [B, 12] when those tasks train); without a split, the store's EXPR labels as they are."""
        self.store = store
        cols = windows.with_format("numpy")[:]
        self.video = np.asarray(cols["video"], np.int64)
        self.start = np.asarray(cols["start"], np.int64)
        self.label = np.asarray(cols["label"], np.int64)
        self.span = np.asarray(cols["span"], np.int64) if "span" in cols else np.ones(len(self.video), np.int64)
        lengths = np.unique(cols["length"])
        if len(lengths) > 1:
            raise ValueError("all windows of a WindowDataset must have the same length")
        self.window = int(lengths[0]) if len(lengths) else 1
        self.seed = seed
        self.num_frames, self.frame_offset = store.num_frames, store.frame_offset
        self.targets = TaskTargets(store, split, tasks, self.window, label_rule, overlap) if split else None
        if self.targets is not None:
            self.labeler = self.targets.labeler
        else:
            self.labeler = WindowLabeler(
                store.labels, store.num_frames, store.frame_offset, len(store.classes), self.window, label_rule
            )

    def __len__(self) -> int:
        return len(self.video)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def starts(self, idx: np.ndarray, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(start, label) of windows ``idx`` in ``epoch``. A window with span > 1 cycles through those of its
        ``span`` positions whose label frame has a target, in an order drawn once per window by
        :func:`draw_offsets` from (seed, window): epoch e takes the (e mod U)-th of its U usable positions, so every
        U <= ``stride`` epochs each of them is drawn once, the same in every process and worker and after a resume.
        Other windows start at their own start."""
        start, label, span = self.start[idx], self.label[idx], self.span[idx]
        if not len(idx) or span.max() <= 1:
            return start, label
        count = int(span.max())
        candidate = start[:, None] + np.arange(count)[None, :]  # [B, S]
        videos = np.repeat(self.video[idx], count)
        labels = self.labeler(videos, candidate.ravel()).reshape(candidate.shape)
        labelled = labels >= 0 if self.targets is None else self.targets.labelled(videos, candidate.ravel())
        usable = (np.arange(count)[None, :] < span[:, None]) & labelled.reshape(candidate.shape)
        keys = draw_offsets(self.seed, 0, idx, count)
        order = np.lexsort((keys, ~usable), axis=1)  # per window: usable positions first, in the order of their keys
        turn = epoch % np.maximum(usable.sum(1), 1)
        rows = np.arange(len(idx))
        pick = order[rows, turn]
        return candidate[rows, pick], labels[rows, pick]

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        s = self.store
        epoch, idx = np.divmod(np.asarray(indices, np.int64), max(1, len(self)))
        start, label = self.starts(idx, int(epoch[0]) if len(epoch) else 0)
        video = self.video[idx]
        inputs, rows, inside = window_inputs(s, video, start, self.window)
        labels = s.labels if self.targets is None else self.targets.labels  # masked to the split's EXPR videos
        frame_labels = np.where(inside, labels[rows], -1)
        return {
            **self.task_targets(video, start),
            **{k: torch.from_numpy(v) for k, v in inputs.items()},
            "label": torch.from_numpy(label),
            "frame_labels": torch.from_numpy(frame_labels),
            "index": torch.from_numpy(idx),
        }

    def task_targets(self, video: np.ndarray, start: np.ndarray) -> dict[str, torch.Tensor]:
        """``va`` [B, 2] float32 / ``au`` [B, 12] int64 targets of the windows, for the tasks that train besides
        EXPR."""
        if self.targets is None or not self.targets.values:
            return {}
        out = self.targets(video, start)
        return {task: torch.from_numpy(np.asarray(out[task], np.float32 if task == "va" else np.int64))
                for task in self.targets.values}  # fmt: skip


def target_coverage(data: WindowDataset, epochs: int) -> dict[str, float]:
    """Per task trained: the fraction of the split's frames with a target of that task that were a training
    window's label frame in at least one of epochs ``0 .. epochs - 1`` (a window's offsets cycle, so ``stride``
    epochs reach every such frame). ``data``: a dataset of training windows with its split's targets."""
    targets, idx = data.targets, np.arange(len(data))
    hit = np.zeros(len(targets.labels), bool)
    for epoch in range(min(epochs, int(data.span.max(initial=1)))):  # the draws repeat after span epochs
        start, _ = data.starts(idx, epoch)
        hit[targets.rows(data.video, start)] = True
    out = {}
    for task in targets.tasks:
        rows = targets.frames_with_target(task)
        out[task] = float(hit[rows].mean()) if len(rows) else float("nan")
    return out


def window_inputs(s, video: np.ndarray, start: np.ndarray, T: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """What the head reads of windows of ``T`` frames from frame ``start`` of ``video`` of a store ``s`` (or of what
    ``expr predict --stream`` holds, :mod:`expr.video.stream`): ({visual, visual_mask, audio, audio_mask}, the frames'
    store rows [B, T], inside the video [B, T])."""
    # Visual frames: [B, T]
    frame = start[:, None] + np.arange(T)[None, :]  # may reach past either end of the video
    inside = (frame >= 0) & (frame < s.num_frames[video][:, None])
    rows = s.frame_offset[video][:, None] + np.clip(frame, 0, s.num_frames[video][:, None] - 1)
    visual = s.visual[rows]  # [B, T, Dv]
    if not inside.all():  # frames outside the video: zeros, as online mode's encoders give them (masked anyway)
        visual[~inside] = 0
    visual_mask = inside & s.face[rows]
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
        audio = np.zeros((len(video), ta, s.audio_dim), np.float16)
    inputs = {"visual": np.ascontiguousarray(visual), "visual_mask": visual_mask,
              "audio": np.ascontiguousarray(audio), "audio_mask": audio_mask}  # fmt: skip
    return inputs, rows, inside


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
