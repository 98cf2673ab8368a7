# Set-up and the two commands the README promises: `make train` and `make test` (the full suite);
# `make test-fast` skips the tests marked slow (subprocesses, DDP, multi-epoch fits) for the edit loop.
# The venv is (re)installed only when pyproject.toml is newer than the stamp, so a second run
# installs nothing. `install` and the test targets also install the Debian packages the tests read
# (scripts/system_packages.sh: PostgreSQL, Fashion-MNIST), where missing and where root can.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install system-packages train test test-fast lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) system-packages

system-packages:
	@bash scripts/system_packages.sh

train: $(STAMP)
	$(BIN)/dyt-lab fit --config configs/quickstart.yaml

test: $(STAMP) system-packages
	MPLCONFIGDIR=$${MPLCONFIGDIR:-/tmp/dyt-lab-mpl} $(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test-fast: $(STAMP) system-packages
	MPLCONFIGDIR=$${MPLCONFIGDIR:-/tmp/dyt-lab-mpl} $(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check dyt_lab tests benchmarks

clean:
	rm -rf $(VENV) runs studies .pytest_cache
