"""Two CPU processes (DDP over gloo) through `accelerate launch`, as ../README describes for CI."""

import json
import math
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, accelerate_cmd
from test_train import SMALL, TRAIN, history


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch2(args: list[str], zero_stage: int | None = None) -> str:
    """`accelerate launch` of the trainer on 2 CPU processes: DDP over gloo, or DeepSpeed ZeRO ``zero_stage``. Both
    documented forms are used: the script `expr/train.py`, and (ZeRO-2) the module form `-m expr train`."""
    entry = ["-m", "expr", "train"] if zero_stage == 2 else [TRAIN]
    mode = ["--multi_gpu"]
    if zero_stage:  # the shipped config files, with the GPU-only fp16 switched off
        mode = ["--config_file", f"accelerate_configs/deepspeed_zero{zero_stage}.yaml"]
    cmd = accelerate_cmd() + ["launch"] + mode + [
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), *entry,
    ] + args  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout + out.stderr


def evaluate_on_one_process(run_dir: Path) -> dict:
    """`expr evaluate`'s report of the run's best head, computed in this single process."""
    from expr.runs.evaluate import evaluate_run

    return evaluate_run(run_dir, out_dir=run_dir / "eval-1proc")


MTL = ["--data.split_source", "mtl", "--train.tasks", "expr,va,au"]
"""The multi-task challenge's split, the three tasks on one head."""


@pytest.mark.slow
@pytest.mark.parametrize(
    "zero_stage, extra",
    [(None, MTL + ["--loss.task_balance", "uncertainty"]), (2, MTL), (3, [])],
    ids=["ddp-mtl-uncertainty", "zero2-mtl", "zero3"],
)
def test_two_processes_train_resume_and_evaluate_like_one(tmp_path, small_store, zero_stage, extra):
    """DDP and DeepSpeed ZeRO-2 / ZeRO-3 on 2 CPU processes: identical ranks, the schedule planned for 2 processes,
    a mid-epoch stop resumed into the same run, an exported head, and validation equal to one process's. DDP and
    ZeRO-2 train the three tasks on the multi-task split (DDP with learned task weights, which sit outside every
    head), so P_MTL is gathered and resumed like the rest."""
    args = SMALL + ["--train.log_with", "none", "--train.min_lr_ratio", "0.1", *extra]
    ref = tmp_path / "ref"
    output = launch2(args + ["--train.output_dir", str(ref)], zero_stage)
    assert "2 processes" in output
    final = json.loads((ref / "final.json").read_text())
    assert final["num_processes"] == 2 and final["effective_batch"] == 32
    assert len(set(final["param_checksum_per_rank"])) == 1  # identical parameters on both ranks
    # Each process takes half of every epoch's windows: 2 epochs of ceil(windows / (16 x 2)) optimizer steps, and
    # the cosine schedule ends at its floor on the last of them (not half-way, as a schedule planned for one
    # process would).
    from test_train import _train_windows

    from expr.config import config_from_argv

    windows = len(_train_windows(config_from_argv(args)[0]))
    assert final["global_step"] == 2 * math.ceil(windows / 32)
    assert final["final_lr"] == pytest.approx(0.1 * final["lr"], rel=0.02)

    # Stopped mid-epoch on 2 processes, resumed on 2 processes: the same run.
    b = tmp_path / "b"
    launch2(args + ["--train.output_dir", str(b), "--train.stop_after_steps", "10"], zero_stage)
    assert len(history(b)) == 1
    assert "resumed" in launch2(["--resume", str(b)], zero_stage)
    assert history(b) == history(ref)
    assert json.loads((b / "final.json").read_text())["param_checksum_per_rank"] == final["param_checksum_per_rank"]
    if zero_stage:  # DeepSpeed saved its own (sharded) checkpoint layout
        assert list((b / "states").glob("step*/pytorch_model"))
    # Any resume state exports to one head file that reproduces the trained parameters.
    from safetensors.torch import load_file

    from expr.training.checkpoint import export_head

    last = json.loads((b / "states" / "latest.json").read_text())["state"]
    head = load_file(export_head(b / "states" / last, tmp_path / "head.safetensors"))
    assert sum(float(v.double().sum()) for v in head.values()) == pytest.approx(
        final["param_checksum_per_rank"][0], rel=1e-9
    )
    assert head.keys() == load_file(ref / "best" / "model.safetensors").keys()

    # The validation windows (all of them, unlabelled ones included, 3 per frame) do not split evenly into 2 x 32:
    # gather_for_metrics must drop the padding duplicates, so the 2-process metric equals one process's.
    key = "val/p_mtl" if extra else "val/macro_f1"
    best = max(history(ref), key=lambda r: r[key])
    report = evaluate_on_one_process(ref)
    assert report["metrics"]["macro_f1"] == pytest.approx(best["val/macro_f1"], abs=1e-9)
    assert history(ref)[0]["val/frames"] <= report["frames"]
    if extra:
        assert report["p_mtl"]["score"] == pytest.approx(best["val/p_mtl"], abs=1e-6)
        assert ("train/task_weights" in best) == ("uncertainty" in extra)


