"""Errors a user can fix from the command line. Entry points print their message alone,
without a stack trace (set ``BASISCONV_DEBUG=1`` to see the trace)."""


class BasisconvError(Exception):
    """Base of the errors whose message tells the user what to change."""


class ConfigError(BasisconvError, ValueError):
    """A configuration value is invalid; the message names it and the valid range."""


class DatasetError(BasisconvError, RuntimeError):
    """The data could not be read; the message says where it looked and what to do."""


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal (SIGINT, i.e. Ctrl-C, or SIGTERM); the message says after
    which epoch and how to resume. A ``KeyboardInterrupt``, so code that handles Ctrl-C
    handles it too. Entry points print it as one line and exit with ``128 + signum``."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message)
        self.signum = signum
