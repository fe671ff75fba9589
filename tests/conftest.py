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


def accelerate_cmd() -> list[str]:
    """The `accelerate` executable of this interpreter's environment."""
    exe = Path(sys.executable).with_name("accelerate")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]
