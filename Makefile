# MeterTwin: `make demo`, `make test`, `make bench` work from a fresh clone; the first
# run creates .venv and installs the project (again whenever pyproject.toml changes).
#   make test PYTEST_ARGS='-k ledger -x'     make bench BENCH_ARGS='numpy --quick'
#   make demo DEMO_ARGS='--port 8060 --opcua-port 4841'   (when 8050 or 4840 is taken)

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin

.PHONY: demo sim test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q -e '.[dev]' && touch $(STAMP)

# the live platform: the demo community at 60x, API and health page on http://127.0.0.1:8050,
# state in ./data (a second `make demo` resumes it); Ctrl-C stops it
demo: $(STAMP)
	$(BIN)/metertwin run scenarios/demo-community.toml --data data $(DEMO_ARGS)

# a week of the demo community (the scenario's days), headless, faster than real time,
# with its summary; output in out/demo
sim: $(STAMP)
	$(BIN)/metertwin simulate scenarios/demo-community.toml --out out/demo --force

# the whole suite; a test needing a missing Debian program skips (fails under CI=true, see .ci/run)
test: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

# every benchmark, each figure beside its baseline; writes bench/results.json
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check twin devices control dashboard scenarios tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) *.egg-info out .pytest_cache .ruff_cache .mypy_cache .hypothesis bench/results.json
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
