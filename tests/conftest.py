import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def expr_cache(tmp_path_factory):
    """One cache (demo stores, text embeddings) for the whole session, inherited by subprocesses."""
    path = os.environ.get("EXPR_TEST_CACHE_DIR") or str(tmp_path_factory.mktemp("expr-cache"))
    old = os.environ.get("EXPR_CACHE_DIR")
    os.environ["EXPR_CACHE_DIR"] = path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield Path(path)
    if old is None:
        os.environ.pop("EXPR_CACHE_DIR", None)
    else:
        os.environ["EXPR_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def small_store(expr_cache):
    """A small demo store (12 videos) for data and training tests."""
    from expr.data.demo import ensure_demo_store

    return ensure_demo_store(12, seed=0)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, small_store):
    """A tiny finished run (2 epochs on the 12-video demo store) for evaluation and submission tests."""
    from expr.config import build_config
    from expr.training.trainer import run

    out = tmp_path_factory.mktemp("run") / "r"
    cfg = build_config(
        {
            "data.demo_videos": 12,
            "model.tcn_blocks": 2,
            "train.epochs": 2,
            "train.batch_size": 16,
            "train.output_dir": str(out),
            "train.log_with": "none",
        },
        preset="demo",
    )
    return run(cfg)


@pytest.fixture(scope="session")
def multi_task_run(tmp_path_factory, small_store):
    """A tiny finished run of the three tasks (3 epochs on the 12-video demo store, whose videos carry VA and AU; a
    few of them held out by one task and so kept out of every task's training)."""
    from expr.config import build_config
    from expr.training.trainer import run

    out = tmp_path_factory.mktemp("mt") / "run"
    cfg = build_config({"data.demo_videos": 12, "model.tcn_blocks": 2, "train.epochs": 3, "train.batch_size": 16,
                        "train.output_dir": str(out), "train.log_with": "none", "train.tasks": ["expr", "va", "au"]},
                       preset="demo")  # fmt: skip
    return run(cfg)


def accelerate_cmd() -> list[str]:
    """The `accelerate` executable of this interpreter's environment."""
    exe = Path(sys.executable).with_name("accelerate")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]
