"""Exception types for expected mistakes (bad input, bad config).

The CLI turns every :class:`RetinaRafError` into one line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""


class RetinaRafError(Exception):
    """Base class of every error the user can cause and fix."""


class DataError(RetinaRafError):
    """A data file or folder is missing, truncated, corrupt or has the wrong content."""


class ConfigError(RetinaRafError):
    """A configuration value, key, preset or CLI option is invalid."""


class RunError(RetinaRafError):
    """A run folder is missing, incomplete, or a run cannot continue (e.g. divergence)."""
