# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-full test test-slow lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,rl]'
	touch $(STAMP)

## Meta-train MAML, the pretrained baseline and the oracle on sinusoids; print the paper's table; draw figures.
demo: $(STAMP)
	$(BIN)/metagrad reproduce sinusoid $(ARGS)

## The same at the paper's full budget (70,000 meta-iterations, meta-batch 25).
demo-full: $(STAMP)
	$(BIN)/metagrad reproduce sinusoid --full $(ARGS)

## The test suite (fast tests; slow reproduction runs are marked and excluded).
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) results runs .pytest_cache
