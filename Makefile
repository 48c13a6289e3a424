# Two entry points: `make demo` (build --lmax 3 --nu 3 and run a short demo) and
# `make test` (the whole suite). Both create .venv idempotently; the stamp file is
# keyed on pyproject.toml so editing dependencies re-installs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tacegen-installed

.PHONY: demo test docs install peers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is pinned here (a CPU build that lies on the machine's disk); pyproject keeps a range.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tacegen paths --lmax 3 --nu 3
	$(BIN)/tacegen build --lmax 3 --nu 3 --report
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# HTML documentation in docs/_build (warnings are errors, as in tests/test_docs.py).
docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build

# Optional peer models for benchmarks and cross-checks (mace-torch, torch-pme).
peers: $(STAMP)
	$(BIN)/pip install -q torch==2.13.0 -e '.[peers]'

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis docs/_build
