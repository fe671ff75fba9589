"""The package's structure: imports point down the data flow, and nothing imports in a circle.

Library modules (data, features, models, losses, metrics, the inference path, run loading, checkpoints) never import
a command module; every import counts, including those inside functions, which would otherwise hide the structure.
"""

import ast
from pathlib import Path

import expr

ROOT = Path(expr.__file__).parent
COMMANDS = {"expr.cli", "expr.train", "expr.prepare", "expr.report", "expr.submit", "expr.predict", "expr.export"}
COMMANDS |= {"expr.__main__", "expr.store_info", "expr.finetune", "expr.ensemble", "expr.calibrate"}


def is_command(module: str) -> bool:
    return module in COMMANDS or module == "expr.sweep" or module.startswith("expr.sweep.")


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        if "_torchvision_compat" in path.parts:
            continue
        name = ".".join(("expr", *path.relative_to(ROOT).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = path
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The expr modules ``path`` imports anywhere in it (``from expr.data import store`` counts as expr.data.store)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known and n != "expr"}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def test_library_modules_never_import_commands():
    wrong = {f"{m} imports {c}" for m, deps in graph().items() if not is_command(m) for c in deps if is_command(c)}
    assert not wrong, sorted(wrong)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d) :] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_the_checks_see_function_level_imports(tmp_path):
    """The graph must count an import hidden inside a function (the way cycles hid before)."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from expr.train import run\n    from expr.data import store\n")
    assert imports_of(f, {"expr.train", "expr.data", "expr.data.store"}) == {
        "expr.train",
        "expr.data",
        "expr.data.store",
    }
