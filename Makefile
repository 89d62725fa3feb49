# Two commands: `make demo` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STORE := out/demo.h5
# The demo records on the shipped LLaDA-style model organism (data/models/organism-llada).
DEMO_MODEL := organism-llada

.PHONY: setup test demo bench organisms clean

setup: $(STAMP)

# torch is pinned here (a CPU build on this machine's disk); pyproject declares a range that admits it.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --durations=10 --timeout=600 tests

demo: setup
	mkdir -p out
	HF_HUB_OFFLINE=1 $(BIN)/mdlm-interp record --model $(DEMO_MODEL) --masks 50 --out $(DEMO_STORE) --overwrite
	HF_HUB_OFFLINE=1 $(BIN)/mdlm-interp summary $(DEMO_STORE)

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py

organisms: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m mdlm_interp.training.organisms

clean:
	rm -rf out .pytest_cache
