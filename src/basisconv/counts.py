"""Counts and numbers as users give them: how a fraction becomes a count (basis sizes,
model widths, data subsets), and what is an int or a number (a bool is neither). The
rules live below the layers, the models, the data and the configs that all use them."""

from __future__ import annotations

import math
import numbers
import sys
from fractions import Fraction


def share_of(total: int, fraction: float) -> int:
    """``fraction`` of ``total``, rounded half up at the decimal the user wrote (0.7 of 45
    is 31.5, so 32, where its binary float would give 31.499...). The one rounding rule of
    every count given as a fraction: basis sizes, model widths, data subsets. A numpy
    float's decimal is its shortest at its own precision (np.float32(0.7) is "0.7"; as a
    Python float, 0.699999988...), written by numpy's formatter: its ``str`` follows the
    print options (``legacy="1.13"``: 12 digits of a float64). Another real number's
    ``str``; anything else float() takes (a 0-d tensor) as the float it gives."""
    # (numpy as loaded, if it is: a numpy float needs it, and the record writers' python
    # starts in scripts/reproduce.sh, which import this module, load none)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(fraction, numpy.floating):
        written = numpy.format_float_positional(fraction, unique=True, trim="-")
    else:
        written = str(fraction) if is_number(fraction) else repr(float(fraction))
    return math.floor(Fraction(written) * total + Fraction(1, 2))


def count_of(total: int, size: int | float) -> int:
    """``size`` of ``total`` things as a count: an int is the count itself, any other
    number the fraction :func:`share_of` rounds (data subsets, the held-out images)."""
    return int(size) if is_int(size) else share_of(total, size)


def is_int(value) -> bool:
    """An integer (Python's or numpy's) that is not a bool: ``True`` is an int to Python,
    and as a count or size it is a mistake (``basis.size=true``)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number (an int or a float, Python's or numpy's) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def count_or_fraction_problem(value) -> str | None:
    """What is wrong with ``value`` as a count (an int >= 1) or a fraction (a float in
    ``(0, 1]``) of something (a basis size of a layer's filters, a subset of a dataset), as
    words that follow it in an error; None when it is one. The one rule of such values: the
    config check and the basis layer each put it in their own error."""
    if not is_number(value):
        return "is neither a count (an int) nor a fraction (a float)"
    if is_int(value):
        return None if value >= 1 else "as a count must be >= 1"
    if 0 < float(value) <= 1:
        return None
    whole = float(value) > 1 and float(value).is_integer()  # a count computed as a float
    count = f" (for a count of {int(value)}, give the int {int(value)})" if whole else ""
    return f"as a fraction must be in (0, 1]{count}"
