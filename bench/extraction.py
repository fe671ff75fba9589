"""Benchmark 4 (extraction): frames per second of JPEG decode + open_clip preprocessing + CLIP ViT-B/32 encoding as
``expr prepare`` does it (threaded decoding, batches), against a naive loop (PIL open per frame, batch of one); and
audio seconds per second of Wav2Vec2-Base over a whole track in chunks against encoding each 1 s window alone.
Full-size architectures with random weights (the speed does not depend on the weights); fp16 on a GPU.

    python bench/extraction.py [--frames 256] [--audio-seconds 60]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import Timer, machine, print_table

from expr.data.item import Item
from expr.extract import extract_item
from expr.features.backbones import load_clip, load_wav2vec2
from expr.features.encoders import AudioEncoder, open_clip_encoder

SMOKE = "--frames 4 --naive-frames 2 --audio-seconds 2 --batch 4"
"""This script's smallest honest size: tests/test_bench.py runs it with these arguments (``{tmp}``: a temporary
folder) and checks that it prints its figures."""


class NoAudio:
    dim, rate = 768, 50.0

    def encode(self, wave):
        return np.zeros((0, 768), np.float16)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--naive-frames", type=int, default=64)
    parser.add_argument("--audio-seconds", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {machine()}\n")
    from PIL import Image

    model, preprocess, _ = load_clip("ViT-B-32", "random", device)
    visual = open_clip_encoder(model, preprocess, batch_size=args.batch)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        crops = {}
        for i in range(args.frames):
            path = Path(tmp) / f"{i + 1:05d}.jpg"
            Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(path, quality=90)
            crops[i] = path
        item = Item("bench", "train", np.zeros(args.frames, np.int64), crops, None, 30.0)
        extract_item(item, visual, NoAudio())  # warm-up
        with Timer() as ours:
            extract_item(item, visual, NoAudio())
        one = open_clip_encoder(model, preprocess, batch_size=1)
        with Timer() as naive:
            for i in range(args.naive_frames):
                with Image.open(crops[i]) as im:
                    one.encode([im.convert("RGB")])
        with torch.no_grad(), Timer() as pure:  # the encoder alone on ready tensors
            x = torch.randn(args.batch, 3, 224, 224, device=device, dtype=visual.dtype)
            for _ in range(max(1, args.frames // args.batch)):
                model.encode_image(x)
        pure_rate = max(1, args.frames // args.batch) * args.batch / pure.seconds
        rows.append(
            [
                "CLIP frames/s",
                args.frames / ours.seconds,
                args.naive_frames / naive.seconds,
                pure_rate,
                (args.frames / ours.seconds) / (args.naive_frames / naive.seconds),
                (args.frames / ours.seconds) / pure_rate,
            ]
        )
    w2v, normalize = load_wav2vec2("random", device)
    wave = np.random.default_rng(1).standard_normal(int(args.audio_seconds * 16_000)).astype(np.float32)
    enc = AudioEncoder(w2v, normalize)
    enc.encode(wave[:16_000])
    with Timer() as chunked:
        enc.encode(wave)
    with Timer() as windows:  # the paper's wording: each 1 s window's audio encoded alone
        for s in range(0, len(wave) - 16_000 + 1, 16_000):
            AudioEncoder(w2v, normalize, chunk_seconds=1.0, context_seconds=0).encode(wave[s : s + 16_000])
    rows.append(
        [
            "Wav2Vec2 audio s/s",
            args.audio_seconds / chunked.seconds,
            args.audio_seconds / windows.seconds,
            "",
            chunked.seconds and windows.seconds / chunked.seconds,
            "",
        ]
    )
    print_table(
        f"Extraction on {device} (batch {args.batch})",
        ["stage", "expr prepare", "naive (batch 1 / per window)", "encoder alone", "x naive", "fraction of encoder"],
        rows,
    )


if __name__ == "__main__":
    main()
