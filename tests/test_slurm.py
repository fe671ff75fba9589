"""SLURM for real: a one-node cluster on localhost (munge, slurmctld, slurmd, started here; the Debian packages are
installed when missing), and the sbatch files of examples/slurm/ submitted with `sbatch --wait` as a cluster user
would: the training job (two processes on the node) and a sweep worker array sharing a PostgreSQL study."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from test_distributed import free_port
from test_sweeps import TINY, postgres, study_yaml, trials  # noqa: F401 - postgres is a fixture
from test_train import SMALL

pytestmark = pytest.mark.slow
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["sbatch", "slurmctld", "slurmd", "munged"]


def _found() -> bool:
    return all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS)


def _install() -> str | None:
    """Install SLURM from the Debian packages; the reason it could not be, or None."""
    if _found():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "SLURM is not installed and this user cannot install it (apt-get install slurmctld slurmd munge)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:  # a machine whose package lists were never fetched
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=300)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0 or not _found():
        return f"SLURM could not be installed from the Debian packages: {done.stderr.strip()[-300:]}"
    return None


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node SLURM cluster on localhost; yields the environment that `sbatch` needs (SLURM_CONF)."""
    reason = _install()
    if reason:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("slurm")
    (d / "state").mkdir()
    (d / "spool").mkdir()
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = d / "munge.socket"
    subprocess.run([_sbin("munged"), "--force", "-S", str(sock), "--key-file", str(key), "--log-file",
                    str(d / "munged.log"), "--pid-file", str(d / "munged.pid"), "--seed-file", str(d / "munged.seed")],
                   check=True, capture_output=True)  # fmt: skip
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    conf = d / "slurm.conf"
    conf.write_text(
        f"""ClusterName=expr
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=node0 NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=node0 Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        subprocess.run([_sbin("slurmctld"), "-f", str(conf)], check=True, capture_output=True, env=env)
        subprocess.run([_sbin("slurmd"), "-f", str(conf), "-N", "node0"], check=True, capture_output=True, env=env)
        deadline = time.time() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout:
            if time.time() > deadline:
                pytest.fail("the local SLURM node never became idle:\n" + (d / "slurmctld.log").read_text()[-2000:])
            time.sleep(0.5)
        yield env
    finally:
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            try:
                os.kill(int((d / pid_file).read_text()), 15)
            except (OSError, ValueError):
                pass


def sbatch(env: dict, script: str, args: list[str], extra: dict | None = None, options: list[str] = ()) -> None:
    cmd = ["sbatch", "--wait", *options, str(ROOT / "examples" / "slurm" / script), *args]
    venv = str(Path(sys.executable).parent.parent)  # the sbatch files run this environment's accelerate / python
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=env["OUT"], timeout=600,
                          env={**env, "EXPR_ROOT": str(ROOT), "EXPR_VENV": venv, **(extra or {})})  # fmt: skip
    outputs = "\n".join(p.read_text()[-3000:] for p in sorted(Path(env["OUT"]).glob("*.out")))
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{outputs}"


def test_the_training_sbatch_trains_on_the_nodes_slurm_gives_it(slurm, tmp_path, small_store):
    run_dir = tmp_path / "run"
    env = {**slurm, "OUT": str(tmp_path)}
    extra = {"ACCELERATE_CONFIG": "accelerate_configs/cpu.yaml", "EXPR_PROCS_PER_NODE": "2", "EXPR_PORT":
             str(free_port())}  # fmt: skip
    args = SMALL + ["--train.epochs", "1", "--train.log_with", "none", "--train.output_dir", str(run_dir)]
    sbatch(env, "train.sbatch", args, extra, ["--nodes", "1"])
    (log,) = tmp_path.glob("expr-train-*.out")
    text = log.read_text()
    assert "expr: 1 node(s) x 2 process(es); machine 0 is node0 (127.0.0.1)" in text
    final = json.loads((run_dir / "final.json").read_text())
    assert final["num_processes"] == 2 and len(set(final["param_checksum_per_rank"])) == 1
    assert "best val/macro_f1" in text


def test_a_sweep_worker_array_shares_one_postgresql_study(slurm, tmp_path, postgres):  # noqa: F811
    study = study_yaml(tmp_path, windows=(10, 30), name="slurm2")
    out = tmp_path / "sweep"
    env = {**slurm, "OUT": str(tmp_path)}
    sbatch(env, "sweep_workers.sbatch", ["--study", str(study), "--out", str(out)] + TINY + ["--train.epochs", "1"],
           {"EXPR_STORAGE": postgres}, ["--array", "0-1"])  # fmt: skip
    logs = sorted(tmp_path.glob("expr-sweep-*_*.out"))
    assert len(logs) == 2 and all("expr: sweep worker" in p.read_text() for p in logs)
    done = trials(out, "slurm2", postgres)
    assert sorted(t.params["data.window"] for t in done if t.state.name == "COMPLETE") == [10, 30]
    assert len(done) == 2  # each setting once, whichever worker took it
