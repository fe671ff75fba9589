"""launch.sh composes the accelerate command a user expects (dry run: printed, not started)."""

import os
import subprocess

import pytest
from conftest import ROOT


def dry(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EXPR_DRY_RUN="1", PATH="/usr/bin:/bin")  # no nvidia-smi on PATH: the CPU defaults
    return subprocess.run(["bash", str(ROOT / "launch.sh"), "train", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    "args, expected",
    [
        ((), "--config_file accelerate_configs/cpu.yaml expr/train.py"),
        (("--gpus", "4"), "--config_file accelerate_configs/multi_gpu.yaml --num_processes 4 expr/train.py"),
        (("--gpus", "4", "--zero", "2"), "deepspeed_zero2.yaml --num_processes 4 expr/train.py"),
        (("--zero", "3", "--train.lr", "1e-4"), "deepspeed_zero3.yaml expr/train.py --train.lr 1e-4"),
    ],
)
def test_train_command(args, expected):
    out = dry(*args)
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout and "accelerate launch" in out.stdout


@pytest.mark.parametrize("args", [("--zero", "4"), ("--gpus", "x"), ("--gpus", "0")])
def test_bad_launcher_options_are_refused(args):
    out = dry(*args)
    assert out.returncode == 2 and args[0] in out.stderr


def test_every_config_the_launcher_names_exists():
    for name in ("cpu", "single_gpu", "multi_gpu", "multi_node", "deepspeed_zero2", "deepspeed_zero3"):
        assert (ROOT / "accelerate_configs" / f"{name}.yaml").is_file()
    for z in (2, 3):
        assert (ROOT / "accelerate_configs" / f"ds_zero{z}.json").is_file()


def test_sweep_command():
    env = dict(os.environ, EXPR_DRY_RUN="1", PATH="/usr/bin:/bin")
    out = subprocess.run(
        ["bash", str(ROOT / "launch.sh"), "sweep", "--study", "window", "--", "--train.epochs", "2"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "sweeps/run.py --study window -- --train.epochs 2" in out.stdout
