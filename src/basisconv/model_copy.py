"""Copying a user's model, the hook tables torch keeps on every module, its modules'
train/eval modes kept across work that changes them, and its lazy modules not made yet.

A model's cost is counted on a copy (:func:`basisconv.cost.model_cost`, a dry run on the
``meta`` device) and a conversion works on one unless told ``inplace``
(:func:`basisconv.surgery.apply_basis`, :func:`basisconv.dense_form.to_dense`): both copy
the same way, and both reach into the same hook tables (the dry run clears them, a
replacement carries them over).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.nn.modules.lazy import LazyModuleMixin

from .errors import ConfigError

#: A module's forward and backward hook tables (torch keeps them in these attributes; a
#: handle removes its hook from the table it was registered in).
HOOK_TABLES = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_backward_pre_hooks", "_backward_hooks")


def copy_model(model: nn.Module, what: str, fix: str, *, meta: bool = False) -> nn.Module:
    """``copy.deepcopy(model)``; where it cannot be copied (a weight that a hook computes:
    torch.nn.utils.prune, the old torch.nn.utils.weight_norm; something Python cannot copy
    held by a module or a hook: a lock, an open file) one :class:`ConfigError`,
    ``what`` then ``fix``, as torch's own message does not say why a copy was made.

    ``meta``: the parameters and buffers are copied as ``meta`` tensors, never copying
    their data (else a dry run's copy holds the model twice, on its GPU too)."""
    memo: dict[int, Any] = {}
    if meta:  # plain ones only: a subclass (a lazy module's) is copied as it is
        for t in itertools.chain(model.parameters(), model.buffers()):
            if type(t) is nn.Parameter:
                memo[id(t)] = nn.Parameter(t.detach().to("meta"), t.requires_grad)
            elif type(t) is torch.Tensor:
                memo[id(t)] = t.detach().to("meta")
    try:
        return copy.deepcopy(model, memo)
    # (TypeError: Python's "cannot pickle '_thread.lock' object", from an attribute or a hook
    # that is a bound method of an object holding a lock, a file, a generator)
    except (RuntimeError, TypeError, copy.Error) as err:
        raise ConfigError(f"{what} ({str(err)[:120]}...); {fix}") from err


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[None]:
    """Put back each module's own train/eval mode after the block: a model's modes can
    differ (norms frozen in eval inside a training model, a fine-tuning recipe's), which
    ``model.train(model.training)`` would flatten to the top module's. Through
    ``train()`` first, for a module whose ``train`` does more than set the flag."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        model.train(modes[0][1])
        for module, training in modes:
            module.training = training


def unmade_lazy(module: nn.Module) -> bool:
    """Whether ``module`` is a lazy one (``nn.LazyConv2d``, ``nn.LazyLinear``) whose
    parameters its first forward has not made yet: they have no size to count, copy on the
    meta device or convert."""
    return isinstance(module, LazyModuleMixin) and module.has_uninitialized_params()


def check_no_unmade_lazy_module(model: nn.Module, function: str,
                                fix: str = "run one forward pass of the model first, then "
                                           "count") -> None:
    """One error naming the first module of ``model`` that is :func:`unmade_lazy` (torch's
    own, at the first use of its parameters, is a paragraph naming no layer)."""
    for name, module in model.named_modules():
        if unmade_lazy(module):
            raise ConfigError(f"{function}: layer {name!r} is a {type(module).__name__} whose "
                              f"parameters are not made yet; {fix}")
