"""Benchmark 2, measured end to end: windows per second of a full training step (data, forward, CE + contrastive,
backward, AdamW) in cached mode (features from the store) against online mode (full-size ViT-B/32 and
Wav2Vec2-Base, random weights, inside the step, on JPEG face crops and raw audio through DataLoader workers), on
the same machine and the same store, through the trainer's own datasets and encoders.

    python bench/online_step.py [--windows 30] [--batch 8] [--steps 3] [--workers 1]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import Timer, machine, print_table

from expr.config import ABAW_CLASSES, Config
from expr.data.online import OnlineWindowDataset, collate_online
from expr.data.store import FrameStore, VideoRecord, write_store
from expr.data.windows import EpochSampler, WindowDataset, build_windows, collate_batch
from expr.models.fusion import FusionHead
from expr.models.online import store_encoders
from expr.training.losses import total_loss

SMOKE = "--windows 4 --batch 1 --steps 1 --workers 0"
"""This script's smallest honest size: tests/test_bench.py runs it with these arguments (``{tmp}``: a temporary
folder) and checks that it prints its figures."""


HEAD_INPUTS = ("visual", "visual_mask", "audio", "audio_mask", "label")


def media_store(path: Path, videos: int, frames: int, seed: int = 0) -> Path:
    """Videos at 30 fps with 112x112 JPEG face crops (Aff-Wild2's crop size), 16 kHz audio and random features."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    records = []
    for i in range(videos):
        base = rng.integers(0, 255, (112, 112, 3), np.uint8)
        jpeg = []
        for _ in range(frames):
            img = np.clip(base.astype(np.int16) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            jpeg.append(buf.getvalue())
        na = int(frames / 30 * 50)
        records.append(
            VideoRecord(
                name=f"v{i}",
                split="validation" if i == 0 else "train",
                fps=30.0,
                visual=rng.standard_normal((frames, 512), np.float32).astype(np.float16),
                face=np.ones(frames, bool),
                labels=rng.integers(0, 8, frames),
                audio=rng.standard_normal((na, 768), np.float32).astype(np.float16),
                jpeg=jpeg,
                wave=(0.1 * rng.standard_normal(int(frames / 30 * 16_000))).astype(np.float16),
            )
        )
    backbones = {"clip": "ViT-B-32", "clip_pretrained": "random", "wav2vec2": "random"}
    return write_store(path, records, {"classes": list(ABAW_CLASSES), "backbones": backbones, "media": True})


def step_rate(loader, head, encoders, steps: int, device: str = "cpu") -> tuple[float, float]:
    """(windows/s of whole steps, share of step time spent in the frozen encoders). On CUDA the head runs under fp16
    autocast with loss scaling (as ``single_gpu.yaml`` trains) and the encoders in fp16."""
    head = head.to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-5)
    text = torch.nn.functional.normalize(torch.randn(8, 512, device=device), dim=-1)
    weights = torch.ones(8, device=device)
    cuda = torch.device(device).type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    it = iter(loader)
    encode_s = 0.0

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step():
        nonlocal encode_s, it
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        if encoders is not None:
            with Timer() as t:
                batch = encoders.encode_batch(batch)
                sync()
            encode_s += t.seconds
        batch = {k: batch[k].to(device, non_blocking=True) for k in HEAD_INPUTS}
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            out = head(batch["visual"].float(), batch["visual_mask"], batch["audio"].float(), batch["audio_mask"])
            loss = total_loss(out.logits, out.visual_embedding, out.logit_scale, batch["label"], text, weights, 0.1)
        opt.zero_grad()
        if scaler is not None:
            scaler.scale(loss["loss"]).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss["loss"].backward()
            opt.step()
        return len(batch["label"])

    step()  # warm-up (worker start, first allocations)
    sync()
    encode_s, seen = 0.0, 0
    with Timer() as t:
        for _ in range(steps):
            seen += step()
        sync()
    return seen / t.seconds, encode_s / t.seconds


def rows_on(device: str, windows: list[int], batch: int, steps: int, workers: int) -> list[list]:
    """One row per window length: cached and online step rates on ``device`` over the same store."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = FrameStore(media_store(Path(tmp) / "store", videos=3, frames=600))
        encoders, image_transform = store_encoders(store, device)
        for T in windows:
            windows_ = build_windows(store, "train", T, max(1, T // 4))
            torch.manual_seed(0)
            head = FusionHead(Config().model, 8)
            cached = torch.utils.data.DataLoader(
                WindowDataset(store, windows_),
                batch_size=batch,
                sampler=EpochSampler(len(windows_), 0),
                collate_fn=collate_batch,
            )
            cached_rate, _ = step_rate(cached, head, None, steps * 20, device)
            online = torch.utils.data.DataLoader(
                OnlineWindowDataset(store, windows_, image_transform, augment=True),
                batch_size=batch,
                sampler=EpochSampler(len(windows_), 0),
                collate_fn=collate_online,
                num_workers=workers,
                persistent_workers=workers > 0,
            )
            online_rate, encoder_share = step_rate(online, head, encoders, steps, device)
            rows.append([T, batch, cached_rate, online_rate, cached_rate / online_rate, encoder_share])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", default="30")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="online steps timed (cached mode times 20x more)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of the online loader")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    rows = rows_on("cpu", [int(x) for x in args.windows.split(",")], args.batch, args.steps, args.workers)
    print_table(
        "Training step: cached features vs. frozen backbones in the loop (fp32, 1 process)",
        ["T", "batch", "cached windows/s", "online windows/s", "cached / online", "online: share in encoders"],
        rows,
    )


if __name__ == "__main__":
    main()
