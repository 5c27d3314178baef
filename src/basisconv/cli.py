"""Shared behaviour of the command-line entry points in ``scripts/``."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from typing import Callable, TypeVar

from .errors import BasisconvError, Stopped

F = TypeVar("F", bound=Callable)


def log_to_files(message: str) -> None:
    """Write ``message`` to the log files of the run (Hydra's ``train.log``) only: the
    console gets it once, from the entry point."""
    record = logging.LogRecord("basisconv", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def raise_stopped(signum: int, frame) -> None:
    raise Stopped(signum)


def exit_on_user_error(fn: F) -> F:
    """Print a :class:`BasisconvError` as one line and exit with status 2, instead of a
    stack trace; ``BASISCONV_DEBUG=1`` shows the trace. A run stopped by SIGINT (Ctrl-C)
    or SIGTERM says in one line where it stopped and exits with 130 or 143. Either line
    also goes to the run's log file."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, raise_stopped)
        try:
            return fn(*args, **kwargs)
        except BasisconvError as err:
            if os.environ.get("BASISCONV_DEBUG"):
                raise
            message = " ".join(str(err).split())
            log_to_files(f"error: {message}")
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as err:
            if os.environ.get("BASISCONV_DEBUG"):
                raise
            signum = getattr(err, "signum", signal.SIGINT)
            message = (f"stopped by {signal.Signals(signum).name}"
                       f"{': ' + str(err) if str(err) else ''}")
            log_to_files(message)
            print(message, file=sys.stderr)
            sys.exit(128 + signum)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]
