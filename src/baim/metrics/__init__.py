"""Image-set metrics that say what they are: FID and KID with their extractor, sample count
and real-vs-real baseline."""

from .fid import FIDResult, extract, fid, frechet_distance, get_extractor, kernel_distance, scores

__all__ = ["FIDResult", "extract", "fid", "frechet_distance", "get_extractor", "kernel_distance", "scores"]
