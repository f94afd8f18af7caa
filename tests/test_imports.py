"""The package's import graph: no cycles, imports only run downward, nothing heavy at import time.

Every ``import`` and ``from ... import`` of a ``regenesis_pl`` module is read from the source (function-local
imports included: a cycle hidden inside a function is still a cycle in the design).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "regenesis_pl"

# Lower layers never import higher ones. Within a layer, the graph must still be acyclic.
LAYERS = [
    # 0: foundations: files, names, hashes, round arithmetic, sharding, the embedded model's source, the console
    {"paths", "hashing", "atomic", "layout", "run_lock", "round_schedule", "sharding", "embedded_model", "model_source", "console"},
    # 1: tasks, prompts, engines and the method (pure functions over typed records)
    {"tasks", "chat", "engines", "method"},
    # 2: a round's data (synthesis, store), the DataModule's tokenization, the model, evaluation and reports
    {"round", "data", "model", "evaluation", "report", "study"},
    # 3: Lightning callbacks and the command functions
    {"callbacks", "commands"},
    # 4: entry points
    {"lightning_cli", "cli", "config_reference", "config_renames", "__init__"},
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("regenesis_pl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("regenesis_pl"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if key in names:
            return i
    raise AssertionError(f"{module}: not assigned to a layer in tests/test_imports.py")


def _is_package_init(module: str, target: str) -> bool:
    """``regenesis_pl.engines.factory`` importing ``regenesis_pl.engines`` would be a package-init edge."""
    return module.startswith(target + ".")


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_imports_only_run_downward():
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            if _layer(target) > _layer(module) and not _is_package_init(module, target):
                upward.append(f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})")
    assert not upward, "\n".join(sorted(upward))


def test_cycle_check_can_fail(tmp_path, monkeypatch):
    """The cycle finder reports a planted cycle (so a green run means something)."""
    pkg = tmp_path / "regenesis_pl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "hashing.py").write_text("from regenesis_pl.atomic import x\n")
    (pkg / "atomic.py").write_text("def f():\n    from regenesis_pl.hashing import y\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    try:
        test_no_import_cycle()
    except AssertionError as err:
        assert "regenesis_pl.atomic -> regenesis_pl.hashing -> regenesis_pl.atomic" in str(err)
    else:
        raise AssertionError("the planted cycle was not found")


def test_modules_stay_small():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert not long, f"modules over ~400 lines: {long}"


def test_package_imports_without_heavy_backends():
    """Importing every module loads neither vLLM nor bitsandbytes, and touches no CUDA device."""
    code = ("import pkgutil, importlib, sys, regenesis_pl\n"
            "for m in pkgutil.walk_packages(regenesis_pl.__path__, 'regenesis_pl.'):\n"
            "    importlib.import_module(m.name)\n"
            "heavy = sorted(n for n in ('vllm', 'bitsandbytes') if n in sys.modules)\n"
            "import torch\n"
            "print(heavy, torch.cuda.is_initialized())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[] False"
