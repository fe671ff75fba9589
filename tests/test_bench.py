"""Benchmarks that cannot rot: every ``bench/*.py`` with a ``__main__`` runs here at its smallest honest size (its
module-level ``SMOKE`` arguments) and must print its figures (a Markdown table with numbers)."""

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if re.search(r'^if __name__ == "__main__":', p.read_text(), re.M))


def needs_gpu(script: Path) -> bool:
    """``NEEDS_GPU = True`` at the module level: without CUDA the script says so in one line and exits 0."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "NEEDS_GPU" for t in node.targets):
            return bool(ast.literal_eval(node.value))
    return False


def smoke_arguments(script: Path) -> str | None:
    """The string assigned to ``SMOKE`` at the module level of ``script``, or None."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SMOKE" for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def figure_rows(output: str) -> list[str]:
    """The body rows of the Markdown tables in ``output`` that hold a number."""
    rows, in_table = [], False
    for line in output.splitlines():
        if re.match(r"^\|(---\|)+$", line.strip()):
            in_table = True
        elif in_table and line.startswith("|"):
            if re.search(r"\d", line):
                rows.append(line)
        else:
            in_table = False
    return rows


def test_every_benchmark_has_a_smallest_size():
    assert len(SCRIPTS) >= 8, [p.name for p in SCRIPTS]
    missing = [p.name for p in SCRIPTS if not isinstance(smoke_arguments(p), str)]
    assert not missing, f"bench scripts without a SMOKE = '...' string of arguments (their smallest size): {missing}"


def test_figure_rows_finds_only_numeric_table_rows():
    text = "### t\n\n| a | b |\n|---|---|\n| x | 1.5 |\n| y | z |\n\nplain 3 | text"
    assert figure_rows(text) == ["| x | 1.5 |"]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_the_benchmark_runs_at_its_smallest_size_and_prints_its_figures(script, tmp_path):
    args = shlex.split(smoke_arguments(script).format(tmp=tmp_path))
    env = {**os.environ, "EXPR_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, f"{script.name} {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    if needs_gpu(script) and not _cuda():
        assert len(proc.stdout.strip().splitlines()) == 1 and "no CUDA GPU" in proc.stdout, proc.stdout[-2000:]
        return
    assert figure_rows(proc.stdout), f"{script.name} printed no figures:\n{proc.stdout[-2000:]}"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
