# Every target bootstraps its own virtual environment, so a fresh clone needs only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test lint typecheck pytest run bench soak reliability clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

run: $(STAMP)
	$(BIN)/python -m cmek.platform.devrun

bench: $(STAMP)
	$(BIN)/python bench/kms_latency.py
	$(BIN)/python bench/crypto_compare.py
	$(BIN)/python bench/platform_latency.py
	$(BIN)/python bench/time_to_lock.py

# Not part of test: 10 minutes of load while keys are cut and returned (bench/soak.py).
soak: $(STAMP)
	$(BIN)/python bench/soak.py

# Rewrites docs/reliability.md from the fault, crash, fuzz and isolation tests' own counts
# and the last soak's result.
reliability: $(STAMP)
	$(BIN)/python bench/reliability.py

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
