"""Metrics that say what they are: FID and KID with their extractor, sample count and
real-vs-real baseline; the IWAE likelihood bound with its observation model."""

from .fid import FIDResult, extract, fid, frechet_distance, get_extractor, kernel_distance, scores
from .likelihood import bits_per_dim, discretised_gaussian_log_prob, iwae_nll, observation_sigma

__all__ = [
    "FIDResult",
    "bits_per_dim",
    "discretised_gaussian_log_prob",
    "extract",
    "fid",
    "frechet_distance",
    "get_extractor",
    "iwae_nll",
    "kernel_distance",
    "observation_sigma",
    "scores",
]
