"""A whole model's parameters and FLOPs, counted on the model: :func:`model_cost` (per
layer, from a forward of a copy on the ``meta`` device, each ``Conv2d``, ``BasisConv2d``
and ``Linear`` call costed by :mod:`basisconv.cost_formulas`, whose docstring states the
conventions), :func:`measure_flops` (one real step under ``FlopCounterMode``: the
independent check) and :func:`count_parameters` (the model's size).
"""

from __future__ import annotations

import logging
import types
from dataclasses import replace
from typing import Sequence

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

# (the per-layer formulas are exported from here too, where they were defined first: code
# outside the package imports them from basisconv.cost)
from .cost_formulas import (LayerCost, ModelCost, basis_conv2d_cost,  # noqa: F401
                            conv2d_cost, layer_cost, linear_cost, saves_compute)
from .counts import is_int
from .errors import BasisconvError, ConfigError, one_line, warn_caller
from .layers import BasisConv2d, NoWeightError
from .model_copy import HOOK_TABLES, check_no_unmade_lazy_module, copy_model

log = logging.getLogger(__name__)


def count_parameters(model: nn.Module) -> int:
    """Parameter entries, frozen ones too (the model's size): each tensor once (shared
    coefficients), pruned coefficients not. A lazy module not made yet is one error."""
    check_no_unmade_lazy_module(model, "count_parameters")
    total = sum(p.numel() for p in model.parameters())
    alive: dict[int, torch.Tensor] = {}
    whole: set[int] = set()  # matrices a layer uses unpruned (shared with a pruned one)
    for layer in (m for m in model.modules() if isinstance(m, BasisConv2d)):
        if layer.coefficient_rank is not None:  # (low-rank factors are never pruned)
            continue
        key = id(layer.coefficients)
        if layer.coefficient_mask is None:
            whole.add(key)
            continue
        mask = layer.coefficient_mask != 0
        alive[key] = mask if key not in alive else alive[key] | mask
    return total - sum(int(mask.numel() - mask.sum()) for key, mask in alive.items()
                       if key not in whole)


def _no_op(*args, **kwargs) -> None:
    """A hook that changes nothing (the dry run's stand-in for a user's)."""


def _input_shape(input_shape, function: str) -> tuple[int, ...]:
    """``input_shape`` as a tuple of four ints, else one error saying what it takes (an
    example input tensor, a string or a fractional size failed deep inside: ``int()`` of a
    tensor, ``torch.randn``'s list of overloads; a fraction was cut to an int)."""
    fix = "give one batch as (B, C, H, W), e.g. (1, 3, 32, 32) for one CIFAR image"
    if isinstance(input_shape, torch.Tensor):
        raise ConfigError(f"{function}: input_shape is a tensor of shape "
                          f"{tuple(input_shape.shape)}; give its shape (x.shape), not the "
                          f"tensor: {fix}")
    if (isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence)
            or not all(is_int(s) and s >= 1 for s in input_shape)):
        raise ConfigError(f"{function}: input_shape={input_shape!r}; {fix}, positive ints")
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 4:  # an unbatched (C, H, W) would count C as the batch
        raise ConfigError(f"{function}: input_shape={input_shape}; {fix}")
    return input_shape


