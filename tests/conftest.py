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


# -- the GenAI service: a run directory built directly (three small tasks) -------------------------

SERVICE_TASKS = ["tops", "trousers", "bags"]


def compact_models(seed: int = 0):
    """One compact model per task, from three small learners fused and partitioned."""
    import torch

    from baim.cloud import fuse, partition
    from baim.learners import StagedVAE, tier_spec

    torch.manual_seed(seed)
    learners = []
    for _ in SERVICE_TASKS:
        m = StagedVAE(tier_spec("small"))
        m.train()
        m(torch.rand(8, 1, 32, 32))
        learners.append(m.eval())
    baim = fuse(learners, [0, 1, 2], SERVICE_TASKS, top_k=1, height=2)
    return [partition(baim, t) for t in range(len(SERVICE_TASKS))]


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A finished-looking run for the service: three tasks' compact models, edge 0 deployed."""
    from baim.models import save_model

    run = tmp_path / "run"
    compacts = compact_models()
    for t, compact in zip(SERVICE_TASKS, compacts):
        save_model(compact, run / "cloud" / "compact" / t)
    save_model(compacts[0], run / "edges" / "edge-0" / "deployed")  # edge 0 serves "tops"
    return run


def trained_learners(tiers, seed: int = 0, batch: int = 8):
    """Learners of these tiers with non-trivial BatchNorm statistics (one forward of ``batch``
    random images in train mode), as uploads have; seeded once, then built in order."""
    import torch

    from baim.learners import StagedVAE, tier_spec

    torch.manual_seed(seed)
    out = []
    for t in tiers:
        m = StagedVAE(tier_spec(t))
        m.train()
        m(torch.rand(batch, 1, 32, 32))
        out.append(m.eval())
    return out


def look_trained(model, alpha_std: float, gate_std: float):
    """Make a freshly fused BAIM look trained: non-zero α, gates with preferences, priors off
    centre (draws from torch's global generator, in this order)."""
    import torch

    with torch.no_grad():
        for p in model.connections.values():
            p.alpha.normal_(0, alpha_std)
        for g in model.lsgates:
            g.net[2].weight.normal_(0, gate_std)
        for pr in model.priors:
            pr.mean.normal_(0, 0.3)
    return model


def published_registry(run: Path):
    """A cloud registry of ``run``'s compact models and a token for edge 0 (the service tests' cloud)."""
    from baim.cloud.registry import Registry

    registry = Registry(run / "registry")
    registry.publish_run(run)
    return registry, registry.issue_token("edge-0")
