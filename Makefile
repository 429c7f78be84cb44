# The two commands of the README. Each sets everything up first (scripts/setup.sh is idempotent
# and installs exactly requirements.lock).
.PHONY: run test test-fast setup lint lock device-wheels

LOCK_FLAGS = --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	--extra dev --extra ray --constraint scripts/lock-constraints.txt

# torch's OpenMP threads spin while they wait: on a machine busy with other work (the case this
# project measures) spinning threads take the cores from the work; passive waiting gives them back.
# A value set by the caller wins.
export OMP_WAIT_POLICY ?= PASSIVE

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

# Wheels for the lent GPU machine (Python 3.12, x86-64, no registry there), which scripts/device_run.sh
# installs: gymnasium (as pinned in requirements.lock) and its dependency farama-notifications for the
# env part, bitsandbytes for NF4. Into .whl/ (git-ignored), emptied first: two versions of one package
# stop the install there.
DEVICE_WHEELS = gymnasium==1.0.0 farama-notifications==0.0.6 bitsandbytes==0.50.2
DEVICE_PLATFORMS = $(foreach n,28 27 24 17,--platform manylinux_2_$(n)_x86_64) --platform manylinux2014_x86_64

device-wheels:
	rm -rf .whl && mkdir -p .whl
	python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(DEVICE_PLATFORMS) -d .whl $(DEVICE_WHEELS)
