# probestore: every set-up step lives here, so that a fresh clone needs only
# `make demo` (the main job) and `make test` (the tests). CI runs `make test` (.ci/run).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The stamp depends on pyproject.toml: editing dependencies re-installs, otherwise
# `make setup` is a no-op that takes well under a second.
STAMP  := $(VENV)/.probestore-installed

DEMO_DIR    ?= demo-output
BENCH_DIR   ?= bench-output
PYTEST_ARGS ?=

.PHONY: setup test lint demo demo-data bench clean help

help:
	@echo "make demo   - train, extract, analyze and report the three paper experiments on real data"
	@echo "make test   - run the test suite (what CI runs)"
	@echo "make lint   - ruff + mypy"
	@echo "make bench  - extraction and analysis benchmarks -> $(BENCH_DIR)/ and BENCHMARKS.md figures"
	@echo "make setup  - create $(VENV) and install probestore[extract,dev] (done by the others)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[extract,dev]'
	@touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check probestore storage_schema extract analyze tests benchmarks experiments
	$(VENV)/bin/mypy

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package; install it when it
# is missing and we are root with apt (otherwise the demo says how to get it).
demo-data:
	@if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "$$PROBESTORE_DATA" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"; \
	    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
	     echo "could not install dataset-fashion-mnist; the demo will say where it looked"; \
	  fi; \
	fi

demo: setup demo-data
	$(PY) experiments/demo.py --out $(DEMO_DIR)

bench: setup
	$(PY) -m benchmarks.run --out $(BENCH_DIR)

clean:
	rm -rf $(DEMO_DIR) $(BENCH_DIR) .pytest_cache .ruff_cache .mypy_cache
