"""The GPU check: one command that runs what only a GPU shows and writes its figures.

    python bench/gpu.py [--out runs/gpu-check] [--keep-going] [--scale 1] [--budget 470]

1. ``tests/test_gpu.py`` (stops at the first failure with its message, unless ``--keep-going``);
2. the demo trained under DeepSpeed ZeRO-2 and ZeRO-3 with fp16 (loss scale, skipped steps, macro-F1), under fp16
   autocast (``single_gpu.yaml``, what ``./launch.sh train`` picks on one GPU), bf16 and fp32;
3. the head's training step: windows/s and peak GPU memory at batch 64 and 512 in fp32, fp16 and bf16;
4. extraction: CLIP ViT-B/32 and ViT-L/14 in fp16 as ``expr prepare`` runs them against the bare encoder, and
   Wav2Vec2-Base over a whole track;
5. online mode (frozen fp16 encoders in the step) against cached features;
6. ``expr predict`` frames/s on real clips;
7. the data path at full synthetic Aff-Wild2 scale feeding the GPU step at T = 30, 100 and 300: the loader alone
   (0 and several workers), the step alone, and both together (which one is the bottleneck).

Writes ``OUT/gpu.json`` and ``OUT/gpu.md`` (a BENCHMARKS.md section) after every part, so a part that fails or a run
that stops early keeps what was measured; a part that fails is recorded with its error and the next one runs. Parts
left when ``--budget`` seconds have passed are skipped (named in the output). On a machine without a CUDA GPU it
says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
from common import ROOT, Timer, machine
from common import format_table as table

SMOKE = "--parts head_step --steps 2 --out {tmp}/gpu"
"""This script's smallest honest size (the head's step on the GPU); on a machine without a GPU (CI), the one line
saying so."""
NEEDS_GPU = True
"""tests/test_bench.py: without CUDA this script prints one line and exits 0 instead of figures."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------------- the parts
def part_tests(args) -> tuple[str, dict]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    try:
        import xdist  # noqa: F401

        cmd += ["-n", "4"]  # the six tests launch their own processes; four at a time
    except ImportError:
        pass
    with Timer() as t:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.part_timeout)
    log = done.stdout + done.stderr
    (args.out / "tests.log").write_text(log)
    summary = log.strip().splitlines()[-1] if log.strip() else "(no output)"
    if done.returncode != 0:
        raise TestsFailed(f"tests/test_gpu.py failed ({summary}):\n{log[-4000:]}")
    text = f"`python -m pytest tests/test_gpu.py`: {summary} ({t.seconds:.0f} s)"
    return text, {"summary": summary, "seconds": t.seconds}


class TestsFailed(RuntimeError):
    pass


TRAINING = [  # (name, accelerate config, accelerate options)
    ("DeepSpeed ZeRO-2, fp16", "deepspeed_zero2", []),
    ("DeepSpeed ZeRO-3, fp16", "deepspeed_zero3", []),
    ("fp16 autocast (single_gpu.yaml)", "single_gpu", []),
    ("bf16 autocast", "single_gpu", ["--mixed_precision", "bf16"]),
    ("fp32", "single_gpu", ["--mixed_precision", "no"]),
]


