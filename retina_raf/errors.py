"""Exception types for expected mistakes (bad input, bad config).

The CLI turns every :class:`RetinaRafError` into one line on stderr and exit status 2,
and :class:`RunInterrupted` into one line and :data:`EXIT_INTERRUPTED`; anything else is a
bug and keeps its traceback.
"""

# 128 + SIGTERM (15): the status a shell reports for a process that SIGTERM ended. Training
# that stops on a signal exits with 128 + that signal's number after writing its checkpoint
# (this for SIGTERM, 130 for SIGINT).
EXIT_INTERRUPTED = 143


class RetinaRafError(Exception):
    """Base class of every error the user can cause and fix."""


class DataError(RetinaRafError):
    """A data file or folder is missing, truncated, corrupt or has the wrong content."""


class ConfigError(RetinaRafError):
    """A configuration value, key, preset or CLI option is invalid."""


class RunError(RetinaRafError):
    """A run folder is missing, incomplete, or a run cannot continue (e.g. divergence)."""


class RunInterrupted(BaseException):
    """Training stopped on a signal (SIGTERM, SIGINT) at a batch boundary, after writing a
    checkpoint from which running the same command again resumes.

    A ``BaseException``, like ``KeyboardInterrupt``: a sweep that is told to stop stops,
    instead of counting the run as failed and going on to the next one.

    Attributes:
        signum: the signal that stopped the run.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
