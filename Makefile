# Every target creates .venv on first use, so a fresh clone needs nothing but Python 3.10+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast test-minimums lint bench bench-quick demo stack deploy install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# ruff over the repository, mypy --strict over the package (settings in pyproject.toml).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: $(STAMP) lint
	$(PY) -m pytest -q tests

# The unit loop: no e2e tests (Prometheus, promtool, Alertmanager, real servers), none over about 2 s, no lint.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e and not slow" tests

# The lowest version pyproject.toml allows of every dependency (.ci/minimums.txt), in a fresh venv
# of its own, and the tests that read what those versions provide: the minimums file against
# pyproject, heap readings and trims, the exporter's naming rules, /metrics and its exposition,
# profiled calls, the instrumentor under opentelemetry-instrument, JSONL reads, the YAML under deploy/.
MIN_VENV := .venv-min
MIN_TESTS := tests/test_dependencies.py tests/test_naming.py tests/test_exposition.py tests/test_endpoint_http.py \
	tests/test_probe.py tests/test_profile.py tests/test_instrumentor.py tests/test_jsonl.py tests/test_rules.py
test-minimums:
	rm -rf $(MIN_VENV)
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(MIN_VENV)/bin/python -m pip install -q -c .ci/minimums.txt -e . pytest pytest-timeout hypothesis opentelemetry-distro
	$(MIN_VENV)/bin/python -m pip check
	$(MIN_VENV)/bin/python -m pytest -q $(MIN_TESTS)

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks $(BENCH_ARGS)

# The same figures on smaller inputs (under a minute), for day-to-day use.
bench-quick: $(STAMP)
	REER_BENCH_QUICK=1 $(PY) -m benchmarks $(BENCH_ARGS)

demo: $(STAMP)
	$(PY) -m reer_otel_memory demo $(DEMO_ARGS)

# The demo, Prometheus and Alertmanager on loopback, alerts printed as they fire; Ctrl-C stops them.
stack: $(STAMP)
	$(PY) scripts/stack.py $(STACK_ARGS)

# The shipped alert rules, dashboard and examples under deploy/, from the generators.
deploy: $(STAMP)
	$(PY) scripts/deploy_files.py deploy

clean:
	rm -rf $(VENV) $(MIN_VENV) build *.egg-info
