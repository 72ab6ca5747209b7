import os
from pathlib import Path

import pytest

os.environ.setdefault("BAIM_QUIET", "1")

FMNIST_DIR = Path(os.environ.get("BAIM_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST (installed by the setup script from Debian's package)."""
    from baim.data import load_fashion_mnist

    return load_fashion_mnist(FMNIST_DIR)
