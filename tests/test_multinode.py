"""Two machines on one host: two `accelerate launch` commands as machine 0 and machine 1 (`--num_machines 2
--machine_rank 0|1 --main_process_ip 127.0.0.1`, one process each, DDP over gloo), sharing the run folder and the
store as a cluster's shared file system would. docs/scaling.md says what must be shared."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, accelerate_cmd
from test_distributed import assert_same_store, free_port, launch2, prepare_on_one_process
from test_train import SMALL, TRAIN, history

pytestmark = pytest.mark.slow


def machines(args: list[str], entry: list[str] | None = None, per_machine: int = 1, log_dir: Path | None = None):
    """Start machine 0 and machine 1 (each its own process group, so a test can kill a whole machine)."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        cmd = accelerate_cmd() + [
            "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank), "--num_processes",
            str(2 * per_machine), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no", *(entry or [TRAIN]),
        ] + args  # fmt: skip
        log = open(log_dir / f"machine{rank}.log", "w") if log_dir else subprocess.PIPE
        procs.append(
            subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True)
        )
    return procs


def kill_machine(proc) -> None:
    """SIGKILL a machine: its launcher and every process under it (torchrun starts its workers in sessions of their
    own, so the launcher's process group alone would leave them running)."""
    import psutil

    tree = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    for p in tree:
        p.send_signal(signal.SIGKILL)


def curve(run_dir: Path) -> list[float]:
    """Per epoch: the training loss and the validation macro-F1."""
    return [v for row in history(run_dir) for v in (row["train/loss"], row["val/macro_f1"])]


def wait_all(procs, timeout: float = 600) -> list[int]:
    return [p.wait(timeout=timeout) for p in procs]


ARGS = SMALL + ["--train.log_with", "none"]


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory, small_store) -> Path:
    """The reference: the same run on one machine with 2 processes."""
    one = tmp_path_factory.mktemp("one") / "run"
    launch2(ARGS + ["--train.output_dir", str(one)])
    return one


def test_two_machines_train_like_one_machine_with_as_many_processes(tmp_path, one_machine):
    args, one = ARGS, one_machine
    two = tmp_path / "two"
    codes = wait_all(machines(args + ["--train.output_dir", str(two)], log_dir=tmp_path))
    logs = [(tmp_path / f"machine{r}.log").read_text() for r in (0, 1)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert curve(two) == pytest.approx(curve(one), rel=1e-6)  # the same loss curve and metrics, epoch by epoch
    assert [r["val/confusion_matrix"] for r in history(two)] == [r["val/confusion_matrix"] for r in history(one)]
    final_one, final_two = (json.loads((d / "final.json").read_text()) for d in (one, two))
    assert final_two["num_processes"] == 2
    assert final_two["param_checksum_per_rank"] == pytest.approx(final_one["param_checksum_per_rank"], rel=1e-9)
    from safetensors.torch import load_file

    a, b = load_file(one / "best" / "model.safetensors"), load_file(two / "best" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)  # the same best head
    # Written once, by machine 0's main process: machine 1 logs no run summary and no checkpoint.
    assert "best val/macro_f1" in logs[0] or "best " in logs[0]
    assert "run:" not in logs[1]


def test_killing_machine_1_ends_machine_0_with_a_clear_error_and_both_resume(tmp_path, one_machine):
    args = ARGS + ["--train.checkpoint_every_steps", "2"]  # a state every 2 steps: the kill lands mid-epoch 2
    ref = one_machine
    run_dir = tmp_path / "run"
    procs = machines(args + ["--train.output_dir", str(run_dir)], log_dir=tmp_path)
    deadline = time.time() + 300
    while not (run_dir / "metrics.jsonl").is_file():  # mid-run: the first epoch is done and a state is kept
        assert time.time() < deadline and all(p.poll() is None for p in procs), "the run ended before the kill"
        time.sleep(0.2)
    kill_machine(procs[1])
    killed = time.time()
    code = procs[0].wait(timeout=120)
    seconds = time.time() - killed
    print(f"machine 0 stopped {seconds:.1f} s after machine 1 was killed")
    log = (tmp_path / "machine0.log").read_text()
    assert code != 0
    assert seconds < 60, f"machine 0 took {seconds:.0f} s to stop"
    assert "another process of this run stopped" in log, log[-3000:]
    assert f"--resume {run_dir}" in log
    # Relaunch both machines with --resume: the run finishes as if nothing had happened.
    (tmp_path / "again").mkdir()
    codes = wait_all(machines(["--resume", str(run_dir)], log_dir=tmp_path / "again"))
    assert codes == [0, 0], (tmp_path / "again" / "machine0.log").read_text()[-3000:]
    assert "resumed" in (tmp_path / "again" / "machine0.log").read_text()
    assert curve(run_dir) == pytest.approx(curve(ref), rel=1e-6)
    final_ref, final = (json.loads((d / "final.json").read_text()) for d in (ref, run_dir))
    assert final["best"] == pytest.approx(final_ref["best"])  # the same best epoch and score
    assert final["param_checksum_per_rank"] == pytest.approx(final_ref["param_checksum_per_rank"], rel=1e-7)


def test_prepare_sharded_over_two_machines_equals_one_process(tmp_path):
    """`expr prepare` on machine 0 and machine 1: every process extracts its share of the videos into the shared
    output's parts, machine 0's main process assembles; the store equals a one-process run's."""
    args = prepare_on_one_process(tmp_path)
    procs = machines([*args, "--out", str(tmp_path / "two")], entry=["-m", "expr", "prepare"], log_dir=tmp_path)
    assert wait_all(procs) == [0, 0], (tmp_path / "machine0.log").read_text()[-3000:]
    assert_same_store(tmp_path / "one", tmp_path / "two")
    logs = [(tmp_path / f"machine{r}.log").read_text() for r in (0, 1)]
    assert "extracted" in logs[1] and "train with --data.cache" not in logs[1]  # machine 1 extracted its share,
    assert "train with --data.cache" in logs[0]  # machine 0 assembled the store and said so
