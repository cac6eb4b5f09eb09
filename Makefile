# MeterTwin: `make demo`, `make test`, `make bench` work from a fresh clone; the first
# run creates .venv and installs the project (again whenever pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin

.PHONY: demo live test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/metertwin simulate scenarios/demo-community.toml --out out/demo --force

# the live platform (world at 60x, API on http://127.0.0.1:8050); Ctrl-C stops it
live: $(STAMP)
	$(BIN)/metertwin run scenarios/demo-community.toml --data data

test: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check twin devices control dashboard scenarios tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .hypothesis bench/results.json
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
