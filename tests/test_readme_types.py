"""The README's Python examples type-check against the package, with mypy's defaults and with --strict.

The package ships ``py.typed``, so a user's type checker reads its annotations, including for
the names the package root loads lazily. Every ```` ```python ```` block of README.md that
imports from ``reer_otel_memory`` is written to a file of its own (the others are fragments:
they use names defined elsewhere); all of them are checked in one mypy run per mode, with the
package found on ``mypy_path`` and its own modules' errors silenced, as for an installed
library. About two seconds a mode, on a fresh cache.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
USES_PACKAGE = re.compile(r"^\s*(from|import) reer_otel_memory\b", re.M)

CONFIG = f"""\
[mypy]
mypy_path = {ROOT}
[mypy-reer_otel_memory.*]
follow_imports = silent
[mypy-psutil.*,numpy.*,yaml.*,pynvml.*]
ignore_missing_imports = True
[mypy-opentelemetry.instrumentation.instrumentor]
follow_imports = skip
"""


def readme_blocks() -> dict[int, str]:
    """The README's Python blocks that import the package, by the line of their opening fence."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return {text[: match.start()].count("\n") + 1: match.group(1) for match in FENCE.finditer(text) if USES_PACKAGE.search(match.group(1))}


@pytest.fixture(scope="module")
def block_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("readme_blocks")
    files = []
    for line, code in readme_blocks().items():
        path = folder / f"readme_line_{line}.py"
        path.write_text(code, encoding="utf-8")
        files.append(path)
    (folder / "mypy.ini").write_text(CONFIG, encoding="utf-8")
    return files


def test_the_readme_has_the_blocks_this_test_checks() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 4
    joined = "\n".join(blocks.values())
    for name in ("start_memory_monitoring()", "start_prometheus_exporter()", "memory_profile(", "capture_telemetry()"):
        assert name in joined


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_the_readme_examples_type_check(block_files: list[Path], strict: bool) -> None:
    pytest.importorskip("mypy")
    folder = block_files[0].parent
    arguments = ["--config-file", str(folder / "mypy.ini"), "--cache-dir", str(folder / ("cache-strict" if strict else "cache-default"))]
    arguments += ["--strict"] if strict else []
    # In a process of its own: run in this one, mypy leaves half a million objects alive, and every
    # later garbage collection of the test run walks them.
    completed = subprocess.run([sys.executable, "-m", "mypy", *arguments, *map(str, block_files)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, f"mypy {' '.join(arguments)} on the README's blocks:\n{completed.stdout}{completed.stderr}"
    assert f"no issues found in {len(block_files)} source files" in completed.stdout


def test_every_lazily_loaded_name_is_declared_for_type_checkers() -> None:
    # Without a declaration a lazy name is the module __getattr__'s ``object`` to a type checker.
    import reer_otel_memory

    tree = ast.parse((ROOT / "reer_otel_memory" / "__init__.py").read_text(encoding="utf-8"))
    declared: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom):
                    declared.update(alias.asname or alias.name for alias in statement.names)
                elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                    declared.add(statement.target.id)
    assert declared == set(reer_otel_memory._LAZY)
