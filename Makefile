# `make run` and `make test` work on a fresh machine: they create .venv if missing,
# install the CPU build of torch pinned below (from the local wheel cache), then the package.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tertulia run burgers

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python benchmarks/orchestra_speed.py
	$(BIN)/python benchmarks/equilibrium.py
	$(BIN)/python benchmarks/kalman.py
	$(BIN)/python benchmarks/scan.py
	$(BIN)/python benchmarks/seq_mnist.py
	$(BIN)/python benchmarks/compress.py
	$(BIN)/python benchmarks/ddp.py
	$(BIN)/python benchmarks/precision.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
