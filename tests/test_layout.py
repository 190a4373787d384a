"""The package's shape: importing it changes nothing in the process, and imports point one way.

The import graph is read from the source (every ``import`` statement, at module level or inside a
function, except those under ``if TYPE_CHECKING:``), so a cycle hidden in a function-level import
counts too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import reer_otel_memory

PACKAGE_DIR = Path(reer_otel_memory.__file__).parent
PACKAGE = "reer_otel_memory"

#: What each part of the package may import, besides itself. The core (top-level private
#: modules, config, levels, errors) is importable from everywhere.
CORE = {"_names", "_runtime", "_telemetry", "_version", "_cgroup", "config", "levels", "errors"}
ALLOWED = {
    "profiling": CORE,
    "monitoring": CORE | {"profiling"},
    "export": CORE | {"monitoring", "profiling"},
    "ml": CORE | {"profiling", "monitoring"},
    "trace_store": CORE | {"profiling", "monitoring"},
    "deploy": CORE | {"export"},
    "frameworks": CORE | {"profiling"},
    "instrumentation": CORE | {"profiling", "monitoring", "export", "frameworks"},
}


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every package module ``path`` imports, resolved to its full dotted name."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if _annotations_only(node):
            node.body = []  # never executed: an import for type checkers is no dependency
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(PACKAGE))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            elif node.module and node.module.startswith(PACKAGE):
                base = node.module
            else:
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if module_path(candidate) is not None else base)
    return {module for module in found if module_path(module) is not None} - {name}


def _annotations_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def module_path(name: str) -> Path | None:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    for candidate in (PACKAGE_DIR / relative.with_suffix(".py"), PACKAGE_DIR / relative / "__init__.py"):
        if relative != Path() and candidate.is_file():
            return candidate
    return PACKAGE_DIR / "__init__.py" if name == PACKAGE else None


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def part_of(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_the_graph_sees_the_imports_it_should():
    graph = import_graph()
    assert "reer_otel_memory.profiling.probe" in graph["reer_otel_memory.profiling.operations"]
    assert "reer_otel_memory._runtime" in graph["reer_otel_memory.config"]
    assert "reer_otel_memory.trace_store.store" in graph["reer_otel_memory.trace_store"]


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    # The package root re-exports the API: it imports everything and nothing imports it.
    graph.pop(PACKAGE)
    importers_of_root = sorted(module for module, imports in graph.items() if PACKAGE in imports)
    assert not importers_of_root, f"modules importing the package root: {importers_of_root}"
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                cycle = [*stack[stack.index(imported) :], imported]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_dependencies_point_one_way():
    wrong = []
    for module, imports in import_graph().items():
        part = part_of(module)
        if part not in ALLOWED:
            continue
        for imported in imports:
            target = part_of(imported)
            if target != part and target not in ALLOWED[part]:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(sorted(wrong))


IMPORT_CHECK = """
import json, os, threading
def hwm_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
def descriptors():
    return sorted(os.listdir("/proc/self/fd"))
ballast = bytearray(300 * 1024 * 1024)
ballast[::4096] = b"x" * len(ballast[::4096])
del ballast
hwm_before, fds_before, threads_before = hwm_kib(), descriptors(), threading.active_count()
import reer_otel_memory
from reer_otel_memory import memory_profile, memory_context, MemoryMonitor, StreamingJSONLReader
from reer_otel_memory.trace_store import REERTraceStore
import reer_otel_memory.testing, reer_otel_memory.instrumentation, reer_otel_memory.export.endpoint
import reer_otel_memory.ml.profiler, reer_otel_memory.ml.resources, reer_otel_memory.ml.lazy
fds_after = descriptors()
print(json.dumps({
    "hwm_before": hwm_before, "hwm_after": hwm_kib(),
    "fds_before": fds_before, "fds_after": fds_after,
    "threads_before": threads_before, "threads_after": threading.active_count(),
}))
"""


def test_importing_the_package_changes_nothing_in_the_process():
    completed = subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    seen = json.loads(completed.stdout)
    assert seen["hwm_before"] > 300 * 1024, seen  # the 300 MB the child touched set the mark
    assert seen["hwm_after"] >= seen["hwm_before"], f"the import reset the kernel's high-water mark: {seen}"
    assert seen["fds_after"] == seen["fds_before"], f"the import left files open: {seen}"
    assert seen["threads_after"] == seen["threads_before"], f"the import started threads: {seen}"
