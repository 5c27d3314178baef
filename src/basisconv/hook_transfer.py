"""A replaced conv's hooks: given to the basis layer that replaces it (and a basis layer's
to the conv that replaces it again, :func:`basisconv.dense_form.to_dense`), the replaced
module left with tables of its own and a warning should the model still call it.

Kept apart from the surgery that decides what to replace: this is torch's private hook
tables (``_forward_pre_hooks`` and the rest, :data:`~basisconv.model_copy.HOOK_TABLES`),
which a replacement shares rather than copies so that the handles users hold still work.
"""

from __future__ import annotations

import copy
import functools

import torch.nn as nn

from .errors import warn_caller
from .model_copy import HOOK_TABLES
from .source_conv import WEIGHT_HOOKS


def hook_tables(module: nn.Module) -> dict:
    """The module's forward and backward hook tables by attribute name (the objects
    themselves: a module given them shares them, and their handles still remove hooks)."""
    return {t: getattr(module, t) for t in (*HOOK_TABLES, "_is_full_backward_hook")
            if hasattr(module, t)}


def take_over_hooks(conv: nn.Conv2d, layer: nn.Module, name: str) -> None:
    """Give ``layer`` the forward and backward hooks registered on ``conv``. The tables are
    shared, not copied, so the handles their ``register_*_hook`` calls returned still remove
    them. A basis layer's output is the conv's (same shape, same meaning), so a hook that
    reads or changes it (feature extraction, activation statistics) means the same there.
    State-dict hooks are not carried (the basis layer's state has other keys)."""
    tables, weight_hooks = _carried_tables(conv)
    for table, hooks in tables.items():
        setattr(layer, table, hooks)
    _retire(conv, name, weight_hooks)
    if any(not _parametrizations_own(hook)
           for t in ("_state_dict_hooks", "_state_dict_pre_hooks",
                     "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
           for hook in getattr(conv, t, {}).values()):
        warn_caller(f"layer {name!r}: its state-dict hooks are not carried to its basis "
                    f"layer, whose state has other keys; register them on the converted "
                    f"layer if they still apply")


def hand_back_hooks(layer: nn.Module, conv: nn.Conv2d, name: str) -> None:
    """Give ``conv``, the dense conv :func:`~basisconv.dense_form.to_dense` makes of the basis
    ``layer``, the layer's forward and backward hooks (shared, as :func:`take_over_hooks`
    shares a conv's), and retire the layer as a replaced conv is retired, for the same
    reasons: a model that reaches it through a plain list ran the basis form silently
    after to_dense, the user's hooks firing on it. A hook that computes one of the layer's
    tensors (pruning ``basis_weight``) stays with the layer, as a conv's weight hooks stay
    with the conv: on the dense conv it looked for ``basis_weight_mask`` at every call."""
    tables, weight_hooks = _carried_tables(layer)
    for table, hooks in tables.items():
        setattr(conv, table, hooks)
    _retire(layer, name, weight_hooks, _basis_still_called)


def _carried_tables(module: nn.Module) -> tuple[dict, list[int]]:
    """The hook tables a replacement of ``module`` takes (:func:`hook_tables`), less the
    hooks that compute ``module``'s own tensors (:data:`WEIGHT_HOOKS`: the replacement has
    other ones), and those hooks' keys. Shared where there are none; else copied around
    them, so that their handles then miss the replacement."""
    weight_hooks = [k for k, h in module._forward_pre_hooks.items()
                    if isinstance(h, WEIGHT_HOOKS)]
    tables = hook_tables(module)
    if weight_hooks:
        tables = {t: copy.copy(v) for t, v in tables.items()}
        for key in weight_hooks:
            tables["_forward_pre_hooks"].pop(key)
            tables.get("_forward_pre_hooks_with_kwargs", {}).pop(key, None)
    return tables, weight_hooks


def _retire(conv: nn.Module, name: str, weight_hooks: list[int],
            still_called=None) -> None:
    """Leave the replaced ``conv`` hook tables of its own (its weight hooks only) and a
    pre-hook that warns when it is still called (``still_called``: by default, the warning
    for a conv replaced by a basis layer). Why: a model that reaches a conv through a
    reference :func:`~basisconv.surgery.apply_basis` cannot see (a plain list or dict, not
    an ``nn.ModuleList``/``ModuleDict``) would go on running the old dense conv, whose weights
    no optimizer sees any more, while ``parameters()`` and ``basis_report`` say it was
    converted; and with shared tables the user's hooks (``model_cost``'s too) fired on it
    under the converted layer's name."""
    pre_hooks = conv._forward_pre_hooks
    kept = {key: pre_hooks[key] for key in weight_hooks}
    for table in HOOK_TABLES:
        if hasattr(conv, table):
            setattr(conv, table, type(getattr(conv, table))())
    conv._is_full_backward_hook = None
    conv._forward_pre_hooks.update(kept)
    conv.register_forward_pre_hook(functools.partial(still_called or _still_called, name))


def _still_called(name: str, module: nn.Module, args) -> None:
    warn_caller(f"conv {name!r} was replaced by a basis layer but is still called: the "
                f"model reaches it through a reference apply_basis cannot replace (a plain "
                f"Python list or dict? hold submodules in nn.ModuleList or nn.ModuleDict), "
                f"so it runs the old dense conv, which no longer trains. If you call the "
                f"old conv yourself on purpose, ignore this.")


def _basis_still_called(name: str, module: nn.Module, args) -> None:
    warn_caller(f"basis layer {name!r} was replaced by a dense conv (to_dense) but is still "
                f"called: the model reaches it through a reference to_dense cannot replace (a "
                f"plain Python list or dict? hold submodules in nn.ModuleList or "
                f"nn.ModuleDict), so it runs the basis form, apart from the model's dense "
                f"weights. If you call the old layer yourself on purpose, ignore this.")


def _parametrizations_own(hook) -> bool:
    """A state-dict hook torch's parametrizations (or its older weight and spectral norm)
    register for themselves (weight_norm's reader of old-style ``weight_g``/``weight_v``
    keys, spectral norm's version marker): it means nothing without them, so it is not the
    user's hook whose loss a conversion warns of."""
    return getattr(getattr(hook, "hook", hook), "__module__", "").startswith(
        ("torch.nn.utils.parametriz", "torch.nn.utils.spectral_norm",
         "torch.nn.utils.weight_norm"))
