# MeterTwin: `make demo`, `make test`, `make bench` work from a fresh clone; the first
# run creates .venv and installs the project (again whenever pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin

.PHONY: demo sim test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# the live platform: the demo community at 60x, API and health page on http://127.0.0.1:8050,
# state in ./data (a second `make demo` resumes it); Ctrl-C stops it
demo: $(STAMP)
	$(BIN)/metertwin run scenarios/demo-community.toml --data data

# a week of the demo community, headless, faster than real time, with its summary
sim: $(STAMP)
	$(BIN)/metertwin simulate scenarios/demo-community.toml --out out/demo --force

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
