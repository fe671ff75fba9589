"""Benchmarks that cannot rot: every ``bench/*.py`` with a ``__main__`` runs here at its smallest honest size (its
module-level ``SMOKE`` arguments) and must print its figures (a Markdown table with numbers)."""

import ast
import json
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


RUNNERS = 2  # interpreters at once, one per core of the 2-core machines this suite targets


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> dict[str, dict]:
    """Every script at its smallest size, run as ``__main__`` in fresh interpreters (this file run as a script), each
    interpreter running several scripts one after another: torch, transformers and open_clip are imported once per
    interpreter, not once per script, and the pytest process keeps none of the scripts' global state. Script i runs in
    interpreter i % RUNNERS, the interpreters at once (one thread each). Per script: exit code, stdout, stderr's end."""
    tmp = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "EXPR_CACHE_DIR": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    procs = []
    for r in range(RUNNERS):
        names = [p.name for p in SCRIPTS[r::RUNNERS]]
        cmd = [sys.executable, __file__, str(tmp), str(tmp / f"runs{r}.json"), *names]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp))
    runs = {}
    for r, proc in enumerate(procs):
        _, err = proc.communicate(timeout=900)
        result = tmp / f"runs{r}.json"
        assert result.is_file(), f"benchmark runner {r} died:\n{err[-3000:]}"
        runs.update(json.loads(result.read_text()))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_the_benchmark_runs_at_its_smallest_size_and_prints_its_figures(script, smoke_runs):
    run = smoke_runs[script.name]
    assert run["code"] == 0, f"{script.name} {run['args']} failed:\n{run['stderr'][-3000:]}"
    if needs_gpu(script) and not _cuda():
        assert len(run["stdout"].strip().splitlines()) == 1 and "no CUDA GPU" in run["stdout"], run["stdout"][-2000:]
        return
    assert figure_rows(run["stdout"]), f"{script.name} printed no figures:\n{run['stdout'][-2000:]}"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_all(tmp: Path, result: Path, names: list[str]) -> None:
    """Run the scripts ``names`` as ``__main__`` with their SMOKE arguments in this interpreter, each in its own
    folder, and write what each printed to ``result`` (after every script, so a crash keeps the scripts before it)."""
    import contextlib
    import io
    import runpy
    import time
    import traceback

    sys.path.insert(0, str(BENCH))
    runs = {}
    for script in (BENCH / name for name in names):
        folder = tmp / script.stem
        folder.mkdir()
        args = shlex.split(smoke_arguments(script).format(tmp=folder))
        out, err, code = io.StringIO(), io.StringIO(), 0
        os.chdir(folder)
        sys.argv = [str(script), *args]
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(script), run_name="__main__")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - reported per script, the others still run
                traceback.print_exc()
                code = 1
        runs[script.name] = {"code": code, "args": " ".join(args), "stdout": out.getvalue(),
                             "stderr": err.getvalue()[-6000:], "seconds": time.perf_counter() - t0}  # fmt: skip
        result.write_text(json.dumps(runs))


if __name__ == "__main__":
    run_all(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
