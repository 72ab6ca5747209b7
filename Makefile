# The two commands of the README. Both set everything up first (idempotent).
.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

demo: setup
	BAIM_QUIET=$${BAIM_QUIET:-0} .venv/bin/baim run --preset quick --out runs/quick

test: setup
	BAIM_QUIET=1 .venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/edge_training.py
