"""What only a GPU can show: DeepSpeed ZeRO-2 with fp16 dynamic loss scaling, and online mode with fp16 encoders on
CUDA. CI has no GPU, so these skip there; on a GPU machine `./launch.sh test tests/test_gpu.py` runs them."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: fp16 loss scaling and fp16 encoders only exist on CUDA (DeepSpeed and DDP run on CPU in "
    "tests/test_distributed.py and tests/test_online.py)",
)


def _launch(args, tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *args]
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
    assert final["best"]["macro_f1"] > 0.8


def test_online_mode_runs_fp16_encoders_on_the_gpu(tmp_path):
    from mediatree import affwild2_tree, small_backbone_dirs

    from expr.features.backbones import Backbones
    from expr.prepare import items_from_affwild2, prepare

    clip, w2v = small_backbone_dirs(tmp_path / "weights")
    affwild2_tree(tmp_path / "aw")
    from types import SimpleNamespace

    items, source, classes = items_from_affwild2(
        SimpleNamespace(root=str(tmp_path / "aw"), test_names=None, annotation_dir=None, crop_dirs=None)
    )
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
