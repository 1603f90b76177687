# Two commands: `make demo` (the main job) and `make test` (lint and every test);
# `make test-fast` runs the tests not marked slow, the inner loop while developing.
# TORCH_SPEC installs torch before the project; on a GPU machine override it, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev,torchjd,accelerate]"
	touch $(STAMP)

install: $(STAMP)

# The main job: the recommended ANT recipe (--ant; for DDPM: ANT-UW on the 8x8 digits over 5
# intervals chosen from the task affinity that the run measures on its own weights after a
# vanilla warm-up, --clusters affinity:5:auto).
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/antdiff train --preset demo --ant --out runs/demo
	$(BIN)/antdiff evaluate --run runs/demo --num 500
	@echo "samples: runs/demo/samples.png  report: runs/demo/report.html"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

test: lint
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
