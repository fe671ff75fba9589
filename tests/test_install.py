"""The install works on a CPU-only machine: every dependency imports and the `accelerate` command runs."""

import subprocess
import sys

import pytest
from conftest import accelerate_cmd


@pytest.mark.slow
def test_every_dependency_imports():
    code = (
        "import torch, accelerate, deepspeed, open_clip, transformers, datasets, evaluate, optuna, yaml, av, "
        "safetensors, torchvision, timm; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_accelerate_command_runs():
    out = subprocess.run(accelerate_cmd() + ["env"], capture_output=True, text=True, env=_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "`Accelerate` version" in out.stdout


def test_compat_hook_only_acts_when_torchvision_ops_are_missing():
    code = (
        "import torch, torchvision, expr._torchvision_compat as c;"
        "ops_ok = c._torchvision_ops_load();"
        "print(c.patched, ops_ok)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    patched, ops_ok = out.stdout.split()
    # Exactly one of the two: torchvision's own ops loaded, or the hook registered the schemas.
    assert (patched == "True") != (ops_ok == "True")


def _env():
    import os

    env = dict(os.environ)
    env.pop("EXPR_NO_TORCHVISION_COMPAT", None)
    env["DS_ACCELERATOR"] = env.get("DS_ACCELERATOR", "cpu")
    return env


def test_cpu_torch_brought_no_cuda_packages():
    import importlib.metadata

    import torch

    if torch.version.cuda is not None:
        return  # a CUDA install is expected to carry them
    names = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    assert not {n for n in names if n.startswith(("nvidia-", "triton"))}


def test_expr_command_runs():
    exe = __import__("pathlib").Path(sys.executable).with_name("expr")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout


def test_the_face_detectors_weights_come_with_the_install():
    from expr.features.mtcnn import weights_dir

    assert sorted(p.name for p in weights_dir().glob("*net.pt")) == ["onet.pt", "pnet.pt", "rnet.pt"]