def part_training(args) -> tuple[str, dict]:
    """The demo (40 videos, 8 epochs, batch 64), one process per setting, all settings at once on the one GPU."""
    from expr.data.demo import ensure_demo_store

    ensure_demo_store()  # once, before the runs that share it start
    procs = {}
    settings = TRAINING if args.device == "cuda" else [("rehearsal (cpu.yaml)", "cpu", [])]
    for name, config, options in settings:
        run_dir = args.work / "train" / config / (options[1] if options else "default")
        shutil.rmtree(run_dir, ignore_errors=True)  # a rerun of the check trains afresh
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               f"accelerate_configs/{config}.yaml", "--num_processes", "1", "--main_process_port", str(free_port()),
               *options, "expr/train.py", "--train.output_dir", str(run_dir), "--train.log_with", "none",
               *args.train_options.split()]  # fmt: skip
        log = open(args.out / f"train-{len(procs)}.log", "w")
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs[name] = (proc, run_dir, log)
        procs[name] = (*procs[name], time.perf_counter())
    rows, data = [], {}
    for name, (proc, run_dir, log, t0) in procs.items():
        try:
            code = proc.wait(timeout=args.part_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the training process under it
            code = "timeout"
        seconds = time.perf_counter() - t0
        log.close()
        if code != 0:
            tail = Path(log.name).read_text()[-1500:]
            rows.append([name, f"failed ({code})", "", "", "", "", ""])
            data[name] = {"error": tail}
            continue
        final = json.loads((run_dir / "final.json").read_text())
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        scale = final.get("fp16_loss_scale")
        rows.append([name, final["best"]["macro_f1"], final["best"]["epoch"],
                     f"{history[0]['train/loss']:.3f} -> {history[-1]['train/loss']:.3f}",
                     f"{final['fp16_skipped_steps']} of {final['global_step']}",
                     "none" if scale is None else f"{scale:g}", seconds])  # fmt: skip
        data[name] = {"final": final, "seconds": seconds, "losses": [h["train/loss"] for h in history]}
    text = table(
        "Training the demo (40 videos, 8 epochs, batch 64; the five runs at once on the one GPU)",
        ["setting", "best macro-F1", "best epoch", "train loss first -> last epoch", "skipped steps",
         "final loss scale", "wall s (incl. start)"],
        rows,
    )  # fmt: skip
    return text, data


def part_head_step(args) -> tuple[str, dict]:
    from data_path import head_step

    rows, data = [], {}
    for precision in ("fp32", "fp16", "bf16"):
        for batch in (64, 512):
            rate, peak = head_step(30, batch, args.steps, args.device, precision)
            rows.append([precision, batch, rate, peak])
            data[f"{precision}/{batch}"] = {"windows_per_s": rate, "peak_gib": peak}
            if args.device == "cuda":
                torch.cuda.empty_cache()
    text = table(
        "The head's training step at T = 30 (forward, CE + contrastive, backward, AdamW; inputs on the GPU)",
        ["precision", "batch", "windows/s", "peak GPU memory GiB"],
        rows,
    )
    return text, data


def part_extraction(args) -> tuple[str, dict]:
    from encoders import AUDIO, audio_rows, image_rows

    ns = argparse.Namespace(frames=args.frames, batch=args.batch, audio_seconds=120.0)
    image = image_rows(ns, args.device, ["open_clip:ViT-B-32@random", "open_clip:ViT-L-14@random"])
    audio = audio_rows(ns, args.device, AUDIO[:1])
    text = table(
        f"Extraction in fp16 ({args.frames} JPEG face crops of 112 px, batch {args.batch}; random weights)",
        ["encoder", "dim", "expr prepare frames/s", "encoder alone frames/s", "fraction"],
        image,
    )
    text += "\n\n" + table(
        "Speech encoder in fp16 (a 120 s track, chunks of 30 s with 2 s context)",
        ["encoder", "dim", "frames per audio second", "audio s/s"],
        audio,
    )
    return text, {"image": image, "audio": audio}


def part_online(args) -> tuple[str, dict]:
    from online_step import rows_on

    rows = rows_on(args.device, [30], args.online_batch, 10, min(8, os.cpu_count() or 1))
    text = table(
        f"Online mode: frozen fp16 ViT-B/32 + Wav2Vec2-Base in the step against cached features (T = 30, batch "
        f"{args.online_batch})",
        ["T", "batch", "cached windows/s", "online windows/s", "cached / online", "online: share in encoders"],
        rows,
    )
    return text, {"rows": rows}


def part_predict(args) -> tuple[str, dict]:
    from faces import predict_rows

    rows = predict_rows(args.clip_frames, ["carphone_pristine", "bikes"], args.device, ("largest",))
    rows += predict_rows(args.clip_frames, ["carphone_pristine", "bikes"], args.device, ("largest",), ("--realtime",))
    text = table(
        f"expr predict end to end on {args.device} (MTCNN, ViT-B/32 + Wav2Vec2-Base in fp16, the head)",
        ["clip", "--faces", "tracks", "frames, time, rate"],
        rows,
    )
    return text, {"rows": rows}


def part_data_path(args) -> tuple[str, dict]:
    from common import synthetic_store
    from data_path import expr_loader, head_step, rate

    from expr.data.store import FrameStore

    with Timer() as t:
        store = FrameStore(synthetic_store(args.scale))
    workers = min(8, os.cpu_count() or 1)
    rows, data = [], {}
    for T in (30, 100, 300):
        alone = rate(expr_loader(store, T, 64), args.batches)
        many = rate(expr_loader(store, T, 64, workers), args.batches)
        step, _ = head_step(T, 64, args.steps, args.device, "fp16" if args.device == "cuda" else "fp32")
        fed = fed_rate(expr_loader(store, T, 64, workers), args.batches, args.device)
        bottleneck = "loader" if max(alone, many) < step else "GPU step"
        rows.append([T, alone, many, step, fed, max(alone, many) / step, bottleneck])
        data[T] = {"loader_0": alone, f"loader_{workers}": many, "step": step, "fed": fed}
    text = table(
        f"Data path at {len(store.labels):,} frames (scale {args.scale:g}, opened in {t.seconds:.1f} s) feeding the "
        f"GPU step (fp16, batch 64)",
        ["T", "loader windows/s (0 workers)", f"loader ({workers} workers)", "GPU step windows/s",
         f"loader ({workers} workers) + step", "loader / step", "bottleneck"],
        rows,
    )  # fmt: skip
    return text, data


def fed_rate(loader, batches: int, device: str) -> float:
    """Windows/s of the trainer's loop shape: batches from ``loader`` copied to the GPU and trained on (fp16)."""
    from expr.config import Config
    from expr.models.fusion import FusionHead
    from expr.training.losses import total_loss

    cuda = device == "cuda"
    model = FusionHead(Config().model, 8).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(device)
    text = torch.nn.functional.normalize(torch.randn(8, 512, device=device), dim=-1)
    weights = torch.ones(8, device=device)
    it = iter(loader)
    seen = 0

    def step():
        nonlocal it
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        b = {k: b[k].to(device, non_blocking=True) for k in ("visual", "visual_mask", "audio", "audio_mask", "label")}
        with torch.autocast(device, dtype=torch.float16, enabled=cuda):
            out = model(b["visual"].float(), b["visual_mask"], b["audio"].float(), b["audio_mask"])
            loss = total_loss(out.logits, out.visual_embedding, out.logit_scale, b["label"], text, weights, 0.1)
        opt.zero_grad()
        scaler.scale(loss["loss"]).backward()
        scaler.step(opt)
        scaler.update()
        return len(b["label"])

    step()
    if cuda:
        torch.cuda.synchronize()
    with Timer() as t:
        for _ in range(batches):
            seen += step()
        if cuda:
            torch.cuda.synchronize()
    return seen / t.seconds


PARTS = {
    "tests": part_tests,
    "training": part_training,
    "head_step": part_head_step,
    "extraction": part_extraction,
    "online": part_online,
    "predict": part_predict,
    "data_path": part_data_path,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="folder for gpu.json, gpu.md, logs")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which parts, in this order (of {', '.join(PARTS)})")
    parser.add_argument("--keep-going", action="store_true", help="measure the rest even when tests/test_gpu.py fails")
    parser.add_argument("--scale", type=float, default=1.0, help="the data path's store, a fraction of Aff-Wild2")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds; parts not started by then are skipped")
    parser.add_argument("--part-timeout", type=float, default=400.0, help="seconds one launched job may take")
    parser.add_argument("--steps", type=int, default=30, help="timed steps of the head")
    parser.add_argument("--batches", type=int, default=60, help="timed batches of the loaders")
    parser.add_argument("--frames", type=int, default=1024, help="face crops the extraction part encodes")
    parser.add_argument("--batch", type=int, default=256, help="the extraction part's batch")
    parser.add_argument("--online-batch", type=int, default=32)
    parser.add_argument("--clip-frames", type=int, default=None, help="expr predict on the first N frames of a clip")
    parser.add_argument("--train-options", default="", help="options added to every training run (e.g. epochs)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: a rehearsal of every part on the CPU (small sizes; not GPU figures)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"bench/gpu.py: no CUDA GPU on this machine (torch {torch.__version__} sees none); nothing to measure")
        return 0
    unknown = [p for p in args.parts.split(",") if p not in PARTS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}: choose from {', '.join(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.out / "work"
    start = time.perf_counter()
    header = f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Command: `python bench/gpu.py`."
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "parts": {}}
    sections = [header]
    print(header, flush=True)
    for name in args.parts.split(","):
        elapsed = time.perf_counter() - start
        if elapsed > args.budget:
            report["parts"][name] = {"skipped": f"budget of {args.budget:.0f} s spent"}
            print(f"[{name}] skipped: {elapsed:.0f} s of the {args.budget:.0f} s budget spent", flush=True)
            continue
        print(f"[{name}] ...", flush=True)
        try:
            with Timer() as t:
                text, data = PARTS[name](args)
            report["parts"][name] = {"seconds": t.seconds, **({"data": data} if data else {})}
            sections.append(text)
            print(text + f"\n[{name}] {t.seconds:.0f} s\n", flush=True)
        except TestsFailed as exc:
            report["parts"][name] = {"error": str(exc)}
            print(exc, flush=True)
            if not args.keep_going:
                _write(args.out, report, sections)
                return 1
        except Exception as exc:  # one part failing must not lose the others' figures
            report["parts"][name] = {"error": "".join(traceback.format_exception(exc))[-4000:]}
            print(f"[{name}] failed: {exc!r}\n{traceback.format_exc()[-3000:]}", flush=True)
        _write(args.out, report, sections)
    print(f"wrote {args.out / 'gpu.md'} and gpu.json ({time.perf_counter() - start:.0f} s)")
    return 0


def _write(out: Path, report: dict, sections: list[str]) -> None:
    (out / "gpu.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu.md").write_text("\n\n".join(sections) + "\n")


if __name__ == "__main__":
    sys.exit(main())
