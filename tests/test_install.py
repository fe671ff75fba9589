"""The install works on a CPU-only machine: every dependency imports and the `accelerate` command runs."""

import subprocess
import sys

from conftest import accelerate_cmd


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
