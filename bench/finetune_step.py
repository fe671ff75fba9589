"""Benchmark 5: what tuning an encoder costs. Step rate and peak memory of a full training step (data, forward,
loss, backward, AdamW) with full-size models of random weights (open_clip ViT-B/32, Wav2Vec2-Base):

- stage I (``expr finetune``): frames/s of the frame classifier on 112 px JPEG face crops, frozen (a linear probe),
  LoRA (rank 8), the last 2 blocks, full;
- online mode: windows/s with frozen encoders, LoRA on the image tower, LoRA on both encoders;
- cached features (the head alone), the reference.

Each configuration runs in its own process, so its peak memory (resident set on a CPU, ``max_memory_allocated``
on a GPU) is its own.

    python bench/finetune_step.py [--window 8] [--batch 4] [--frames-batch 16] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import Timer, machine, print_table
from online_step import media_store

from expr.config import Config
from expr.data.frames import FrameDataset, FrameSampler, labelled_face_rows
from expr.data.online import OnlineWindowDataset, collate_online
from expr.data.store import FrameStore
from expr.data.windows import EpochSampler, WindowDataset, build_windows, collate_batch
from expr.features.spec import parse_spec
from expr.features.tuning import Tuning
from expr.models.frame import build_frame_classifier
from expr.models.fusion import FusionHead
from expr.models.online import OnlineModel, store_encoders
from expr.training.losses import total_loss

SMOKE = (
    "--window 2 --batch 1 --frames-batch 2 --steps 1 --workers 0 --video-frames 24 "
    "--configs stage1-lora,cached,online-lora-both"
)
"""This script's smallest honest size: tests/test_bench.py runs it with these arguments (``{tmp}``: a temporary
folder) and checks that it prints its figures."""

CONFIGS = {
    "stage1-frozen": ("stage I", "frozen (linear probe)"),
    "stage1-lora": ("stage I", "LoRA r=8"),
    "stage1-last2": ("stage I", "last 2 blocks"),
    "stage1-full": ("stage I", "full"),
    "cached": ("stage II", "cached features"),
    "online-frozen": ("online", "frozen encoders"),
    "online-lora-image": ("online", "LoRA image"),
    "online-lora-both": ("online", "LoRA image + audio"),
}


def _timed(step, steps: int, device) -> tuple[float, int]:
    step()  # warm-up: workers start, first allocations
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seen = 0
    with Timer() as t:
        for _ in range(steps):
            seen += step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return seen / t.seconds, seen


def _batches(loader):
    while True:
        yield from loader


def run_config(name: str, store_path: Path, args) -> dict:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    store = FrameStore(store_path)
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")
    if name.startswith("stage1"):
        method = {"stage1-frozen": "frozen", "stage1-lora": "lora", "stage1-last2": "last_n", "stage1-full": "full"}
        tuning = Tuning(method[name], last_n=2)
        model, encoder = build_frame_classifier(parse_spec("open_clip:ViT-B-32@random", "visual"), tuning, 8)
        model.to(device).train()
        rows = labelled_face_rows(store, "train")
        data = FrameDataset(store, rows, lambda im: encoder.to_batch([im])[0], augment=True)
        loader = torch.utils.data.DataLoader(
            data, batch_size=args.frames_batch, sampler=FrameSampler(data.labels, 0, True, 0), num_workers=args.workers
        )
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        batches = _batches(loader)

        def step():
            batch = next(batches)
            with autocast:
                logits = model(batch["pixels"].to(device))
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["label"].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            return len(batch["label"])

    else:
        windows = build_windows(store, "train", args.window, max(1, args.window // 4))
        head = FusionHead(Config().model, 8)
        encoders = transform = None
        if name != "cached":
            image = Tuning("lora" if "lora" in name else "frozen")
            audio = Tuning("lora" if name == "online-lora-both" else "frozen")
            encoders, transform = store_encoders(store, device, (image, audio))
        model = OnlineModel(encoders, head) if encoders is not None and encoders.trains else head
        model.to(device).train()
        if name == "cached":
            data, collate = WindowDataset(store, windows), collate_batch
        else:
            data, collate = OnlineWindowDataset(store, windows, transform, augment=True), collate_online
        loader = torch.utils.data.DataLoader(
            data, batch_size=args.batch, sampler=EpochSampler(len(windows), 0), collate_fn=collate,
            num_workers=0 if name == "cached" else args.workers,
        )  # fmt: skip
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        text = torch.nn.functional.normalize(torch.randn(8, 512, device=device), dim=-1)
        weights = torch.ones(8, device=device)
        batches = _batches(loader)

        def step():
            batch = {k: v.to(device) for k, v in next(batches).items()}
            with autocast:
                if model is head:
                    if encoders is not None:
                        batch = encoders.encode_batch(batch)
                    out = head(
                        batch["visual"].float(), batch["visual_mask"], batch["audio"].float(), batch["audio_mask"]
                    )
                else:
                    out = model(
                        batch["pixels"], batch["visual_mask"], batch["wave"], batch["wave_mask"], batch["wave_length"]
                    )
            loss = total_loss(out.logits.float(), out.visual_embedding.float(), out.logit_scale, batch["label"], text,
                              weights, 0.1)  # fmt: skip
            opt.zero_grad()
            loss["loss"].backward()
            opt.step()
            return len(batch["label"])

    steps = args.steps * (20 if name == "cached" else 1)
    rate, _ = _timed(step, steps, device)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rate": rate, "peak_mb": peak, "trained_m": trained / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=int, default=8, help="frames per window (online)")
    parser.add_argument("--batch", type=int, default=4, help="windows per step (online, cached)")
    parser.add_argument("--frames-batch", type=int, default=16, help="frames per step (stage I)")
    parser.add_argument("--steps", type=int, default=3, help="steps timed per configuration (cached: 20x more)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="the configurations to run (default: all)")
    parser.add_argument("--video-frames", type=int, default=240, help="frames of each of the store's 3 videos")
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.config:  # one configuration, in its own process
        print(json.dumps(run_config(args.config, Path(args.store), args)))
        return
    print(f"machine: {machine()}\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = media_store(Path(tmp) / "store", videos=3, frames=args.video_frames)
        for name in args.configs.split(","):
            if name not in CONFIGS:
                parser.error(f"--configs: no configuration '{name}' (choose from {', '.join(CONFIGS)})")
            stage, what = CONFIGS[name]
            out = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--config", name, "--store", str(store)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            unit = "frames/s" if stage == "stage I" else "windows/s"
            rows.append([stage, what, f"{r['trained_m']:.2f}", f"{r['rate']:.2f} {unit}", f"{r['peak_mb']:.0f}"])
            print(rows[-1], flush=True)
    memory = "peak GPU MiB" if torch.cuda.is_available() else "peak RSS MiB"
    print_table(
        f"Tuned encoders: step rate and memory (ViT-B/32 + Wav2Vec2-Base, random weights; windows of {args.window} "
        f"frames x {args.batch}, stage I batches of {args.frames_batch} frames)",
        ["stage", "encoders", "trained M params", "rate", memory],
        rows,
    )


if __name__ == "__main__":
    main()
