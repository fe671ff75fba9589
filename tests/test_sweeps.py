"""The ablation harness through its command line, on the demo data: a two-setting grid study, a killed worker
continued, the post-processing study, and two workers sharing one study on a real PostgreSQL server."""

import csv
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT

from expr.sweep import SweepError, load_study, optuna_api, study_files

RUN = [sys.executable, str(ROOT / "sweeps" / "run.py")]
# Small and fast: 12 demo videos, sparse training windows, one validation window per 5 frames.
TINY = [
    "--",
    "--data.demo_videos",
    "12",
    "--model.tcn_blocks",
    "1",
    "--train.batch_size",
    "32",
    "--data.stride",
    "60",
    "--data.eval_stride",
    "5",
]


def study_yaml(tmp_path, windows=(10, 30), name="win2"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"description: two window lengths\ntype: grid\nparams:\n  data.window: {list(windows)}\n")
    return path


def trials(out: Path, name: str, url: str | None = None):
    storage = url or f"sqlite:///{out / 'study.db'}"
    return optuna.load_study(study_name=f"expr-{name}", storage=storage).get_trials(deepcopy=False)


def test_every_shipped_study_loads_and_grids_enumerate_once():
    names = study_files()
    assert {"window", "tcn_depth", "xattn", "lambda", "full", "smoothing"} <= set(names)
    for name in names:
        load_study(name)
    window = load_study("window")
    assert [p["data.window"] for p in window.grid([42], 0)] == [10, 15, 30, 60]
    assert len(window.grid([42, 43, 44], 0)) == 12 and len(window.grid([42], 5)) == 20


def test_a_typo_in_a_study_file_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: grid\nparams:\n  data.windw: [10]\n")
    with pytest.raises(SweepError, match="'data.windw' is not a config key. Did you mean 'data.window'"):
        load_study(str(bad))


