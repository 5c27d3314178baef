"""Counts given as fractions: basis sizes, model widths, data subsets. The rule lives
below the layers, the models and the data that all use it."""

from __future__ import annotations

import math
from fractions import Fraction


def share_of(total: int, fraction: float) -> int:
    """``fraction`` of ``total``, rounded half up at the decimal the user wrote (0.7 of 45
    is 31.5, so 32, where its binary float would give 31.499...). The one rounding rule of
    every count given as a fraction: basis sizes, model widths, data subsets."""
    return math.floor(Fraction(repr(float(fraction))) * total + Fraction(1, 2))
