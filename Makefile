# The two commands of the README. Each sets everything up first (scripts/setup.sh is idempotent).
.PHONY: run test setup lint

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/dynprune main

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check .
