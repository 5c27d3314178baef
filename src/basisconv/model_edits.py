"""What :func:`~basisconv.surgery.apply_basis` and :func:`~basisconv.dense_form.to_dense`
share of replacing a model's layers: the check of the model they are given, the names of
the layers whose tensors torch computes (which both warn of), and a submodule set by its
module name.

Its own module because both conversions need it, the one into basis form and the one
back: with what they share here, neither imports the other.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .errors import ConfigError
from .source_conv import WEIGHT_HOOKS


def check_model(model, function: str, verb: str) -> None:
    """A model whose layers ``function`` (``apply_basis``, ``to_dense``) can replace: an
    ``nn.Module``, not TorchScript, not inside ``DistributedDataParallel`` (``verb`` says
    what ``function`` does, for that error). Each caller refuses a single layer itself."""
    check_is_module(model, function)
    if isinstance(model, torch.jit.ScriptModule):  # its layers are compiled, not modules
        raise ConfigError(f"{function} got a TorchScript module (torch.jit.script or trace), "
                          f"whose layers cannot be replaced; call {function} on the eager "
                          f"model, then script or trace the result")
    check_not_distributed(model, function, verb)


def check_not_distributed(model: nn.Module, function: str, verb: str) -> None:
    """Refuse a ``DistributedDataParallel`` model. Why: its gradient sync is built once, on
    the parameters it wrapped; layers replaced inside it have parameters it never
    averages, so the processes' copies drift apart silently (and its next step fails
    with DDP's unused-parameters error, which names no conversion). ``nn.DataParallel``
    copies the model at every forward and converts as it is. A compiled one
    (``torch.compile(DistributedDataParallel(model))``) is looked inside."""
    inner = getattr(model, "_orig_mod", model)  # (torch.compile's wrapper)
    if isinstance(inner, nn.parallel.DistributedDataParallel):
        compiled, path = ((" (compiled)", "._orig_mod.module") if inner is not model
                          else ("", ".module"))
        raise ConfigError(f"{function} got a DistributedDataParallel model{compiled}, whose "
                          f"gradient sync keeps the parameters it was built with (new layers' "
                          f"would not be averaged); {verb} its {path}, then wrap the result in "
                          f"DistributedDataParallel again")


def check_is_module(model, function: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{function} needs an nn.Module, got {type(model).__name__}")


def weight_constraints(conv: nn.Conv2d) -> list[str]:
    """What computes ``conv``'s weight or bias from other tensors: torch's parametrizations
    (named by their class) and its older weight-recomputing hooks."""
    found = [p for plist in getattr(conv, "parametrizations", {}).values() for p in plist]
    found += [h for h in conv._forward_pre_hooks.values() if isinstance(h, WEIGHT_HOOKS)]
    return list(dict.fromkeys(type(f).__name__.lstrip("_") for f in found))


def constrained_named(modules: dict[str, nn.Module]) -> str:
    """"" or the modules of ``modules`` whose tensors a parametrization or pruning computes,
    each with what computes them (the first four, then "and N more"): what
    :func:`~basisconv.surgery.apply_basis`'s and :func:`~basisconv.dense_form.to_dense`'s
    warnings name."""
    constrained = {name: kinds for name, module in modules.items()
                   if (kinds := weight_constraints(module))}
    listed = ", ".join(f"{name!r} ({', '.join(kinds)})"
                       for name, kinds in list(constrained.items())[:4])
    return listed + (f" and {len(constrained) - 4} more" if len(constrained) > 4 else "")


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
