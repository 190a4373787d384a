"""The pytest entry point of reer-otel-memory: options only, until the memory budgets are asked for.

pytest loads this module in every run wherever the package is installed (entry point ``pytest11``,
name ``reer_otel_memory``), so it lives outside the package: importing it imports neither the
package nor OpenTelemetry. It adds the plugin's options and ini keys; only when one of them, or
``-p reer_otel_memory``, asks for the budgets does it load :mod:`reer_otel_memory.pytest_plugin`
(the manual is there) and register it.
"""

from __future__ import annotations

import pytest

#: The entry point's name: ``-p reer_otel_memory`` enables the plugin, ``-p no:reer_otel_memory`` removes it.
PLUGIN_NAME = "reer_otel_memory"
#: The name the full plugin module has when a conftest or ``-p`` loads it directly.
MODULE_NAME = "reer_otel_memory.pytest_plugin"


def add_options(parser: pytest.Parser) -> None:
    """The plugin's command-line options and ini keys (added once, by whichever module loads first)."""
    group = parser.getgroup("reer-otel-memory", "memory budgets (reer_otel_memory; manual: reer_otel_memory.pytest_plugin)")
    group.addoption("--memory-limit", metavar="SIZE", default=None,
                    help="a limit_memory(SIZE) for every test without its own marker (enables the plugin)")
    group.addoption("--memory-report", action="store_true", default=False,
                    help="print each measured test's peak, retained and heap figures at the end (enables the plugin)")
    group.addoption("--memory-baseline", metavar="FILE", default=None,
                    help="write the tests' memory figures to FILE, or compare with it under --memory-fail-on-increase")
    group.addoption("--memory-fail-on-increase", metavar="PCT", default=None,
                    help="fail tests whose figure grew by more than PCT%% over --memory-baseline FILE")
    parser.addini("memory_budgets", "enable the reer_otel_memory memory budgets plugin", type="bool", default=False)
    parser.addini("memory_limit", "a limit_memory(SIZE) for every test without its own marker", default="")


def enabled(config: pytest.Config) -> bool:
    """Whether this run asked for the memory budgets."""
    plugins = config.getoption("plugins", None) or []
    return bool(
        PLUGIN_NAME in plugins
        or config.getini("memory_budgets")
        or config.getini("memory_limit")
        or config.getoption("memory_limit")
        or config.getoption("memory_report")
        or config.getoption("memory_baseline")
        or config.getoption("memory_fail_on_increase")
    )


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if not pluginmanager.has_plugin(MODULE_NAME):
        add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    if enabled(config):
        from reer_otel_memory.pytest_plugin import activate

        activate(config)
