"""What only the cloud does: screen uploads, fuse them into a BAIM with a strategy, train it on
common data, prune learners, grow it with late uploads, and cut it into compact task models."""

from .continual import add_learners
from .fusion import fuse
from .partition import closure, partition
from .pipeline import common_data, train_strategy
from .pruning import prune_learners
from .screening import Screened, screen_uploads, validate_upload

__all__ = [
    "Screened",
    "add_learners",
    "closure",
    "common_data",
    "fuse",
    "partition",
    "prune_learners",
    "screen_uploads",
    "train_strategy",
    "validate_upload",
]
