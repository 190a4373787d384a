# Every target creates .venv on first use, so a fresh clone needs nothing but Python 3.10+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint bench bench-quick demo stack deploy install clean

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

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks

# The same figures on smaller inputs (under a minute), for day-to-day use.
bench-quick: $(STAMP)
	REER_BENCH_QUICK=1 $(PY) -m benchmarks

demo: $(STAMP)
	$(PY) -m reer_otel_memory demo $(DEMO_ARGS)

# The demo, Prometheus and Alertmanager on loopback, alerts printed as they fire; Ctrl-C stops them.
stack: $(STAMP)
	$(PY) -m reer_otel_memory.deploy.stack $(STACK_ARGS)

# The shipped alert rules, dashboard and examples under deploy/, from the generators.
deploy: $(STAMP)
	$(PY) -c 'from reer_otel_memory import deploy; deploy.write_deploy_files("deploy")'

clean:
	rm -rf $(VENV) build *.egg-info