@pytest.mark.slow
def test_two_setting_grid_study_reports_like_table1_and_a_rerun_redoes_nothing(tmp_path):
    out = tmp_path / "out"
    cmd = RUN + ["--study", str(study_yaml(tmp_path)), "--out", str(out)] + TINY + ["--train.epochs", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "| data.window | macro-F1 | n |" in report
    assert "\n| 10 | 0." in report and "\n| 30 | 0." in report
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted(int(r["data.window"]) for r in rows) == [10, 30]
    assert all(
        0.0 <= float(r["macro_f1"]) <= 1.0 and Path(r["run_dir"], "best", "model.safetensors").is_file() for r in rows
    )
    assert (out / "win2.png").read_bytes()[:4] == b"\x89PNG"
    finished = [t for t in trials(out, "win2") if t.state.name == "COMPLETE"]
    assert all(t.user_attrs["run_dir"] for t in finished)

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(trials(out, "win2")) == 2  # nothing re-run

    # Post-processing widths on the saved validation probabilities of one trial, without retraining.
    smooth = RUN + ["--study", "smoothing", "--out", str(tmp_path / "smooth"), "--run", rows[0]["run_dir"]]
    done = subprocess.run(smooth, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "smooth" / "report.md").read_text()
    assert "| eval.smoothing | eval.smoothing_width | macro-F1 |" in table
    zero = [line for line in table.splitlines() if line.startswith("| mean | 0 |")][0]
    assert f"{float(rows[0]['macro_f1']):.4f}" in zero  # width 0 reproduces the trial's own metric
    # the choice is labelled: in-sample (optimistic) beside the cross-fitted estimate
    assert "In-sample (optimistic" in table and "Cross-fitted (the validation videos in two halves" in table


@pytest.mark.slow
def test_a_study_optimises_the_score_of_the_task_its_runs_train(tmp_path):
    """Runs that train valence-arousal select their best epoch by the mean CCC; the study optimises that, and its
    report says so."""
    import json

    out = tmp_path / "out"
    cmd = RUN + ["--study", str(study_yaml(tmp_path, name="va2")), "--out", str(out)] + TINY
    done = subprocess.run(cmd + ["--train.epochs", "2", "--train.tasks", "va"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| data.window | CCC | n |" in (out / "report.md").read_text()
    for row in csv.DictReader(open(out / "results.csv")):
        assert row["objective"] == "val/ccc" and row["macro_f1"] == ""
        history = [json.loads(line) for line in open(Path(row["run_dir"]) / "metrics.jsonl")]
        assert float(row["value"]) == pytest.approx(max(h["val/ccc"] for h in history))


@pytest.mark.slow
def test_the_tasks_study_reports_each_task_on_its_own_metric_and_p_mtl(tmp_path):
    """`--study tasks` on the demo's multi-task split: expr, expr+va, expr+au and the three, every run selected by
    macro-F1; each row carries the scores of the tasks its run trained, at that epoch, and P_MTL (their exact sum)
    only for the run of all three."""
    import json

    out = tmp_path / "out"
    done = subprocess.run(RUN + ["--study", "tasks", "--out", str(out)] + TINY + ["--train.epochs", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["train.tasks"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert list(rows) == ["expr", "expr,va", "expr,au", "expr,va,au"]
    for tasks, row in rows.items():
        (m,) = [json.loads(line) for line in open(Path(row["run_dir"]) / "metrics.jsonl")]
        assert row["objective"] == "val/macro_f1" and float(row["task/macro_f1"]) == pytest.approx(m["val/macro_f1"])
        assert (row["task/ccc"] != "") == ("va" in tasks) and (row["task/au_f1"] != "") == ("au" in tasks)
        assert (row["task/p_mtl"] != "") == (tasks == "expr,va,au")
    three = rows["expr,va,au"]
    terms = sum(float(three[k]) for k in ("task/macro_f1", "task/ccc", "task/au_f1"))
    assert float(three["task/p_mtl"]) == pytest.approx(terms, abs=1e-9)
    report = (out / "report.md").read_text()
    assert "| train.tasks | macro-F1 (expressions) | CCC (valence-arousal) | AU F1 (units) | P_MTL |" in report
    assert "| expr | " in report and " — | — | — |" in report and (out / "tasks.png").is_file()


@pytest.mark.slow
def test_a_killed_worker_is_continued_by_rerunning_the_same_command(tmp_path):
    out = tmp_path / "out"
    cmd = RUN + ["--study", str(study_yaml(tmp_path)), "--out", str(out), "--heartbeat", "1"] + TINY
    cmd += ["--train.epochs", "3"]
    worker = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True
    )
    deadline = time.time() + 300
    while not (out / "trials" / "0000" / "states" / "latest.json").is_file():  # trial 0 finished an epoch
        assert time.time() < deadline and worker.poll() is None
        time.sleep(0.5)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    states = sorted(t.state.name for t in trials(out, "win2"))
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
    complete = [t for t in trials(out, "win2") if t.state.name == "COMPLETE"]
    assert sorted(t.params["data.window"] for t in complete) == [10, 30]
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == 0]
    assert retried and retried[0].user_attrs["run_dir"].endswith("trials/0000")  # continued the killed run
    lines = (out / "trials" / "0000" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # epochs 1-3 once each: the finished epoch was not redone


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("initdb")
    return Path(exe).parent if exe else None


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (installed by .ci/run when the machine lacks one)."""
    import tempfile

    bindir = _postgres_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs it with apt-get)")
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
    tmp_path = Path(tempfile.mkdtemp(prefix="expr-pg-"))  # outside pytest's root-only folders
    data = tmp_path / "pgdata"
    data.mkdir()
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres")
        shutil.chown(tmp_path, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        as_user + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    opts = f"-h 127.0.0.1 -p {port} -k {tmp_path}"
    subprocess.run(
        as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-w", "-l", str(tmp_path / "pg.log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            as_user + [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "sweeps"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run(
            as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study_and_run_each_setting_once(tmp_path, postgres):
    study = study_yaml(tmp_path, windows=(5, 10, 15, 20), name="pg4")
    out = tmp_path / "out"
    cmd = RUN + ["--study", str(study), "--out", str(out), "--storage", postgres] + TINY + ["--train.epochs", "1"]
    workers = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n".join(o[-2000:] for o in outputs)
    all_trials = trials(out, "pg4", postgres)
    assert len(all_trials) == 4 and all(t.state.name == "COMPLETE" for t in all_trials)
    assert sorted(t.params["data.window"] for t in all_trials) == [5, 10, 15, 20]  # each setting exactly once
    assert len({t.user_attrs["worker"] for t in all_trials}) == 2  # both workers took trials


@pytest.mark.slow
def test_a_search_study_samples_prunes_and_plots(tmp_path):
    study = tmp_path / "search2.yaml"
    study.write_text(
        "type: search\nsampler: tpe\npruner: median\nn_trials: 2\nparams:\n"
        "  data.window: {choices: [10, 30]}\n  train.lr: {low: 1.0e-4, high: 1.0e-3, log: true}\n"
    )
    out = tmp_path / "out"
    cmd = (
        [sys.executable, "-m", "expr", "sweep", "--study", str(study), "--out", str(out)]
        + TINY
        + ["--train.epochs", "2"]
    )
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    finished = [t for t in trials(out, "search2") if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 2
    assert all(set(t.intermediate_values) == {1, 2} or t.state.name == "PRUNED" for t in finished)  # per epoch
    assert (out / "importance.png").is_file() and (out / "parallel_coordinate.png").is_file()
    assert "| data.window | train.lr | macro-F1 |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_worker_can_be_a_two_process_accelerate_job(tmp_path):
    """`accelerate launch sweeps/run.py`: the main process claims and reports, both processes train each trial."""
    from conftest import accelerate_cmd
    from test_distributed import free_port

    out = tmp_path / "out"
    cmd = accelerate_cmd() + [
        "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(ROOT / "sweeps" / "run.py"),
        "--study", str(study_yaml(tmp_path)), "--out", str(out),
    ] + TINY + ["--train.epochs", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    finished = trials(out, "win2")
    assert sorted(t.params["data.window"] for t in finished if t.state.name == "COMPLETE") == [10, 30]
    assert len(finished) == 2
    import json

    final = json.loads(Path(finished[0].user_attrs["run_dir"], "final.json").read_text())
    assert final["num_processes"] == 2 and len(set(final["param_checksum_per_rank"])) == 1


def test_the_optuna_adapter_works_on_the_pinned_optuna(tmp_path):
    """Every private Optuna call expr makes (expr/sweep/optuna_api.py), on the installed Optuna: claiming a queued
    trial succeeds once, its fixed values are readable, and the claimed trial suggests them and can be told."""
    from optuna.trial import TrialState

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", direction="maximize")
    study.enqueue_trial({"x": 3})
    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))[0]
    assert optuna_api.try_set_state(study, queued, TrialState.RUNNING)
    assert not optuna_api.try_set_state(study, queued, TrialState.RUNNING)  # a second worker loses the race
    assert optuna_api.stored_trial(study, queued).state == TrialState.RUNNING
    trial = optuna_api.live_trial(study, queued)
    assert optuna_api.trial_id(trial) == optuna_api.trial_id(queued)
    assert optuna_api.system_attrs(trial)["fixed_params"] == {"x": 3}
    assert trial.suggest_int("x", 0, 5) == 3
    study.tell(trial, 0.5)
    assert [t.value for t in study.get_trials(deepcopy=False)] == [0.5]


@pytest.mark.slow
def test_the_backbones_study_runs_every_feature_set_of_the_store(tmp_path):
    """`--study backbones`: a grid over the store's visual x audio sets, reported like the other studies."""
    import numpy as np

    from expr.config import ABAW_CLASSES
    from expr.data.demo import generate_videos
    from expr.data.store import write_store

    videos = generate_videos(12, seed=0)
    rng = np.random.default_rng(0)
    for v in videos:  # a second, uninformative visual set beside the demo's own
        v.visual = {"clip": v.visual, "noise": rng.standard_normal((len(v.face), 8))}
    synthetic = {n: {"family": "synthetic"} for n in ("clip", "noise", "wav2vec2")}
    store = write_store(tmp_path / "store", videos, {"classes": list(ABAW_CLASSES), "sets": synthetic})
    assert load_study("backbones").params == {"data.visual": "from_store", "data.audio": "from_store"}
    out = tmp_path / "out"
    cmd = RUN + ["--study", "backbones", "--out", str(out)] + TINY[:1] + ["--data.cache", str(store)] + TINY[3:]
    cmd += ["--train.epochs", "1", "--train.lr", "3e-4", "--backbones.clip_pretrained", "random"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted((r["data.visual"], r["data.audio"]) for r in rows) == [("clip", "wav2vec2"), ("noise", "wav2vec2")]
    report = (out / "report.md").read_text()
    assert "| data.visual | data.audio | macro-F1 |" in report and "\n| noise | wav2vec2 | 0." in report
