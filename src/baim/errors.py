"""Every error a user can cause derives from :class:`BaimError`, and its message says what to
do about it. The command line catches exactly this base: anything else is a bug in baim and
keeps its traceback."""

from __future__ import annotations


class BaimError(Exception):
    """A problem with the user's input, files or environment, explained in the message."""


class ConfigError(BaimError, ValueError):
    """A setting, preset, name or argument that baim cannot use."""


class DataError(BaimError):
    """A data set or layout that is missing, malformed or too small."""


class ModelFileError(BaimError):
    """A saved model (learner, BAIM or compact model) that is missing, malformed or altered."""


class SpecError(BaimError, ValueError):
    """A learner spec that cannot describe a valid learner."""


class MessageError(BaimError, ValueError):
    """A message between cloud and edges that is malformed, too large, or not baim's."""


class ExtractorUnavailable(BaimError):
    """The requested FID feature network is not installed; the message says how to get it."""


class WorkflowError(BaimError):
    """The workflow cannot go on (e.g. a task has no usable upload); says what to look at."""


class RunConfigMismatch(BaimError):
    """The run directory belongs to a run with another configuration."""


class TrainingDiverged(BaimError):
    """Training produced NaN or infinite losses or metrics; says which model and epoch."""


class RunDirBusy(BaimError):
    """Another baim process holds the run directory's lock; names its pid."""


class DiskFull(BaimError):
    """A write found no space left; names the folder, what it needed and what was free."""
