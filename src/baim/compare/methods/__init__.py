"""The methods ``baim compare`` runs: each ``run(ctx) -> dict`` (the measured row)."""