@pytest.mark.slow
def test_expr_evaluate_on_two_processes_matches_one(small_run, tmp_path):
    """`accelerate launch -m expr evaluate`: each process takes whole videos, the main process scores."""
    import json

    from expr.runs.evaluate import evaluate_run

    one = evaluate_run(small_run["run_dir"], stride=5, out_dir=tmp_path / "one")
    cmd = accelerate_cmd() + [
        "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "expr", "evaluate",
        small_run["run_dir"], "--stride", "5", "--out", str(tmp_path / "two"),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two["frames"] == one["frames"] and two["metrics"] == one["metrics"]


def prepare_on_one_process(tmp_path: Path) -> list[str]:
    """An Aff-Wild2 tree (tmp_path/aw) prepared by one process into tmp_path/one with tiny random encoders; returns
    the `expr prepare` arguments (without --out) for a multi-process run to repeat."""
    import torch
    from mediatree import affwild2_tree

    from expr.cli.prepare import main

    root = tmp_path / "aw"
    affwild2_tree(root)
    tiny = "timm:vit_small_patch14_dinov2@random,img_size=28,depth=1,embed_dim=32,num_heads=2"
    w2v = "hf:facebook/wav2vec2-base@random,num_hidden_layers=1"
    args = ["affwild2", str(root), "--visual", f"v={tiny}", "--audio", f"a={w2v}", "--no-progress"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process runs: the same float reductions, bit for bit
    try:
        assert main([*args, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    return args


def assert_same_store(one: Path, two: Path) -> None:
    import numpy as np

    from expr.data.store import FrameStore

    a, b = FrameStore(one), FrameStore(two)
    assert a.names == b.names and a.num_audio.tolist() == b.num_audio.tolist()
    np.testing.assert_array_equal(a.visual, b.visual)
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not (two / ".parts").exists()


@pytest.mark.slow
def test_expr_prepare_on_two_processes_equals_one(tmp_path, capsys):
    """`accelerate launch -m expr prepare`: each process extracts every other video into its parts, the main process
    assembles; the store equals a one-process run's, and a second launch finds nothing to do."""
    args = prepare_on_one_process(tmp_path)
    cmd = accelerate_cmd() + [
        "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "expr", "prepare", *args,
        "--out", str(tmp_path / "two"),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert_same_store(tmp_path / "one", tmp_path / "two")
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0 and "up to date" in again.stdout + again.stderr


@pytest.mark.slow
@pytest.mark.parametrize("tasks", ["va", "expr,va,au"])
def test_two_processes_train_other_tasks(tmp_path, small_store, tasks):
    """Under DDP every parameter must receive a gradient on every rank: a VA-only run never uses the expression
    classifier or the contrastive projection, and a multi-task batch may hold no expression label. The gathered
    validation equals one process's `expr evaluate`."""
    from expr.runs.evaluate import evaluate_run

    run_dir = tmp_path / "run"
    launch2(SMALL + ["--train.log_with", "none", "--train.epochs", "1", "--train.tasks", tasks,
                     "--train.output_dir", str(run_dir)])  # fmt: skip
    final = json.loads((run_dir / "final.json").read_text())
    assert final["num_processes"] == 2 and len(set(final["param_checksum_per_rank"])) == 1
    (row,) = history(run_dir)
    report = evaluate_run(run_dir, device="cpu", out_dir=run_dir / "eval-1proc")
    assert report["va"]["ccc"] == pytest.approx(row["val/ccc"], abs=1e-6)


def test_loss_scale_reads_the_scaler_that_runs():
    """final.json's fp16_loss_scale: accelerate's GradScaler under fp16 autocast, DeepSpeed's ZeRO optimizer's
    dynamic scale under DeepSpeed fp16, and None where nothing scales (fp32, bf16)."""
    from types import SimpleNamespace as NS

    from expr.training.distributed import loss_scale

    class Scaler:
        def __init__(self, on):
            self.on = on

        def is_enabled(self):
            return self.on

        def get_scale(self):
            return 1024.0

    zero = NS(optimizer=NS(loss_scale=2048.0))  # accelerate's wrapper around DeepSpeed's ZeRO optimizer

    def acc(scaler=None, deepspeed=False, precision="no"):
        return NS(scaler=scaler, state=NS(deepspeed_plugin=object() if deepspeed else None), mixed_precision=precision)

    assert loss_scale(acc(Scaler(True), precision="fp16"), zero) == 1024.0
    assert loss_scale(acc(deepspeed=True, precision="fp16"), zero) == 2048.0
    assert loss_scale(acc(deepspeed=True, precision="bf16"), zero) is None
    assert loss_scale(acc(Scaler(False), precision="bf16"), zero) is None
    assert loss_scale(acc(), zero) is None


def test_a_lost_peer_is_recognised_only_in_a_multi_process_run(monkeypatch):
    """gloo's and NCCL's words for a process that is gone become expr's one-line error; other errors stay errors."""
    from expr.training.distributed import peer_failure

    gone = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:28906. GLHF!")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "Connection closed by peer" in peer_failure(gone)
    assert "NCCL" in peer_failure(RuntimeError("NCCL communicator was aborted on rank 1"))
    assert "Timed out" in peer_failure(RuntimeError("[gloo/.../unbound_buffer.cc:81] Timed out waiting 1800000ms"))
    assert peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert peer_failure(RuntimeError("DataLoader timed out after 5 seconds")) is None  # not a collective
    assert peer_failure(ValueError("Connection closed by peer")) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert peer_failure(gone) is None  # one process: nobody else to lose
