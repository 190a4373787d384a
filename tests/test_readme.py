"""The README's runnable blocks, run as written, so the README cannot drift from the package.

A block is runnable when the line before its opening fence is ``<!-- test: run -->``. Python
blocks run in a fresh interpreter; any ``test_*`` function a block defines is then called.
Shell blocks run with bash, line by line as written (``\\`` continuations joined), in a
temporary directory holding a toy service ``myservice`` (a package whose ``app.handle`` is the
profile target the README names; ``python -m myservice`` calls it, and prints its own ``/metrics`` page when the
Prometheus exporter serves one). One exception: a ``pip install`` line is skipped, since the
test must not reach the network; the test environment already has the package and every
extra installed, which is what that line would give. The environment is the test run's minus
every ``OTEL_*`` and ``REER_MEMORY_*`` variable, with the Prometheus port set to a free one and
the OTLP export timeout to 1 s: with no collector listening, each export gives up after it instead
of the default 10 s (the same failed attempts and warnings, a shorter wait at exit).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _children import clean_environment, free_port

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- test: run -->"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)

TOY_APP = '''
def handle(size):
    return len(bytearray(size))
'''

TOY_SERVICE = '''
"""A toy service: calls its handler, then shows what its /metrics page says about it."""
import os
import urllib.request

from myservice.app import handle

if __name__ == "__main__":
    for _ in range(3):
        handle(1 << 20)
    if os.environ.get("OTEL_METRICS_EXPORTER") == "prometheus":
        port = os.environ["TOY_METRICS_PORT"]  # the instrumentor sets the variable to 0 for spawned workers
        with urllib.request.urlopen(f"http://localhost:{port}/metrics", timeout=10) as response:
            page = response.read().decode()
        print("\\n".join(line for line in page.splitlines() if line.startswith("reer_memory")))
    print("myservice done")
'''


def runnable_blocks() -> list[tuple[str, str, int]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        if before == MARKER:
            blocks.append((match.group(1), match.group(2), text[: match.start()].count("\n") + 1))
    return blocks


BLOCKS = runnable_blocks()


def test_the_readme_marks_the_quick_start_the_zero_code_commands_and_the_testing_snippet() -> None:
    languages = [language for language, _, _ in BLOCKS]
    assert languages.count("sh") >= 2 and languages.count("python") >= 3
    assert any("capture_telemetry" in body for _, body, _ in BLOCKS)
    assert any("OTEL_METRICS_EXPORTER=prometheus" in body for _, body, _ in BLOCKS)
    assert any("OTEL_EXPORTER_OTLP_ENDPOINT" in body for _, body, _ in BLOCKS)


def shell_commands(body: str) -> list[str]:
    return [line for line in body.replace("\\\n", " ").splitlines() if line.strip() and not line.lstrip().startswith("pip install")]


def block_param(language: str, body: str, line: int) -> object:
    """A block as a test case: e2e where it starts a service under ``opentelemetry-instrument``."""
    marks = [pytest.mark.e2e] if "opentelemetry-instrument" in body else []
    return pytest.param(language, body, line, id=f"README.md:{line}", marks=marks)


@pytest.mark.parametrize(("language", "body", "line"), [block_param(*block) for block in BLOCKS])
def test_readme_block_runs_as_written(tmp_path: Path, language: str, body: str, line: int) -> None:
    port = str(free_port())
    env = clean_environment({"OTEL_EXPORTER_PROMETHEUS_PORT": port, "TOY_METRICS_PORT": port, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's python and scripts
    if language == "python":
        script = tmp_path / "block.py"
        script.write_text(
            body + "\n\nfor _name, _test in list(globals().items()):\n    if _name.startswith('test_') and callable(_test):\n        _test()\n"
        )
        result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"README.md:{line}\n{result.stdout}{result.stderr}"
        return
    assert language == "sh"
    package = tmp_path / "myservice"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "app.py").write_text(textwrap.dedent(TOY_APP))
    (package / "__main__.py").write_text(textwrap.dedent(TOY_SERVICE))
    for command in shell_commands(body):
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"README.md:{line}: {command}\n{output}"
        assert "Traceback" not in output and "Failed to auto initialize" not in output, f"README.md:{line}: {command}\n{output}"
        if "opentelemetry-instrument" in command:
            assert "myservice done" in result.stdout, output
        if "OTEL_METRICS_EXPORTER=prometheus" in command:
            assert "reer_memory_rss_bytes" in result.stdout
            assert 'reer_operation="myservice.app.handle"' in result.stdout
        if "OTEL_TRACES_EXPORTER=console" in command:
            assert '"name": "myservice.app.handle"' in result.stdout
