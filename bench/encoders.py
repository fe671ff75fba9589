"""Benchmark (encoders): extraction throughput of each encoder family as ``expr prepare`` runs it (JPEG decoding in
threads, the family's own preprocessing, batches) against the bare encoder on ready tensors, and audio seconds per
second of each speech encoder over a whole track in chunks; then a whole ``expr prepare folder`` run on one process
against two (``accelerate launch -m expr prepare``). Full-size architectures with random weights (the speed does not
depend on the weights); fp16 on a GPU.

    python bench/encoders.py [--frames 128] [--audio-seconds 30] [--processes]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import Timer, machine, print_table

from expr.data.item import Item
from expr.extract import extract_item
from expr.features.encoders import load_audio_encoder, load_image_encoder
from expr.features.spec import parse_spec

SMOKE = "--frames 4 --batch 4 --audio-seconds 2"
"""This script's smallest honest size: tests/test_bench.py runs it with these arguments (``{tmp}``: a temporary
folder) and checks that it prints its figures."""

ROOT = Path(__file__).resolve().parents[1]
IMAGE = [
    "open_clip:ViT-B-32@random",
    "timm:efficientnet_b0@random",
    "timm:vit_small_patch14_dinov2@random,img_size=224",
    "hf:facebook/dinov2-small@random,hidden_size=384,num_attention_heads=6,image_size=224",
]
AUDIO = [
    "hf:facebook/wav2vec2-base@random",
    "hf:facebook/hubert-base-ls960@random",
    "hf:microsoft/wavlm-base-plus@random",
    "hf:openai/whisper-base@random,d_model=512,encoder_layers=6,encoder_attention_heads=8,encoder_ffn_dim=2048",
]


def crops(folder: Path, n: int) -> dict[int, Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for i in range(n):
        out[i] = folder / f"{i + 1:05d}.jpg"
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(out[i], quality=90)
    return out


def image_rows(args, device: str, specs: list[str] = IMAGE) -> list[list]:
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = crops(Path(tmp), args.frames)
        item = Item("bench", "train", np.zeros(args.frames, np.int64), files, None, 30.0)
        for text in specs:
            enc = load_image_encoder(parse_spec(text, "visual"), device, args.batch)
            extract_item(item, {"v": enc}, {})  # warm-up
            with Timer() as ours:
                extract_item(item, {"v": enc}, {})
            ready = enc.to_batch([Image.new("RGB", (112, 112))] * args.batch).to(device, enc.dtype)
            steps = max(1, args.frames // args.batch)
            with torch.no_grad(), Timer() as bare:
                for _ in range(steps):
                    enc.forward(ready)
                if device == "cuda":
                    torch.cuda.synchronize()
            ours_rate, bare_rate = args.frames / ours.seconds, steps * args.batch / bare.seconds
            rows.append([text.split(",")[0], enc.dim, ours_rate, bare_rate, ours_rate / bare_rate])
    return rows


def audio_rows(args, device: str, specs: list[str] = AUDIO) -> list[list]:
    wave = np.random.default_rng(1).standard_normal(int(args.audio_seconds * 16_000)).astype(np.float32)
    rows = []
    for text in specs:
        enc = load_audio_encoder(parse_spec(text, "audio"), device)
        enc.encode(wave[:16_000])
        with Timer() as t:
            feats = enc.encode(wave)
        rows.append([text.split(",")[0], enc.dim, len(feats) / args.audio_seconds, args.audio_seconds / t.seconds])
    return rows


def process_rows(args) -> list[list]:
    """A whole `expr prepare folder` run (timm EfficientNet-B0 + Wav2Vec2-Base) on 1 and 2 processes."""
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        rng = np.random.default_rng(0)
        lines = ["video,label"]
        for v in range(args.videos):
            folder = root / f"clip{v:02d}"
            folder.mkdir(parents=True)
            for i in range(args.video_frames):
                Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(folder / f"{i + 1:05d}.jpg")
            lines.append(f"clip{v:02d},{v % 8}")
        (root.parent / "labels.csv").write_text("\n".join(lines) + "\n")
        common = ["-m", "expr", "prepare", "folder", str(root), "--labels", str(root.parent / "labels.csv")]
        common += ["--visual", "e=timm:efficientnet_b0@random", "--wav2vec2", "random", "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for n in (1, 2):
            out = Path(tmp) / f"store{n}"
            if n == 1:
                cmd = [sys.executable, *common, "--out", str(out)]
            else:
                cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *common,
                       "--out", str(out)]  # fmt: skip
            with Timer() as t:
                subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
            rows.append([f"{n} process{'es' if n > 1 else ''}", args.videos * args.video_frames / t.seconds, t.seconds])
            shutil.rmtree(out, ignore_errors=True)
    rows.append(["2 / 1", rows[1][1] / rows[0][1], ""])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--audio-seconds", type=float, default=30.0)
    parser.add_argument("--processes", action="store_true", help="also time a whole prepare on 1 and 2 processes")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--video-frames", type=int, default=48)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {machine()}\n")
    print_table(
        f"Image encoders on {device} (batch {args.batch}, {args.frames} JPEG face crops of 112 px)",
        ["encoder", "dim", "expr prepare frames/s", "encoder alone frames/s", "fraction"],
        image_rows(args, device),
    )
    print_table(
        f"Speech encoders on {device} ({args.audio_seconds:.0f} s track, chunks of 30 s with 2 s context)",
        ["encoder", "dim", "frames per audio second", "audio s/s"],
        audio_rows(args, device),
    )
    if args.processes:
        print_table(
            f"expr prepare folder, {args.videos} videos x {args.video_frames} frames (EfficientNet-B0 + Wav2Vec2)",
            ["run", "frames/s", "seconds"],
            process_rows(args),
        )


if __name__ == "__main__":
    main()
