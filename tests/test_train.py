"""End-to-end: the real entry point on demo data, on CPU, through `accelerate launch` as a user runs it."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted(tmp_path, small_store):
    from expr.config import config_from_argv
    from expr.training.trainer import run

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


@pytest.mark.slow
@pytest.mark.parametrize("where", ["epoch_end", "mid_epoch"])
def test_stop_and_resume_in_process_with_accumulation(tmp_path, small_store, where):
    from expr.config import ConfigError, config_from_argv
    from expr.training.trainer import run

    args = SMALL + ["--train.log_with", "none", "--model.fusion", "v2a", "--train.grad_accum_steps", "2"]
    cfg, _ = config_from_argv(args + ["--train.output_dir", str(tmp_path / "ref")])
    ref = run(cfg)
    steps_per_epoch = ref["history"][0]["step"]
    # Optimizer steps: one per 2 micro-batches of 16 windows (the last one of an epoch may be shorter).
    windows = len(_train_windows(cfg))
    assert steps_per_epoch == math.ceil(math.ceil(windows / 16) / 2)
    stop = steps_per_epoch if where == "epoch_end" else steps_per_epoch + 2  # mid-epoch: inside epoch 2
    cfg, _ = config_from_argv(args + ["--train.output_dir", str(tmp_path / "b"), "--train.stop_after_steps", str(stop)])
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
    # A resume that would change what the run is (a shape, the schedule) is refused before anything is written; one
    # that changes how it runs (logging) is not.
    files = {f: f.read_bytes() for f in (tmp_path / "b").rglob("*") if f.is_file()}
    for change, said in [("--model.dim", "model.dim: 512 -> 128"), ("--train.epochs", "train.epochs: 2 -> 3")]:
        value = said.rsplit(" ", 1)[1]
        with pytest.raises(ConfigError, match=f"would change what the run is \\({said}\\)"):
            config_from_argv(["--resume", str(tmp_path / "b"), change, value])
    assert {f: f.read_bytes() for f in (tmp_path / "b").rglob("*") if f.is_file()} == files
    assert config_from_argv(["--resume", str(tmp_path / "b"), "--train.log_every_steps", "5"])[1] == str(tmp_path / "b")


def _train_windows(cfg):
    from expr.data.source import open_store
    from expr.data.store import FrameStore
    from expr.data.windows import load_or_build_windows

    store: FrameStore = open_store(cfg)
    d = cfg.data
    return load_or_build_windows(store, "train", d.window, d.stride, d.label_frame, random_offset=d.random_offset,
                                 tasks=cfg.train.tasks, overlap=cfg.train.task_overlap)  # fmt: skip


def test_training_budget_does_not_depend_on_the_window_length(small_store):
    # The window study compares lengths at an equal budget: by default an epoch has one training window per
    # data.stride frames whatever the window, so 10 and 60 frames train for (nearly) the same number of steps.
    from expr.config import config_from_argv

    counts = {}
    for T in (10, 15, 30, 60):
        cfg, _ = config_from_argv(SMALL + ["--data.window", str(T)])
        counts[T] = len(_train_windows(cfg))
    assert max(counts.values()) <= 1.1 * min(counts.values()), counts


def test_warmup_then_cosine_to_the_floor():
    from expr.training.optim import cosine_schedule

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0)
    scheduler = cosine_schedule(optimizer, total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])  # the rate the step uses
        optimizer.step()
        scheduler.step()
    # Warm-up: steps 0..9 at 2 * (s + 1) / 10, reaching the peak on the last warm-up step.
    assert lrs[:10] == pytest.approx([2.0 * (s + 1) / 10 for s in range(10)])
    # Cosine from the peak at step 10 down to the floor 0.1 x peak after the last step.
    for s in (10, 30, 55, 99):
        progress = (s - 10) / 90
        assert lrs[s] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2)  # after all 100 steps: the floor
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_weight_decay_falls_on_kernels_only():
    from expr.config import ModelConfig
    from expr.models.fusion import FusionHead
    from expr.training.optim import param_groups

    model = FusionHead(ModelConfig(tcn_blocks=2), 8)
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed | kept == set(names.values()) and not decayed & kept
    gain = "tcn.blocks.0.net.0.conv.parametrizations.weight.original0"  # weight norm's per-channel gain
    direction = "tcn.blocks.0.net.0.conv.parametrizations.weight.original1"
    assert gain in kept and direction in decayed
    assert {"classifier.0.weight", "text_projection.weight", "v2a.attn.in_proj_weight"} <= decayed
    assert {"logit_scale", "audio_adapter.1.weight", "v2a.norm.weight", "classifier.0.bias"} <= kept
    shapes = dict(model.named_parameters())
    assert all(shapes[n].ndim == 1 or n.endswith("original0") for n in kept)  # biases, norms, scales, gains
    assert all(shapes[n].ndim >= 2 for n in decayed)


def test_class_weights_come_from_training_frames_not_windows(tmp_path, small_store):
    from expr.config import config_from_argv
    from expr.training.losses import class_weights
    from expr.training.trainer import Trainer

    cfg, _ = config_from_argv(SMALL + ["--train.log_with", "none", "--train.output_dir", str(tmp_path / "r")])
    trainer = Trainer(cfg)
    store = trainer.store
    frames = store.labels[store.frame_rows(store.videos_in("train"))]
    torch.testing.assert_close(trainer.unit.class_weights.cpu(), class_weights(frames, 8, "inverse"))
    windows = np.asarray(_train_windows(cfg)["label"])
    assert not torch.allclose(trainer.unit.class_weights.cpu(), class_weights(windows, 8, "inverse"))


def test_training_windows_are_drawn_anew_each_epoch_and_cover_every_labelled_frame_within_stride_epochs(small_store):
    from expr.data.store import FrameStore
    from expr.data.windows import WindowDataset, label_position, load_or_build_windows

    store = FrameStore(small_store)
    windows = load_or_build_windows(store, "train", 30, 30, "center", random_offset=True)
    data = WindowDataset(store, windows, "center", seed=42)
    idx = np.arange(len(data))
    seen = np.zeros(len(store.labels), bool)
    for epoch in range(3):
        batch = data.__getitems__(epoch * len(data) + idx)
        start, label = data.starts(idx, epoch)
        assert batch["label"].tolist() == label.tolist() and (label >= 0).all()
        target = store.frame_offset[data.video] + label_position(start, 30, store.num_frames[data.video], "center")
        assert (store.labels[target] == label).all()
        assert ((start >= data.start) & (start < data.start + data.span)).all()  # inside its slot
        # The same draw whatever the batch (order, size, process): a function of (seed, epoch, window) alone.
        assert data.starts(idx[::-1], epoch)[0].tolist() == start[::-1].tolist()
    first = data.starts(idx, 0)[0]
    assert (data.starts(idx, 1)[0] != first).mean() > 0.9
    # Offsets cycle: in the first `stride` (30) epochs every labelled training frame, the first and last frames of
    # each video included, is a training target at least once; no slot repeats a position before it used them all.
    train = np.concatenate([store.frame_rows([v]) for v in store.videos_in("train")])
    labelled = train[store.labels[train] >= 0]
    drawn = []
    for epoch in range(30):
        start, _ = data.starts(idx, epoch)
        rows = store.frame_offset[data.video] + label_position(start, 30, store.num_frames[data.video], "center")
        seen[rows] = True
        drawn.append(start)
    assert seen[labelled].all()
    drawn = np.stack(drawn, 1)  # [windows, epochs]
    usable = np.array([len(np.unique(d)) for d in drawn])
    for d, u in zip(drawn, usable, strict=True):
        assert len(np.unique(d[:u])) == u and (d[u:] == d[: 30 - u]).all()  # a cycle of its usable positions


def test_target_coverage_is_the_share_of_labelled_training_frames_drawn_as_targets(small_store, small_run):
    from expr.data.store import FrameStore
    from expr.data.windows import WindowDataset, load_or_build_windows, target_coverage

    store = FrameStore(small_store)
    windows = load_or_build_windows(store, "train", 30, 30, "center", random_offset=True)
    data = WindowDataset(store, windows, "center", seed=42, split="train")
    train = store.frame_rows(store.videos_in("train"))
    labelled = int((store.labels[train] >= 0).sum())
    # A slot with U labelled positions reaches min(E, U) of them in E epochs, each a different frame.
    idx = np.arange(len(data))
    candidate = data.start[:, None] + np.arange(30)[None, :]
    usable = (np.arange(30)[None, :] < data.span[:, None]) & data.targets.labelled(
        np.repeat(data.video, 30), candidate.ravel()
    ).reshape(candidate.shape)
    for epochs in (1, 8, 29):
        expected = np.minimum(usable.sum(1), epochs).sum() / labelled
        assert target_coverage(data, epochs)["expr"] == pytest.approx(expected), epochs
    assert target_coverage(data, 30) == {"expr": 1.0} == target_coverage(data, 100)
    assert target_coverage(data, 1)["expr"] == pytest.approx(len(idx) / labelled)
    # every run records it, for its epochs: the small run trained 2
    final = json.loads((Path(small_run["run_dir"]) / "final.json").read_text())
    assert 0 < final["target_coverage"] < 0.1


# A short fixed-seed run (the small_run fixture: demo preset, 12 videos, 2 TCN blocks, 2 epochs, batch 16): its
# loss curve and metric, pinned. A refactor that changes what expr computes changes these numbers.
# Re-pinned 2026-12-04 when windows began to reach past a video's ends (every frame a label frame) and training
# offsets began to cycle (was [2.0097, 1.3686] / [0.502, 0.5167]).
PINNED = {"train/loss": [2.0233, 1.3418], "val/macro_f1": [0.5095, 0.509]}


def test_pinned_loss_curve_of_a_short_demo_run(small_run):
    got = {k: [round(r[k], 4) for r in small_run["history"]] for k in PINNED}
    assert got["train/loss"] == pytest.approx(PINNED["train/loss"], rel=1e-3), got
    assert got["val/macro_f1"] == pytest.approx(PINNED["val/macro_f1"], abs=2e-3), got


@pytest.mark.slow
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


@pytest.mark.slow
def test_damaged_newest_states_fall_back_to_the_older_one_and_pointers_stay_in_the_run(tmp_path, small_store, caplog):
    """Three kept states: the newest with its weights cut short (a full disk), the next with a random state torch
    refuses to load (accelerate would go on without it): the resume falls back to the oldest, says so for each, and
    finishes as the uninterrupted run."""
    import fractions
    import pickle

    from expr.config import ConfigError, config_from_argv
    from expr.training.trainer import run

    args = SMALL + ["--train.log_with", "none", "--train.epochs", "1", "--train.checkpoint_every_steps", "2",
                    "--train.keep_last_states", "3"]  # fmt: skip
    run(config_from_argv(args + ["--train.output_dir", str(tmp_path / "ref")])[0])
    b = tmp_path / "b"
    run(config_from_argv(args + ["--train.output_dir", str(b), "--train.stop_after_steps", "6"])[0])
    states = b / "states"
    assert sorted(p.name for p in states.glob("step*")) == ["step00000002", "step00000004", "step00000006"]
    weights = states / "step00000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (states / "step00000004" / "random_states_0.pkl").write_bytes(
        pickle.dumps({"random_state": fractions.Fraction(1)}, protocol=2)
    )
    config = (b / "config.yaml").read_bytes()
    # latest.json may name only a state folder of this run
    latest = states / "latest.json"
    saved = latest.read_text()
    latest.write_text('{"state": "../../elsewhere"}')
    with pytest.raises(ConfigError, match="not a state folder of this run"):
        run(*config_from_argv(["--resume", str(b)]))
    assert (b / "config.yaml").read_bytes() == config  # a resume that fails writes nothing (stop_after_steps stays)
    latest.write_text(saved)
    with caplog.at_level("WARNING", logger="expr.training.checkpoint"):
        second = run(*config_from_argv(["--resume", str(b)]))
    assert "step00000006 does not load (SafetensorError" in caplog.text
    assert "step00000004 does not load" in caplog.text and "resuming from the older step00000002" in caplog.text
    assert second["completed"] and history(b) == history(tmp_path / "ref")  # steps 3-6 redone: the same run
    assert {".damaged-step00000004", ".damaged-step00000006"} <= {p.name for p in states.iterdir()}  # set aside


def test_a_run_directory_has_one_writer(tmp_path, small_store):
    """A second training (or a resume) into a run directory that a live process writes is refused naming that
    process; the lock goes with its holder, so a finished or killed run never blocks the next command."""
    from expr.config import config_from_argv
    from expr.locks import FolderLock, LockedError
    from expr.training.trainer import run

    args = SMALL + ["--train.log_with", "none", "--train.epochs", "1", "--train.output_dir", str(tmp_path / "r")]
    holder = FolderLock(tmp_path / "r", "run").acquire()  # as a training that has just started would hold it
    with pytest.raises(LockedError, match=rf"being written by pid {os.getpid()} on host .* \(.*\.lock\)"):
        run(config_from_argv(args)[0])
    assert not (tmp_path / "r" / "config.yaml").exists()  # refused before writing anything
    holder.release()
    assert run(config_from_argv(args)[0])["completed"]  # released when it could not start, and by fit
    hold = f"FolderLock({str(tmp_path / 'k')!r}, 'run').acquire()"
    code = f"from expr.locks import FolderLock; import os; {hold}; os._exit(9)"
    killed = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert killed.returncode == 9
    FolderLock(tmp_path / "k", "run").acquire().release()  # a holder that died holds nothing


def test_a_non_finite_feature_stops_training_naming_the_store_set_and_frame(tmp_path):
    """A NaN in the features (a damaged store) would train a head of NaNs and save it as best without a word: the
    first non-finite loss stops the run, naming the store, the set and the first bad frame."""
    from expr.config import ABAW_CLASSES, config_from_argv
    from expr.data.demo import generate_videos
    from expr.data.store import write_store
    from expr.training.trainer import NonFiniteError, run

    videos = generate_videos(6, seed=5)
    train = next(v for v in videos if v.split == "train")
    train.visual[17:, 3], train.face[17:] = np.nan, True  # from frame 17 on: some window trains on it
    meta = {"source": "test", "classes": list(ABAW_CLASSES),
            "backbones": {"clip": "none (synthetic features)", "wav2vec2": "none (synthetic features)"},
            "sets": {"clip": {"family": "synthetic"}, "wav2vec2": {"family": "synthetic"}}}  # fmt: skip
    store = write_store(tmp_path / "store", videos, meta)
    args = ["--data.cache", str(store), "--backbones.clip_pretrained", "random", "--model.tcn_blocks", "1",
            "--train.batch_size", "16", "--train.log_with",
            "none", "--train.epochs", "1", "--train.output_dir", str(tmp_path / "run")]  # fmt: skip
    said = rf"{store}: feature set 'clip' has a non-finite value at row \d+ \(frame 17 of video {train.name}\)"
    with pytest.raises(NonFiniteError, match=said):
        run(config_from_argv(args)[0])
    assert not (tmp_path / "run" / "best").exists()  # nothing saved as best
