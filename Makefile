# Every target bootstraps its own virtual environment, so a fresh clone needs only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test lint typecheck pytest run bench soak reliability lock clean

# Installs exactly the versions pinned in constraints.txt (pip and setuptools too), again
# whenever pyproject.toml or constraints.txt changes.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt --upgrade pip setuptools
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
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

# Rewrites constraints.txt: a scratch venv outside the tree installs -e '.[dev]' with the
# newest releases pyproject.toml allows, and pip freeze pins all of it but cmek itself.
# Review the diff (and check it against the advisory databases) before committing it.
lock:
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet --upgrade pip setuptools; \
	"$$tmp/venv/bin/python" -m pip install --quiet -e '.[dev]'; \
	{ printf '%s\n' \
	    '# Pinned versions of everything make installs into .venv (pip install -c' \
	    '# constraints.txt), pip and setuptools included, the cmek project itself excluded.' \
	    '# Made by `make lock`, not by hand: a scratch venv (python3 -m venv) installs' \
	    "# -e '.[dev]' with the newest releases pyproject.toml allows, then" \
	    '# `pip freeze --all --exclude-editable` writes the list below.'; \
	  "$$tmp/venv/bin/python" -m pip freeze --all --exclude-editable; } > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
