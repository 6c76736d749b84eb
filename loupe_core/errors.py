"""The exception types of loupe_core: callers catch by type, never by message text.

Every error a user can cause (a setting, a data file, a checkpoint, an estimator's input) is a
``LoupeError`` and also a ``ValueError``, so code written against the earlier contract ("bad
input is a ValueError naming the argument") keeps working. ``DivergenceError`` is a
``LoupeError`` and a ``RuntimeError``: the data and settings were valid, the run diverged.
Anything else that escapes is a programming error and is not caught as a user error.

This module imports nothing of the project: every layer may use it.
"""


class LoupeError(Exception):
    """Base of every error loupe_core raises on purpose; its message names the cause."""


class ConfigError(LoupeError, ValueError):
    """A configuration key or command-line setting is invalid (the message names the key)."""


class DataError(LoupeError, ValueError):
    """A data file, shard, record or tokenizer cannot be used (the message names the file)."""


class CheckpointError(LoupeError, ValueError):
    """A checkpoint, export folder or weights file is missing, damaged or foreign (names the file)."""


class EstimatorInputError(LoupeError, ValueError):
    """An input to a Shapley estimator or label source is invalid (names the argument)."""


class DivergenceError(LoupeError, RuntimeError):
    """The training loss became NaN or inf; the message names the step, the term and the last
    good checkpoint."""
