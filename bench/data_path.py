"""Benchmark 1 (data path) and 2 (training step): windows per second delivered as ready batches from the feature
store through the training DataLoader, against the common patterns of challenge code (one .npy per frame, or per
video, loaded per window), and the head's training step rate on the same machine.

    python bench/data_path.py --scale 0.02 [--batches 100] [--windows 10,30,60]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import Timer, machine, print_table, synthetic_store

from expr.data.store import FrameStore
from expr.data.windows import EpochSampler, WindowDataset, build_windows, collate_batch

SMOKE = "--scale 0.0005 --batches 3 --windows 10 --steps 2 --baseline-videos 1"
"""This script's smallest honest size: tests/test_bench.py runs it with these arguments (``{tmp}``: a temporary
folder) and checks that it prints its figures."""


def expr_loader(store, T, batch, workers: int = 0):
    windows = build_windows(store, "train", T)
    data = WindowDataset(store, windows)
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch,
        sampler=EpochSampler(len(data), 0),
        collate_fn=collate_batch,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=workers > 0 and torch.cuda.is_available(),
    )


class PerFrameFiles(torch.utils.data.Dataset):
    """The common pattern: features saved as one .npy per frame (visual) and per video (audio), loaded per window."""

    def __init__(self, root: Path, store, videos, T, per_video: bool):
        self.root, self.T, self.per_video = root, T, per_video
        self.items = [(v, s) for v in videos for s in range(0, int(store.num_frames[v]) - T, T)]
        self.audio_per_frame = 50 / 30

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        v, s = self.items[i]
        if self.per_video:
            visual = np.load(self.root / f"v{v}" / "visual.npy")[s : s + self.T]
        else:
            visual = np.stack([np.load(self.root / f"v{v}" / f"{f:05d}.npy") for f in range(s, s + self.T)])
        audio = np.load(self.root / f"v{v}" / "audio.npy")
        a0 = int(s * self.audio_per_frame)
        audio = audio[a0 : a0 + int(self.T * self.audio_per_frame)]
        return {"visual": torch.from_numpy(visual), "audio": torch.from_numpy(np.ascontiguousarray(audio)), "label": 0}


def write_files(store, videos, root: Path) -> None:
    for v in videos:
        d = root / f"v{v}"
        d.mkdir(parents=True, exist_ok=True)
        f0, n = int(store.frame_offset[v]), int(store.num_frames[v])
        for i in range(n):
            np.save(d / f"{i:05d}.npy", store.visual[f0 + i])
        np.save(d / "visual.npy", store.visual[f0 : f0 + n])
        a0, na = int(store.audio_offset[v]), int(store.num_audio[v])
        np.save(d / "audio.npy", store.audio[a0 : a0 + na])


def rate(loader, batches: int) -> float:
    it = iter(loader)
    next(it)  # warm-up
    seen = 0
    with Timer() as t:
        for _ in range(batches):
            try:
                b = next(it)
            except StopIteration:
                it = iter(loader)
                b = next(it)
            seen += len(b["label"])
    return seen / t.seconds


def head_step(T: int, batch: int, steps: int, device: str = "cpu", precision: str = "fp32") -> tuple[float, float]:
    """(windows/s, peak memory in GiB on CUDA else 0) of a full training step of the head (forward, CE + contrastive,
    backward, AdamW) on inputs already on ``device``; ``precision``: fp32, fp16 (autocast + loss scaling) or bf16
    (autocast), as the trainer runs them."""
    from expr.config import Config
    from expr.models.fusion import FusionHead
    from expr.training.losses import total_loss

    cfg = Config()
    model = FusionHead(cfg.model, 8).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ta = int(np.ceil(T / 30 * 50))
    text = torch.nn.functional.normalize(torch.randn(8, 512, device=device), dim=-1)
    weights = torch.ones(8, device=device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    kind = torch.device(device).type
    scaler = torch.amp.GradScaler(kind) if precision == "fp16" else None
    v, a = torch.randn(batch, T, 512, device=device), torch.randn(batch, ta, 768, device=device)
    vm = torch.ones(batch, T, dtype=torch.bool, device=device)
    am = torch.ones(batch, ta, dtype=torch.bool, device=device)
    labels = torch.randint(0, 8, (batch,), device=device)

    def step():
        with torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(v, vm, a, am)
            loss = total_loss(out.logits, out.visual_embedding, out.logit_scale, labels, text, weights, 0.1)["loss"]
        opt.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    step()
    cuda = kind == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with Timer() as t:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return steps * batch / t.seconds, peak


def head_step_rate(T: int, batch: int, steps: int) -> float:
    """Windows per second of the head's fp32 training step on the CPU."""
    return head_step(T, batch, steps)[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.02, help="fraction of Aff-Wild2 EXPR's 2.6 M frames")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--windows", default="10,30,60")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--baseline-videos", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="also time the memory-mapped loader with N workers")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    path = synthetic_store(args.scale)
    with Timer() as t:
        store = FrameStore(path)
    with Timer() as t_ram:
        in_ram = FrameStore(path, in_memory=True)
    print(
        f"store: {path} ({len(store.labels):,} frames, {len(store.names)} videos); opened memory-mapped in "
        f"{t.seconds:.2f} s, copied into RAM in {t_ram.seconds:.1f} s\n"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        videos = store.videos_in("train")[: args.baseline_videos]
        write_files(store, videos, Path(tmp))
        for T in [int(x) for x in args.windows.split(",")]:
            ours = rate(expr_loader(store, T, args.batch), args.batches)
            ram = rate(expr_loader(in_ram, T, args.batch), args.batches)
            per_frame = rate(
                torch.utils.data.DataLoader(PerFrameFiles(Path(tmp), store, videos, T, False), batch_size=args.batch),
                max(3, args.batches // 20),
            )
            per_video = rate(
                torch.utils.data.DataLoader(PerFrameFiles(Path(tmp), store, videos, T, True), batch_size=args.batch),
                max(3, args.batches // 10),
            )
            head = head_step_rate(T, args.batch, args.steps)
            row = [T, ours, ram, per_frame, per_video, head, ours / per_frame, ours / per_video, ours / head]
            if args.workers:
                many = rate(expr_loader(store, T, args.batch, args.workers), args.batches)
                row += [many, many / head]
            rows.append(row)
    print_table(
        f"Data path vs. baselines and the head's training step (batch {args.batch}, scale {args.scale:g}, 1 process)",
        [
            "T",
            "expr windows/s (memory-mapped)",
            "expr in RAM",
            ".npy per frame",
            ".npy per video",
            "head train step windows/s",
            "x per-frame",
            "x per-video",
            "x head step",
        ]
        + ([f"expr, {args.workers} workers", "x head step"] if args.workers else []),
        rows,
    )


if __name__ == "__main__":
    main()
