"""The package as installed: public names, the spec's API surface, the command and its metadata."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import reer_otel_memory

# Every name memory-profiling-tools.md imports, and what it then calls on it.
SPEC_NAMES = {
    "memory_profile": [],
    "memory_context": [],
    "setup_memory_limits": [],
    "set_memory_limit": [],
    "start_memory_monitoring": [],
    "stop_memory_monitoring": [],
    "setup_emergency_memory_handler": [],
    "get_memory_tracker": [],
    "get_memory_profiler": [],
    "get_resource_manager": [],
    "MemoryMonitor": ["start_monitoring", "add_callback"],
    "MemoryOptimizer": ["cleanup_large_objects", "force_garbage_collection", "optimize_numpy_arrays"],
    "LazyModelLoader": ["unload"],
    "StreamingJSONLReader": ["__iter__"],
    "_memory_monitor": ["_trigger_emergency_cleanup"],
}
TRACKER_API = ["get_memory_stats", "snapshots"]
PROFILER_API = ["profile_model_loading", "get_model_memory_recommendations"]
RESOURCE_MANAGER_API = ["register_resource", "cleanup_all_resources"]
TRACE_STORE_API = ["lazy_query_traces", "get_memory_efficient_stats", "stream_traces_filtered", "optimize_memory_usage"]
HEAVY_MODULES = ["monitoring", "trace_store", "ml", "export", "instrumentation", "deploy", "cli"]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_every_name_in_all_imports():
    names = reer_otel_memory.__all__
    assert len(names) == len(set(names)), "duplicates in __all__"
    for name in names:
        assert getattr(reer_otel_memory, name) is not None, name
    # A star import gives exactly these, in a fresh interpreter.
    completed = run_python("import json; ns = {}; exec('from reer_otel_memory import *', ns); print(json.dumps(sorted(k for k in ns if k != '__builtins__')))")
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == sorted(names)


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        reer_otel_memory.no_such_thing  # noqa: B018


@pytest.mark.parametrize("name", sorted(SPEC_NAMES))
def test_every_name_from_the_spec_imports(name):
    namespace: dict[str, object] = {}
    exec(f"from reer_otel_memory import {name}", namespace)
    value = namespace[name]
    for attribute in SPEC_NAMES[name]:
        assert hasattr(value, attribute), f"{name}.{attribute} is in the spec"


def test_objects_the_spec_uses_have_its_methods():
    for attribute in TRACKER_API:
        assert hasattr(reer_otel_memory.get_memory_tracker(), attribute)
    for attribute in PROFILER_API:
        assert hasattr(reer_otel_memory.get_memory_profiler(), attribute)
    for attribute in RESOURCE_MANAGER_API:
        assert hasattr(reer_otel_memory.get_resource_manager(), attribute)
    from reer_otel_memory.trace_store import REERTraceStore

    for attribute in TRACE_STORE_API:
        assert hasattr(REERTraceStore, attribute)
    assert reer_otel_memory.REERTraceStore is REERTraceStore


def test_importing_the_package_stays_light():
    completed = run_python(
        "import json, sys, reer_otel_memory; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('reer_otel_memory.'))))"
    )
    assert completed.returncode == 0, completed.stderr
    loaded = {name.removeprefix("reer_otel_memory.").split(".")[0] for name in json.loads(completed.stdout)}
    assert not loaded & set(HEAVY_MODULES), f"imported eagerly: {sorted(loaded & set(HEAVY_MODULES))}"


def test_distribution_metadata():
    assert importlib.metadata.version("reer-otel-memory") == reer_otel_memory.__version__
    metadata = importlib.metadata.metadata("reer-otel-memory")
    assert metadata["Requires-Python"] == ">=3.10"
    assert (Path(reer_otel_memory.__file__).parent / "py.typed").is_file()
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("reer-otel-memory") == "reer_otel_memory.cli:main"
    (instrumentor,) = [ep for ep in importlib.metadata.entry_points(group="opentelemetry_instrumentor") if ep.name == "reer_memory"]
    assert instrumentor.load() is reer_otel_memory.MemoryInstrumentor


def test_python_dash_m_help():
    completed = subprocess.run([sys.executable, "-m", "reer_otel_memory", "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("usage: reer-otel-memory")


def test_console_script_help_and_version():
    script = Path(sys.executable).parent / "reer-otel-memory"
    assert script.is_file() and os.access(script, os.X_OK), f"{script} is not installed"
    completed = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "usage: reer-otel-memory" in completed.stdout
    completed = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert reer_otel_memory.__version__ in completed.stdout


def test_every_third_party_import_of_the_package_is_a_declared_dependency():
    tomllib = pytest.importorskip("tomllib")
    import ast

    from packaging.requirements import Requirement

    def normal(name: str) -> str:
        return name.lower().replace("_", "-")

    package_dir = Path(reer_otel_memory.__file__).parent
    project = tomllib.loads((package_dir.parent / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    # The distribution's own modules (the pytest entry point ships beside the package) count as declared.
    declared = {normal(Requirement(r).name) for r in requirements} | {normal(project["name"])}
    # Which installed distribution ships each file: opentelemetry.* is one namespace over many.
    # (Each distribution's metadata is parsed once, not once per file it ships.)
    shipped_by = {}
    for dist in importlib.metadata.distributions():
        name = normal(dist.metadata["Name"])
        shipped_by.update((str(f), name) for f in dist.files or ())
    undeclared: dict[str, list[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [(alias.name,) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # ``from opentelemetry import trace`` names a submodule of a namespace package.
                modules = [(f"{node.module}.{alias.name}", node.module) for alias in node.names]
            else:
                continue
            for candidates in modules:
                module = candidates[-1]
                if module.split(".")[0] in sys.stdlib_module_names or module.split(".")[0] in ("reer_otel_memory", "__future__"):
                    continue
                stems = [candidate.replace(".", "/") for candidate in candidates]
                owner = next((shipped_by[f] for stem in stems for f in (f"{stem}/__init__.py", f"{stem}.py") if f in shipped_by), None)
                if owner not in declared:
                    undeclared.setdefault(f"{module} ({owner or 'not installed'})", []).append(path.name)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
