"""A small model registry, in the spirit of timm's ``create_model``: configs name a model
by string, and every model family registers its constructors here."""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
import torch.nn as nn

from ..counts import is_int, is_number, share_of
from ..model_copy import check_no_unmade_lazy_module

ModelFn = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFn] = {}


def register_model(fn: ModelFn | None = None, *, name: str | None = None):
    """Decorator: make ``fn`` buildable by its function name through :func:`build_model`,
    which calls it as ``fn(num_classes=..., width=...)``: a constructor that cannot take
    those keywords is refused here, not when a run first builds it (torch's bare
    ``TypeError`` then, after the run has started).

    ``name``: the model's name where it is not the function's (``register_model(fn,
    name="vgg13")``, or ``@register_model(name="vgg13")``); a lambda or a
    ``functools.partial`` needs one, as it has no function name a config can give."""
    if fn is None:
        return lambda fn: register_model(fn, name=name)
    name = _model_name(fn, name)
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice; give the second constructor "
                         f"another function name, or another name=...")
    try:
        inspect.signature(fn).bind(num_classes=10, width=1.0)
    except TypeError:
        raise ValueError(f"model {name!r} cannot be registered: build_model calls it as "
                         f"{name}(num_classes=..., width=...); give it those keyword "
                         f"arguments, e.g. def {name}(num_classes=10, width=1.0)") from None
    _REGISTRY[name] = fn
    return fn


def _model_name(fn: ModelFn, name: str | None) -> str:
    """The name ``fn`` is registered under: ``name``, else its function name; a lambda's
    ``'<lambda>'`` (or a partial's none) no config can give, so that is one error, as is a
    name given where the function goes."""
    if isinstance(fn, str):  # @register_model("vgg13"): the name where the function goes
        raise ValueError(f"register_model({fn!r}): the name is given as name=: "
                         f"@register_model(name={fn!r})")
    if name is None:
        name = getattr(fn, "__name__", "<lambda>")
        if name == "<lambda>":
            raise ValueError(f"register_model: {fn!r} has no function name a config can "
                             f"give (a lambda or a functools.partial); give it one: "
                             f"register_model(fn, name='my_model')")
    elif not isinstance(name, str) or not name or name.split() != [name]:
        raise ValueError(f"register_model: name={name!r}; give the name configs will call "
                         f"the model by, a non-empty string without spaces (model.name=...)")
    return name


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_REGISTRY)


def build_model(name: str, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """Build a registered model by name, e.g. ``build_model("resnet18")``.

    ``width`` multiplies every layer's channel count (1.0 = the published architecture);
    smaller widths give quick runs on a CPU.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    # an infinite width has no channel count (and NaN fails too); True is no width
    if not is_number(width) or not 0 < width < math.inf:
        raise ValueError(f"model width must be a finite number > 0, got {width!r}")
    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    return _REGISTRY[name](num_classes=num_classes, width=width)


def parameter_count(name: str, num_classes: int = 10, width: float = 1.0) -> int | None:
    """How many parameters ``build_model(name, num_classes, width)`` has, counted on the
    meta device (shapes only: nothing is allocated), so that a width too large to build is
    found without building it. None where torch cannot shape the model at all: a channel
    count, or a weight's byte size, beyond its 64-bit sizes (an overflow trace from torch
    where the model is built). A lazy layer (``nn.LazyConv2d``) has no size before a
    forward: one error."""
    try:
        with torch.device("meta"):
            model = build_model(name, num_classes, width)
    except (RuntimeError, TypeError):  # torch's "Storage size calculation overflowed",
        # "Overflow when unpacking long long"; a model that fails at the published width
        # too fails for another reason, and that is raised
        if width <= 1:
            raise
        parameter_count(name, num_classes)
        return None
    check_no_unmade_lazy_module(model, "parameter_count", "they are counted once a forward "
                                "has made them: build_model, one forward, then count")
    return sum(p.numel() for p in model.parameters())


def scaled(channels: int, width: float) -> int:
    """Channel count after the width multiplier (never below 1; halves round up, as basis
    sizes do)."""
    return max(1, share_of(channels, width))
