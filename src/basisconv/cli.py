"""Shared behaviour of the command-line entry points in ``scripts/``."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

from .errors import BasisconvError

F = TypeVar("F", bound=Callable)


def exit_on_user_error(fn: F) -> F:
    """Print a :class:`BasisconvError` as one line and exit with status 2, instead of a
    stack trace; ``BASISCONV_DEBUG=1`` shows the trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BasisconvError as err:
            if os.environ.get("BASISCONV_DEBUG"):
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
