"""Learners: the staged VAEs that edges train and the cloud fuses."""

from .io import check_state, load_weights, plain_state, read_weights, weights_bytes, weights_digest
from .spec import TIERS, LearnerSpec, tier_spec
from .vae import StagedVAE, vae_loss

__all__ = [
    "LearnerSpec",
    "StagedVAE",
    "TIERS",
    "check_state",
    "load_weights",
    "plain_state",
    "read_weights",
    "tier_spec",
    "vae_loss",
    "weights_bytes",
    "weights_digest",
]
