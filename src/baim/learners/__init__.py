"""Learners: the staged VAEs that edges train and the cloud fuses."""

from .io import LearnerFileError, load_learner, save_learner
from .spec import TIERS, LearnerSpec, SpecError, tier_spec
from .vae import StagedVAE, vae_loss

__all__ = ["LearnerFileError", "LearnerSpec", "SpecError", "StagedVAE", "TIERS",
           "load_learner", "save_learner", "tier_spec", "vae_loss"]
