"""Honest metrics: test loss, reconstruction MSE/PSNR, FID with its extractor and baseline."""

from .fid import EXTRACTORS, ExtractorUnavailable, FIDResult, fid, frechet_distance, get_extractor
from .reconstruction import evaluate_reconstruction

__all__ = ["EXTRACTORS", "ExtractorUnavailable", "FIDResult", "evaluate_reconstruction", "fid",
           "frechet_distance", "get_extractor"]
