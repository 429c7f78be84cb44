# The two commands of the README. Each sets everything up first (scripts/setup.sh is idempotent
# and installs exactly requirements.lock).
.PHONY: run test test-fast setup lint lock

LOCK_FLAGS = --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	--extra dev --extra ray --constraint scripts/lock-constraints.txt

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/dynprune main

test: setup
	.venv/bin/python -m pytest -q

# The edit loop: everything but the slow and subprocess-heavy tests.
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow and not embedded"

lint: setup
	.venv/bin/ruff check .

# Regenerate requirements.lock from pyproject.toml's ranges (pip-tools; run after changing a dependency).
# --upgrade takes the newest releases the ranges allow; without it the lock keeps its pins where it can.
lock: setup
	.venv/bin/pip-compile $(LOCK_FLAGS) $(LOCK_ARGS) --output-file requirements.lock pyproject.toml
