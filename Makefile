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

## Meta-train MAML, the pretrained, oracle and context-vector baselines on sinusoids; print the paper's table; draw figures.
demo: $(STAMP)
	$(BIN)/metagrad reproduce sinusoid $(ARGS)

## The same at the MAML code's full budget (70,000 meta-iterations, meta-batch 25; the paper's text gives none).
demo-full: $(STAMP)
	$(BIN)/metagrad reproduce sinusoid --full $(ARGS)

## The test suite (fast tests; slow reproduction runs are marked and excluded), in two worker processes of one
## thread each (most tests are single-threaded; two take about 7.5 minutes on 2 idle cores: README).
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

## Remove what the commands made, but not the kept results (results/long and the reference tables are tracked).
clean:
	rm -rf $(VENV) runs .pytest_cache
	git clean -qfdX results
