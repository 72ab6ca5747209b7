"""The ``domain`` FID feature network: a small classifier trained on Fashion-MNIST.

ImageNet networks see 28×28 clothing as a handful of blurry blobs; a classifier of the data
set's own domain gives features that separate what matters here. The committed weights in
``baim/weights/`` were made by ``baim domain train`` (see ``domain_fashion_mnist.json``
beside them for the seed, epochs and measured test accuracy).
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import atomic_write, write_json
from ..errors import ExtractorUnavailable
from ..progress import make_progress

WEIGHTS_NAME = "domain_fashion_mnist"
FEATURES = 128


class DomainClassifier(nn.Module):
    """Three conv blocks → 128-d feature → 10 classes; inputs are 1×32×32 in [0, 1]."""

    num_features = FEATURES

    def __init__(self, num_classes: int = 10):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(
            block(1, 32), block(32, 64), block(64, 128), nn.Flatten(), nn.Linear(128 * 16, FEATURES), nn.ReLU()
        )
        self.classifier = nn.Linear(FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DomainFeatures(nn.Module):
    """FID feature extractor: uint8 (or [0, 1] float) images of any size/channels → 128-d."""

    num_features = FEATURES

    def __init__(self, classifier: DomainClassifier):
        super().__init__()
        self.classifier = classifier.eval()

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        x = imgs.float() / 255.0 if imgs.dtype == torch.uint8 else imgs.float()
        if x.shape[1] == 3:
            x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        if x.shape[-1] != 32 or x.shape[-2] != 32:
            x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        return self.classifier.features(x)


def weights_dir() -> Path:
    return Path(str(resources.files("baim") / "weights"))


def load_domain_features() -> DomainFeatures:
    path = weights_dir() / f"{WEIGHTS_NAME}.safetensors"
    if not path.is_file():
        raise ExtractorUnavailable(
            f"domain classifier weights {path} are missing; recreate them with "
            "`baim domain train` (see its JSON card for the command)"
        )
    model = DomainClassifier()
    model.load_state_dict(load_file(str(path)))
    return DomainFeatures(model)


def train_domain_classifier(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    epochs: int = 4,
    seed: int = 0,
    out_dir: Path | None = None,
) -> dict:
    """Train the classifier; save weights + a JSON card with its measured test accuracy."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DomainClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (len(train_x) // 128 + 1))
    x_all = torch.from_numpy(train_x).float().div_(255)
    y_all = torch.from_numpy(train_y)
    start = time.time()
    with make_progress() as progress:
        task = progress.add_task("domain classifier", total=epochs * (len(x_all) + 127) // 128)
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(len(x_all), generator=gen)
            for i in range(0, len(perm), 128):
                b = perm[i : i + 128]
                x = x_all[b]
                # light augmentation: horizontal flips keep clothing classes intact
                flip = torch.rand(len(x), generator=gen) < 0.5
                x[flip] = x[flip].flip(-1)
                loss = F.cross_entropy(model(x), y_all[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                progress.advance(task)
    acc = classifier_accuracy(model, test_x, test_y)
    card = {
        "weights": f"{WEIGHTS_NAME}.safetensors",
        "test_accuracy": round(acc, 4),
        "test_images": int(len(test_y)),
        "epochs": epochs,
        "seed": seed,
        "train_seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
        "command": f"baim domain train --epochs {epochs} --seed {seed}",
    }
    if out_dir is not None:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        atomic_write(Path(out_dir) / f"{WEIGHTS_NAME}.safetensors", lambda tmp: save_file(state, tmp))
        write_json(Path(out_dir) / f"{WEIGHTS_NAME}.json", card)
    return card


@torch.no_grad()
def classifier_accuracy(model: DomainClassifier, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 1000):
        xb = torch.from_numpy(x[i : i + 1000]).float().div_(255)
        correct += int((model(xb).argmax(1) == torch.from_numpy(y[i : i + 1000])).sum())
    return correct / len(x)


def domain_card() -> dict:
    return json.loads((weights_dir() / f"{WEIGHTS_NAME}.json").read_text())
