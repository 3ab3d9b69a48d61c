"""Errors a learner can act on: every message names the problem and the fix."""


class ClipftError(Exception):
    """Base class of the course's own errors."""


class ConfigError(ClipftError, ValueError):
    """A configuration value is invalid (raised before any work starts)."""


class NotApplicableError(ConfigError):
    """A method cannot apply to a model's architecture (said before any work, with the methods that do apply)."""


class DatasetError(ClipftError, FileNotFoundError):
    """A dataset folder is missing, incomplete or too small for the request."""


class OfflineError(ClipftError, RuntimeError):
    """Weights or data must be downloaded but the machine is offline."""


class ResultsError(ClipftError, OSError):
    """The results folder cannot be written."""


class WeightsError(ClipftError, ValueError):
    """A local weights file is unreadable, not a state dict, or made for another architecture."""


class DatasetWarning(UserWarning):
    """Something about the data a user must know (e.g. unreadable files left out); ``setup`` prints it."""
