"""Marker module of the Flower App bundle; the ServerApp and ClientApp live in
``baim.federation`` (installed with baim on every machine of the federation)."""
