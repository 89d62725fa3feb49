# Two commands: `make demo` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STORE := out/demo.h5
DEMO_REPORT := out/demo-report
# The demo records on the shipped LLaDA-style model organism (data/models/organism-llada).
DEMO_MODEL := organism-llada

.PHONY: setup test demo bench organisms clean

setup: $(STAMP)

# torch is pinned here (a CPU build on this machine's disk); pyproject declares a range that admits it.
# Debian's chromium (for the report.html browser tests; never a browser download) is installed when missing and
# running as root; elsewhere those tests skip and say why.
$(STAMP): pyproject.toml
	command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || (apt-get update -qq && apt-get install -y -qq chromium)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

# Two test processes (pytest-xdist), one per core, tests handed out as the processes free up (worksteal:
# the long documentation runs go to both); one OpenMP thread each so the two do not contend.
test: setup
	command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || (apt-get update -qq && apt-get install -y -qq chromium)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=10 --timeout=600 tests

# 1 and 50 masks plus the " ." filler control, 10 prompts per task, the attention rows of 2 examples per condition;
# analyze prints the inverse-scaling table and the paths of report.md and report.html.
# One OpenMP thread: on 2 shared cores two threads contend (measured 57.6 s against 82.9 s for this record).
demo: setup
	mkdir -p out
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/mdlm-interp record --model $(DEMO_MODEL) --masks 1,50 --filler " ." --n 10 --keep-examples 2 \
		--out $(DEMO_STORE) --overwrite > /dev/null
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/mdlm-interp analyze $(DEMO_STORE) --out $(DEMO_REPORT)

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py

organisms: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m mdlm_interp.training.organisms

clean:
	rm -rf out .pytest_cache
