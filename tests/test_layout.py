"""The package's structure: two floors, and imports that point down the data flow with nothing in a circle.

``expr/cli/`` holds the commands (one module per command, which ``expr.cli.COMMANDS`` dispatches to, and their helpers);
every other package is library, and the library never imports ``expr.cli``. A command never imports another command.
Library packages sit on floors in data-flow order (``FLOORS``): a module imports only from its own floor or the floors
below. Every import counts, including those inside functions, which would otherwise hide the structure; imports under
``if TYPE_CHECKING:`` are annotations only and do not count.
"""

import ast
from pathlib import Path

import expr
from expr.cli import COMMANDS

ROOT = Path(expr.__file__).parent
# Shared top-level modules first, then packages in data-flow order; a module may import its own floor and below.
FLOORS = [
    {"expr.atomic", "expr.locks", "expr.plots", "expr.tasks", "expr.config"},
    {"expr.data"},
    {"expr.features"},
    {"expr.models", "expr.extract"},
    {"expr.scoring"},
    {"expr.training"},
    {"expr.runs"},
    {"expr.video", "expr.sweep"},
    {"expr.cli", "expr.train", "expr.__main__"},
]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80
LONG_FUNCTIONS: set[str] = set()  # none: the training loop (Trainer.train_epoch) fits too


def floor(module: str) -> int:
    for n, names in enumerate(FLOORS):
        if any(module == m or module.startswith(m + ".") for m in names):
            return n
    raise AssertionError(f"{module} is on no floor: add it (or its package) to FLOORS in tests/test_layout.py")


def is_command(module: str) -> bool:
    """A module `expr COMMAND` dispatches to (expr.cli.COMMANDS); other modules of expr.cli are their helpers."""
    return module in {target.partition(":")[0] for target in COMMANDS.values()}


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        if "_torchvision_compat" in path.parts:
            continue
        name = ".".join(("expr", *path.relative_to(ROOT).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The expr modules ``path`` imports anywhere in it (``from expr.data import store`` counts as expr.data.store)."""
    found = set()
    tree = ast.parse(path.read_text())
    hidden = {id(n) for t in ast.walk(tree) if _type_checking(t) for n in ast.walk(t)}
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
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


def test_imports_point_down_the_floors():
    """No library module imports the command layer or a floor above its own; no command imports another."""
    wrong = set()
    for m, deps in graph().items():
        for d in deps:
            if is_command(m) and is_command(d):
                wrong.add(f"command {m} imports command {d}")
            elif floor(d) > floor(m):
                wrong.add(f"{m} (floor {floor(m)}) imports {d} (floor {floor(d)})")
    assert not wrong, sorted(wrong)


def test_top_level_holds_packages_and_few_small_modules():
    """expr/ holds packages, at most eight shared modules (besides __init__, __main__ and the train.py shim)."""
    shared = [p for p in ROOT.glob("*.py") if p.name not in ("__init__.py", "__main__.py", "train.py")]
    assert len(shared) <= 8, sorted(p.name for p in shared)
    assert len((ROOT / "train.py").read_text().splitlines()) <= 20, "expr/train.py stays a shim"


def test_sizes():
    """No module over MAX_MODULE_LINES lines, no function over MAX_FUNCTION_LINES (but the listed exceptions)."""
    long = []
    for name, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            body = getattr(node, "body", [])
            for child in body if isinstance(body, list) else []:
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    size = child.end_lineno - child.lineno + 1
                    qual = (
                        f"{name}.{node.name}.{child.name}" if isinstance(node, ast.ClassDef) else f"{name}.{child.name}"
                    )
                    if size > MAX_FUNCTION_LINES and qual not in LONG_FUNCTIONS:
                        long.append(f"{qual}: {size} lines")
    assert not long, long


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
    """The graph must count an import hidden inside a function (the way cycles hid before), not a type-only one."""
    f = tmp_path / "m.py"
    f.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from expr.cli import train\n"
        "def f():\n    from expr.training import trainer\n    from expr.data import store\n"
    )
    known = {"expr.training", "expr.training.trainer", "expr.data", "expr.data.store", "expr.cli", "expr.cli.train"}
    assert imports_of(f, known) == {"expr.training", "expr.training.trainer", "expr.data", "expr.data.store"}
    assert floor("expr.data.store") < floor("expr.training.trainer") < floor("expr.cli.train")
    assert is_command("expr.cli.train") and not is_command("expr.cli._training") and not is_command("expr.cli.options")
