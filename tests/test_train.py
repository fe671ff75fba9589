"""End-to-end: the real entry point on demo data, on CPU, through `accelerate launch` as a user runs it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, accelerate_cmd

TRAIN = str(ROOT / "expr" / "train.py")
SMALL = [
    "--data.demo_videos",
    "12",
    "--model.tcn_blocks",
    "2",
    "--train.epochs",
    "2",
    "--train.batch_size",
    "16",
    "--train.log_every_steps",
    "2",
]


def launch(args, **kw):
    cmd = (
        accelerate_cmd()
        + [
            "launch",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            TRAIN,
        ]
        + args
    )
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, **kw)


def history(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("time/epoch_s")
    return rows


def test_unknown_key_stops_before_any_work(tmp_path):
    out = subprocess.run(
        [sys.executable, TRAIN, "--model.tcn_block", "4", "--train.output_dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "model.tcn_block" in out.stderr and "model.tcn_blocks" in out.stderr
    assert not (tmp_path / "r").exists()


def test_wrong_type_stops_before_any_work(tmp_path):
    out = subprocess.run([sys.executable, TRAIN, "--train.lr", "fast"], capture_output=True, text=True)
    assert out.returncode == 2 and "train.lr" in out.stderr


def test_resume_after_kill_equals_uninterrupted(tmp_path, small_store):
    from expr.train import config_from_argv, run

    # Uninterrupted reference, in-process through run(cfg).
    cfg, _ = config_from_argv(SMALL + ["--train.output_dir", str(tmp_path / "ref"), "--train.log_with", "none"])
    ref = run(cfg)
    assert ref["completed"] and len(ref["history"]) == 2

    # Same run through `accelerate launch`, killed (SIGKILL) right after its first mid-epoch checkpoint ...
    killed = tmp_path / "killed"
    proc = launch(
        SMALL + ["--train.output_dir", str(killed), "--train.log_with", "none", "--train.checkpoint_every_steps", "4"],
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (killed / "states" / "latest.json").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = (killed / "metrics.jsonl").read_text().count("\n") if (killed / "metrics.jsonl").exists() else 0
    assert done < 2, "the run finished before it was killed"

    # ... then continued with --resume, as a user would.
    resumed = launch(["--resume", str(killed)])
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "resumed" in output
    assert history(killed) == history(Path(ref["run_dir"]))
    from safetensors.torch import load_file

    a, b = load_file(killed / "best" / "model.safetensors"), load_file(tmp_path / "ref" / "best" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stop_and_resume_in_process_at_epoch_boundary(tmp_path, small_store):
    from expr.config import ConfigError
    from expr.train import config_from_argv, run

    args = SMALL + ["--train.log_with", "none", "--model.fusion", "v2a", "--train.grad_accum_steps", "2"]
    cfg, _ = config_from_argv(args + ["--train.output_dir", str(tmp_path / "ref")])
    ref = run(cfg)
    steps_per_epoch = ref["history"][0]["step"]
    cfg, _ = config_from_argv(
        args + ["--train.output_dir", str(tmp_path / "b"), "--train.stop_after_steps", str(steps_per_epoch)]
    )
    first = run(cfg)
    assert not first["completed"] and len(first["history"]) == 1
    cfg, resume = config_from_argv(["--resume", str(tmp_path / "b")])
    second = run(cfg, resume_dir=resume)
    assert second["completed"]
    assert history(tmp_path / "b") == history(tmp_path / "ref")
    # Starting a new run over a finished one is refused (it would mix two runs' metrics).
    cfg, _ = config_from_argv(args + ["--train.output_dir", str(tmp_path / "b")])
    with pytest.raises(ConfigError, match="--resume"):
        run(cfg)


def test_quickstart_demo_run_reaches_the_bar(tmp_path):
    """The README's main command as `./launch.sh train` runs it on a machine without a GPU (accelerate_configs/
    cpu.yaml: two DDP processes over gloo), all defaults: demo data, demo preset, validation macro-F1 >= 0.90."""
    run_dir = tmp_path / "demo"
    cmd = accelerate_cmd() + ["launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu.yaml"), TRAIN]
    proc = subprocess.Popen(
        cmd + ["--train.output_dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    output = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, output[-3000:]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["num_processes"] == 2 and final["effective_batch"] == 64
    assert len(set(final["param_checksum_per_rank"])) == 1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    for r in rows:
        assert {"epoch", "train/loss", "val/macro_f1", "val/per_class_f1", "val/confusion_matrix"} <= r.keys()
        assert len(r["val/per_class_f1"]) == 8
    best = max(r["val/macro_f1"] for r in rows)
    assert best >= 0.90, [round(r["val/macro_f1"], 3) for r in rows]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    # progress bar and per-epoch log lines
    assert "epoch 1/8" in output and "val/macro_f1" in output and "it/s" in output
    # resolved config, tensorboard logs and a loadable best head
    saved = (run_dir / "config.yaml").read_text()
    assert "tcn_blocks: 6" in saved and "window: 30" in saved
    assert list((run_dir / "logs").rglob("events.out.tfevents.*"))
    from safetensors.torch import load_file

    from expr.config import ModelConfig
    from expr.models.fusion import FusionHead

    head = FusionHead(ModelConfig(), 8)
    head.load_state_dict(load_file(run_dir / "best" / "model.safetensors"))
    info = json.loads((run_dir / "best" / "head.json").read_text())
    assert info["val/macro_f1"] == pytest.approx(best)
