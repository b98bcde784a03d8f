"""User-facing errors.

Library code raises a :class:`UserError` subclass with a one-line message that
names what is wrong and what is allowed; the CLI prints ``error: <message>`` and
exits with code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a config, a path, data, a flag."""


class ConfigError(UserError):
    """A recipe or an override that does not validate."""


class DataError(UserError):
    """Data that cannot be used: missing file, wrong shape, NaN/Inf, empty split."""


class RunDirError(UserError):
    """A run directory that is missing, not a run, or would be overwritten."""


class TrainingDiverged(UserError):
    """The loss stayed non-finite; the last good checkpoint is kept."""


class ShapeError(UserError):
    """Matrices or series whose shapes do not fit together (non-square A, B with the wrong rows)."""


class CovarianceError(UserError):
    """A covariance matrix that is not symmetric positive semi-definite."""


class RunDirWarning(UserWarning):
    """Something about a run directory the user should know, that stops nothing (a lock
    taken over from an interrupted run). The CLI prints it as ``warning: …``."""
