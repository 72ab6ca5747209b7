# The two commands of the README. Both set everything up first (idempotent).
.PHONY: setup setup-test demo test lint bench

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --test

demo: setup
	BAIM_QUIET=$${BAIM_QUIET:-0} .venv/bin/baim run --preset quick --out runs/quick

# Lint, types and layering are part of the test command, so CI checks them on every change.
lint: setup-test
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks
	.venv/bin/mypy
	.venv/bin/lint-imports

test: lint
	BAIM_QUIET=1 .venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/edge_training.py
	.venv/bin/python benchmarks/connections.py
	.venv/bin/python benchmarks/baim_sparsity.py
	.venv/bin/python benchmarks/service.py
