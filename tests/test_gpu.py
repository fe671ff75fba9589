"""What only a GPU can show: DeepSpeed ZeRO-2 with fp16 dynamic loss scaling, and online mode with fp16 encoders on
CUDA. CI has no GPU, so these skip there; on a GPU machine `./launch.sh test tests/test_gpu.py` runs them."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from test_distributed import free_port

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: fp16 loss scaling and fp16 encoders only exist on CUDA (DeepSpeed and DDP run on CPU in "
    "tests/test_distributed.py and tests/test_online.py)",
)


def _launch(args, tmp_path):
    """``accelerate launch ARGS`` on a port of its own (bench/gpu.py runs these tests four at a time)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port()), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def test_zero2_fp16_trains_without_an_overflow_storm(tmp_path):
    run_dir = tmp_path / "zero2"
    _launch(
        ["--config_file", "accelerate_configs/deepspeed_zero2.yaml", "--num_processes", "1", "expr/train.py",
         "--train.epochs", "4", "--train.output_dir", str(run_dir), "--train.log_with", "none"],
        tmp_path,
    )  # fmt: skip
    final = json.loads((run_dir / "final.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    assert final["fp16_skipped_steps"] <= max(5, 0.05 * final["global_step"])  # the first scale-finding steps only
    assert final["fp16_loss_scale"] >= 1.0  # DeepSpeed's dynamic scaler, read back: scaling ran
    assert final["best"]["macro_f1"] > 0.8


def test_online_mode_runs_fp16_encoders_on_the_gpu(tmp_path):
    from mediatree import affwild2_tree, small_backbone_dirs

    from expr.extract import items_from_affwild2, prepare
    from expr.features.backbones import Backbones

    clip, w2v = small_backbone_dirs(tmp_path / "weights")
    affwild2_tree(tmp_path / "aw")
    items, source, classes = items_from_affwild2(str(tmp_path / "aw"))
    prepare(items, tmp_path / "store", Backbones(clip, w2v), classes, source=source, progress=False, media=True)
    run_dir = tmp_path / "online"
    _launch(
        ["--config_file", "accelerate_configs/single_gpu.yaml", "expr/train.py", "--data.cache",
         str(tmp_path / "store"), "--data.mode", "online", "--data.window", "10", "--data.stride", "5",
         "--train.epochs", "2", "--train.batch_size", "4", "--model.visual_dim", "16", "--model.audio_dim", "32",
         "--model.text_dim", "16", "--train.output_dir", str(run_dir), "--train.log_with", "none"],
        tmp_path,
    )  # fmt: skip
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("config", ["single_gpu", "deepspeed_zero2"])
@pytest.mark.parametrize("command", ["finetune", "train"])
def test_tuned_encoders_train_in_half_precision_on_the_gpu(tmp_path, config, command):
    """Stage I (`expr finetune`, LoRA) and online LoRA (`expr train --data.mode online`) under fp16 autocast and under
    DeepSpeed ZeRO-2 with fp16 weights: they train, validate and write only what trains."""
    from facetask import CLASSES, face_task
    from mediatree import small_backbone_dirs

    from expr.cli.prepare import main as prepare_main

    clip, w2v = small_backbone_dirs(tmp_path / "weights", clip_layers=2)
    csv = face_task(tmp_path / "tree")
    store = tmp_path / "store"
    assert prepare_main(["folder", str(tmp_path / "tree"), "--labels", str(csv), "--out", str(store), "--clip", clip,
                         "--wav2vec2", w2v, "--media", "--fps", "10", "--classes", ",".join(CLASSES),
                         "--no-progress"]) == 0  # fmt: skip
    run_dir = tmp_path / "run"
    args = ["--data.cache", str(store), "--data.classes", repr(CLASSES), "--finetune.method", "lora",
            "--train.epochs", "2", "--train.batch_size", "8", "--train.output_dir", str(run_dir),
            "--train.log_with", "none"]  # fmt: skip
    if command == "train":
        args += ["--data.mode", "online", "--data.window", "6", "--data.stride", "2", "--model.dim", "32",
                 "--model.heads", "2", "--finetune.audio_method", "lora"]  # fmt: skip
    _launch(["--config_file", f"accelerate_configs/{config}.yaml", "--num_processes", "1", "-m", "expr", command,
             *args], tmp_path)  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["train/loss"] == r["train/loss"] for r in rows)  # finite, no NaN
    best = run_dir / "best" / ("tuning.json" if command == "finetune" else "encoders.safetensors")
    assert best.is_file()
