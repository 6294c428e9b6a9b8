"""The package's layers import downward only, and no module imports another in a cycle.

Each module's imports are read from its source (function-level imports included),
so a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "onnxjpq"

# lowest first; a module may import its own package and any lower layer, nothing else
LAYERS = (
    ("errors", "_version"),
    ("core",),
    ("graph",),
    ("methods", "rewrite", "runtime"),
    ("pipeline",),
    ("workflows", "testing", "zoo"),
    ("finetune",),
    ("cli",),
    ("__main__",),
)
RANK = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """onnxjpq modules `path` imports (absolute names), wherever in the file."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block) for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found |= {n for n in names if _is_module(n)} or {target}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if name == "onnxjpq" or name.startswith("onnxjpq.")}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _room(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_room_is_declared_in_a_layer():
    rooms = {_room(m) for m in _graph()} - {""}
    assert rooms <= set(RANK), f"undeclared: {sorted(rooms - set(RANK))}"


def test_imports_run_downward_only():
    upward = []
    for module, targets in _graph().items():
        if module == "onnxjpq":  # the public facade re-exports from every layer
            continue
        for target in targets:
            if target == "onnxjpq":
                upward.append(f"{module} -> the package root")
                continue
            mine, theirs = _room(module), _room(target)
            if mine != theirs and RANK[theirs] >= RANK[mine]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that do not run downward:\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_modules():
    graph = _graph()
    graph.pop("onnxjpq")
    state, cycles = {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_import_onnxjpq_loads_neither_torch_nor_matplotlib():
    code = "import sys, onnxjpq, onnxjpq.cli; print(sorted({'torch', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