def model_cost(model: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32), *,
               input_requires_grad: bool = False) -> ModelCost:
    """Per-layer and total cost of one forward (and backward) at ``input_shape``.

    Output sizes and which activations need a gradient come from a forward of a copy of the
    model on the ``meta`` device (no memory, no compute). ``input_requires_grad=False`` is
    the training case: nobody needs the gradient w.r.t. the images. A layer the forward
    calls under ``torch.no_grad()`` (a frozen feature extractor) has no backward; one whose
    output reaches the loss only through ``.detach()`` is still counted with its gradients
    (the dry run makes no backward): count such a model with :func:`measure_flops`.

    Only ``Conv2d``, ``BasisConv2d`` and ``Linear`` modules are counted: where the forward
    computes more convolution or matrix-product FLOPs than those (a functional
    ``F.conv2d``, ``@``, attention, a layer of another kind), which ``FlopCounterMode``
    counts in the same dry run, a warning says how many are left out.
    """
    input_shape = _input_shape(input_shape, "model_cost")
    # a lazy module makes its parameters in a pre-hook of its first forward, which the dry
    # run replaces by a no-op: its unmade weight failed deep inside torch's meta conv
    check_no_unmade_lazy_module(model, "model_cost")
    active = {name: int((m.coefficient_mask != 0).sum()) for name, m in model.named_modules()
              if isinstance(m, BasisConv2d) and m.coefficient_mask is not None}
    shadow = _meta_copy(model)
    costs: list[LayerCost] = []
    handles = _record_layer_costs(shadow, active, costs)
    try:
        computed = _dry_run(shadow, input_shape, input_requires_grad)
    finally:
        for h in handles:
            h.remove()
    result = ModelCost(input_shape, count_parameters(model), costs)
    if computed > result.forward_flops:
        warn_caller(f"model_cost: the forward computes {computed:,} FLOPs of convolutions "
                    f"and matrix products, {result.forward_flops:,} of them in the Conv2d, "
                    f"BasisConv2d and Linear modules counted; the rest (functional calls "
                    f"such as F.conv2d, @ or attention, or layers of other kinds) is not "
                    f"in these counts")
    return result


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device whose forward runs there as the model's does
    and touches nothing outside it: the user's hooks and synchronized norms would otherwise
    see, or send, meta tensors."""
    shadow = copy_model(model, "model_cost: the model cannot be copied for its dry run on the "
                               "meta device", "count with measure_flops, or make the "
                               "reparametrization permanent first (torch.nn.utils.prune.remove)",
                        meta=True).to("meta")
    for module in shadow.modules():
        # the user's hooks would see meta tensors: each becomes a no-op, kept in its table,
        # so that a fuse_norm layer that hooks keep unfused (conv_norm.conv_norm_act) is counted
        # unfused, as it runs
        for table in HOOK_TABLES:
            hooks = getattr(module, table, {})
            for key, hook in hooks.items():
                if callable(hook):  # (the *_with_kwargs tables hold flags)
                    hooks[key] = _no_op
        if (isinstance(module, _BatchNorm)
                and type(module).forward is not _BatchNorm.forward):
            # a synchronized batch norm (nn.SyncBatchNorm, or the package's CPU one) would
            # all-reduce the meta tensors of its statistics with the other processes, and
            # fail (under torchrun, the dense warm-up's conversion); the plain one gives the
            # same shapes and computes nothing counted
            module.forward = types.MethodType(_BatchNorm.forward, module)
        if isinstance(module, _BatchNorm) and module.momentum is None:
            # a cumulative average reads its batch count as a number (1 / count), which a
            # meta tensor has not: any step size gives the same shapes and counts
            module.momentum = 0.1
    return shadow


def _record_layer_costs(shadow: nn.Module, active: dict[str, int],
                        costs: list[LayerCost]) -> list:
    """Hooks on the counted modules of ``shadow`` (``Conv2d``, ``BasisConv2d``, ``Linear``)
    that append each call's :class:`LayerCost` to ``costs``, in call order, at the shapes the
    call saw (``active``: a pruned layer's kept coefficients, by name); returns their handles
    for the caller to remove. A convolution-like module of another kind is warned of: no
    formula counts it."""
    handles = []
    for name, module in shadow.named_modules():
        if isinstance(module, (nn.Conv2d, BasisConv2d, nn.Linear)):
            def hook(mod, inputs, kwargs, output, name=name):
                x = inputs[0]
                cost = layer_cost(mod, x.shape, output.shape, input_grad=x.requires_grad,
                                  name=name, active_coefficients=active.get(name),
                                  norm=kwargs.get("norm"))
                if not torch.is_grad_enabled():  # called under no_grad: autograd records
                    cost = replace(cost, grad_input_flops=0, grad_weight_flops=0)  # nothing
                costs.append(cost)
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        elif isinstance(module, (nn.modules.conv._ConvNd, nn.MultiheadAttention, nn.Bilinear)):
            warn_caller(f"model_cost: layer {name!r} ({type(module).__name__}) is not counted")
    return handles


def _dry_run(shadow: nn.Module, input_shape: tuple[int, ...], input_requires_grad: bool) -> int:
    """One forward of the meta copy ``shadow`` (which fires the cost hooks); returns the
    convolution and matrix-product FLOPs ``FlopCounterMode`` saw in it, to compare with the
    modules counted. A forward that fails is one :class:`ConfigError` saying what to change
    (torch's own message names no shape, nor the layer whose weight was read)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        # in the model's own dtype: a float64 or half model refuses a float32 input
        dtype = next((t.dtype for t in shadow.parameters() if t.is_floating_point()), None)
        x = torch.empty(input_shape, device="meta", dtype=dtype,
                        requires_grad=input_requires_grad)
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:
            shadow(x)
    except BasisconvError:
        raise
    except NoWeightError as err:
        # the layer by name (else a scan of dozens of convs stops naming none)
        name = next((n for n, m in shadow.named_modules() if m is err.obj), None)
        layer = f"layer {name!r}" if name else "a converted conv"
        raise ConfigError(f"model_cost: the model's forward reads the weight of {layer} (e.g. "
                          f"a decoder tied to an encoder's filters, or "
                          f"F.conv2d(x, conv.weight)): a BasisConv2d has no weight tensor; "
                          f"leave {name or 'that conv'} out of the layers converted") from None
    except (RuntimeError, NotImplementedError, ValueError) as err:
        # on the meta device torch's own message names no shape ("Invalid channel dimensions");
        # a batch norm in training mode refuses one value per channel (ValueError): a batch
        # of 1 reaching a BatchNorm1d head, or a 1x1 map
        raise ConfigError(f"model_cost: the model's forward failed on an input of shape "
                          f"{input_shape} ({one_line(err)[:300]}); pass the "
                          f"input_shape (B, C, H, W) your model takes (the default is one "
                          f"CIFAR image; a batch norm in training mode needs B >= 2, and "
                          f"the counts are per batch), or, if the forward needs real values "
                          f"(.item(), data-dependent shapes), count with measure_flops") from err
    return counter.get_total_flops()


def measure_flops(model: nn.Module, input_shape: Sequence[int] = (2, 3, 32, 32), *,
                  input_requires_grad: bool = False) -> dict[str, int]:
    """Forward and backward FLOPs of one real step, counted by ``FlopCounterMode``: the
    independent check of :func:`model_cost` (FLOPs are linear in the batch, so a batch of
    2 is enough). The backward is that of ``output.sum()``. It runs on ``model`` itself and
    leaves it as it was: the parameters' ``.grad``, the buffers (batch norms' running
    statistics) and the random state are put back.

    A ``combine="auto"`` layer times its forms on its first call of a shape; that step
    runs uncounted first, so the count is of the forms the layer then runs, not of the
    timing trials (counted, they came to many times the forward).

    Not a check for grouped or depthwise convolutions: torch's counter (2.13) counts their
    weight gradient as if ungrouped, ``groups`` times too many (a depthwise 32-channel
    conv: 32x; their input gradient and forward it counts right, and :func:`model_cost`
    all three). The registry's models have none; a model that has them is warned of."""
    from torch.utils.flop_counter import FlopCounterMode

    grouped = [name for name, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and m.groups > 1]
    if grouped:
        log.warning("measure_flops: torch's FLOP counter counts the weight gradient of "
                    "grouped convolutions (%s) groups times too many; model_cost counts it "
                    "right",
                    ", ".join(grouped[:3]) + (", ..." if len(grouped) > 3 else ""))

    input_shape = _input_shape(input_shape, "measure_flops")
    param = next(model.parameters(), torch.empty(0))  # (none: a model of no parameters)
    # the step runs on the model itself (a copy is not always possible, and doubles its
    # memory): what it changes is put back, so that counting leaves the model as it was
    # (else its gradients were added to the parameters' .grad, its batch norms' running
    # statistics moved towards a random input, and the global random stream advanced)
    grads = {p: p.grad for p in model.parameters()}
    for p in grads:  # (else the backward adds to a held gradient in place)
        p.grad = None
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    cuda = [param.device.index or 0] if param.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            x = torch.randn(input_shape, device=param.device, dtype=param.dtype,
                            requires_grad=input_requires_grad)

            def step() -> torch.Tensor:
                return model(x).float().sum()

            def backward(loss: torch.Tensor) -> None:  # a model with nothing to train has none
                if loss.requires_grad:
                    loss.backward()

            if any(getattr(m, "combine", None) == "auto" for m in model.modules()):
                backward(step())
            with FlopCounterMode(display=False) as forward:
                loss = step()
            with FlopCounterMode(display=False) as backward_count:
                backward(loss)
    finally:
        with torch.no_grad():
            for p, grad in grads.items():
                p.grad = grad
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
    return {"forward_flops": forward.get_total_flops(),
            "backward_flops": backward_count.get_total_flops()}


__all__ = ["count_parameters", "measure_flops", "model_cost", "LayerCost", "ModelCost",
           "basis_conv2d_cost", "conv2d_cost", "layer_cost", "linear_cost", "saves_compute"]
