"""The network a config describes: a registry model (``model/``) whose chosen layers
become basis convolutions as ``basis/`` says, and what a run record says about it
(parameters, FLOPs, converted layers).

The layers are an argument, resolved before the network is built (see
``basisconv.sensitivity.choose_layers``): building a network never trains anything."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from typing import Any, Iterator, Mapping, Union

import torch
import torch.nn as nn
from omegaconf import DictConfig

from .checkpoint import load_source_weights
from .kernels import graph_trials
from .cost import model_cost
from .errors import ConfigError
from .model_copy import modes_kept
from .models import build_model
from .surgery import CONFIG_KEYS, CoefficientSkipSchedule, apply_basis, basis_report

#: The layers to convert: ``None`` (none), ``"all"``, or module names and patterns.
Layers = Union[list, str, None]


def to_basis(model: nn.Module, cfg: DictConfig, layers: Layers, *, convert: bool) -> nn.Module:
    """Turn ``layers`` of ``model`` into basis convolutions as ``cfg.basis`` says, in place.
    ``convert``: fit them to the current weights (a trained model, or after the dense
    warm-up) instead of a from-scratch init."""
    if layers is None:
        return model
    basis = cfg.basis
    return apply_basis(model, layers, basis.size, inplace=True, convert=convert,
                       only_where_saves=basis.only_where_saves,
                       share_coefficients=basis.share_coefficients, combine=basis.combine,
                       coefficient_rank=basis.coefficient_rank, fuse_norm=basis.fuse_norm,
                       fit=basis.get("fit", "pivots"),
                       keys={**CONFIG_KEYS, "layers": "selection.layers"})


def build_dense(cfg: DictConfig) -> nn.Module:
    """The dense registry model ``cfg.model`` names, for ``cfg.data``'s classes: what every
    producer builds first (a run, a probe, a cost table, a timing, a dry conversion)."""
    return build_model(cfg.model.name, num_classes=cfg.data.num_classes, width=cfg.model.width)


#: The module attributes :func:`architecture_digest` reads (those that shape a layer's
#: computation), where a module has them.
ARCHITECTURE_ATTRIBUTES = ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                           "dilation", "groups", "padding_mode", "in_features",
                           "out_features", "num_features", "eps", "affine",
                           "track_running_stats")


def architecture_digest(cfg: DictConfig) -> str:
    """A digest of what ``cfg``'s dense model is made of: each module's name, class, the
    attributes that shape it (:data:`ARCHITECTURE_ATTRIBUTES`) and its parameters' and
    buffers' shapes, built on the meta device. Caches keyed by the model's name and width
    give a table measured on an edited definition (a user's model file changed between
    runs) unless this is checked. Not the modules' ``repr``: torch's text changes between
    versions (``BatchNorm2d`` gained ``bias=``), and a table published by one machine is
    read on another. The forward's code is not in it."""
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                model = build_dense(cfg)
        except Exception:  # a model whose __init__ reads values (.item()): built for real
            model = build_dense(cfg)
    parts = [(name, type(module).__qualname__,
              {key: getattr(module, key) for key in ARCHITECTURE_ATTRIBUTES
               if hasattr(module, key)},
              [(n, list(t.shape)) for n, t in module.named_parameters(recurse=False)],
              [(n, list(t.shape)) for n, t in module.named_buffers(recurse=False)])
             for name, module in model.named_modules()]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def held_back() -> Iterator[None]:
    """A dry conversion's scope: tensors made on the meta device (no memory, no values),
    its warnings and the package's logs below errors held back for the real conversion,
    which says them (a layer left dense, a skipped conv) where the run makes it."""
    package = logging.getLogger("basisconv")
    level = package.level
    package.setLevel(logging.ERROR)
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        package.setLevel(level)


def check_conversion(cfg: DictConfig, layers: Layers, model: nn.Module | None = None) -> None:
    """Refuse now what converting ``layers`` would refuse later (a basis size or coefficient
    rank a layer cannot take, an unknown layer name): a dense warm-up converts only after
    its epochs, which would otherwise train first and be lost. The conversion is made
    :func:`held_back`, of ``model`` where given (``cfg``'s dense model on the meta device,
    which it converts: built once for all of a config's checks)."""
    with held_back():
        to_basis(build_dense(cfg) if model is None else model, cfg, layers, convert=False)


def converts_later(cfg: DictConfig) -> bool:
    """Dense warm-up (skip-training): train dense first, convert after some epochs."""
    return cfg.selection.policy != "none" and cfg.basis.dense_warmup_epochs > 0


def build_network(cfg: DictConfig, layers: Layers, *, basis_now: bool | None = None,
                  restoring: bool = False) -> nn.Module:
    """The model of ``cfg`` with ``layers`` in basis form. Basis layers are applied now
    unless the config asks for a dense warm-up first (``basis_now`` overrides, e.g. to
    rebuild a converted model before loading its checkpoint). ``basis.source_checkpoint``
    is loaded either way: a dense warm-up starts from it, as a conversion now would.
    ``restoring``: a checkpoint's weights are loaded next, so the layers are not fitted to
    anything and ``basis.source_checkpoint`` is not read (a resumed run needs neither, and
    its source may be gone)."""
    model = build_dense(cfg)
    if basis_now is None:
        basis_now = not converts_later(cfg)
    convert = cfg.basis.init == "convert" and not restoring
    if convert and cfg.basis.source_checkpoint:
        load_source_weights(model, cfg.basis.source_checkpoint)
    if not basis_now:
        return model
    return to_basis(model, cfg, layers, convert=convert)


def describe(model: nn.Module, image_shape=(3, 32, 32), batch: int = 1) -> dict[str, Any]:
    """Parameters, per-image FLOPs (forward; backward split into grad-input and
    grad-weight, as ``basisconv.cost`` counts them) and the basis layers of ``model``.
    The FLOPs are counted at the training ``batch`` (one process's, under torchrun) and
    divided by it: what a layer pays once per batch (folded-norm statistics, a low-rank
    coefficient product) is shared by its images, as
    :func:`basisconv.candidates.layer_savings` counts it too. Counted as in
    training whatever the model's mode (a dense warm-up converts right after evaluating)."""
    with modes_kept(model):  # a training step's counts: a folded norm counted in eval
        model.train()        # mode (running statistics) has no moments, less backward
        cost = model_cost(model, (batch, *image_shape))
    report = basis_report(model)
    per_image = {k: round(getattr(cost, k) / batch)
                 for k in ("forward_flops", "grad_input_flops", "grad_weight_flops")}
    return {"parameters": cost.params, "forward_flops": per_image["forward_flops"],
            "backward_flops": per_image["grad_input_flops"] + per_image["grad_weight_flops"],
            "grad_input_flops": per_image["grad_input_flops"],
            "grad_weight_flops": per_image["grad_weight_flops"],
            "basis_layers": [row["name"] for row in report], "basis_report": report}


def skip_training_cost(model: nn.Module, schedule: CoefficientSkipSchedule,
                       batch: int = 1) -> dict[str, int]:
    """What skip-training (``basis.coefficient_update_every=N``) saves, per image as
    :func:`describe` counts: the backward FLOPs of a step whose coefficients do not train,
    and the mean over a cycle of ``N`` steps, one of which trains them. (``describe``'s
    own counts are those of a step that trains them.)"""
    every = schedule.train_every
    trained = describe(model, batch=batch)["backward_flops"]
    with schedule.skipped():
        skipped = describe(model, batch=batch)["backward_flops"]
    return {"coefficient_update_every": every, "skipped_step_backward_flops": skipped,
            "mean_backward_flops": round((trained + (every - 1) * skipped) / every)}


def rebind_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module,
                     before: Mapping[str, torch.Tensor]) -> None:
    """Point ``optimizer`` at ``model``'s parameters after surgery replaced some of them,
    keeping its groups, their hyper-parameters and its schedule (the scheduler holds this
    optimizer). ``before`` is ``dict(model.named_parameters())`` taken before the surgery:
    a new parameter joins the group of the one it replaced, by its layer's name (a basis
    layer's filters and coefficients the conv's weight's group, its bias the bias's), so a
    user's groups (no weight decay on norms and biases, another lr for the head) stay as
    they were. Each group holds its parameters in the model's order (as an optimizer built
    from the model would, which a resumed run loads this one's state into). A parameter
    that was in no group stays out. The parameters surgery made start with no momentum;
    the others keep theirs, so the layers it left alone train on as before.

    With momentum, the new parameters start with a zero buffer rather than none where
    their group's others have one: SGD's first step then stores the gradient as the
    buffer, as it does for a missing one (dampening 0), and fused SGD (CUDA's) refuses a
    mix of parameters with and without a buffer."""
    group_of = {id(p): i for i, group in enumerate(optimizer.param_groups)
                for p in group["params"]}
    old = {id(p) for p in before.values()}
    members: list[list[torch.Tensor]] = [[] for _ in optimizer.param_groups]
    made = set()  # (ids: a tensor's == is elementwise)
    for name, p in model.named_parameters():
        if id(p) in group_of:
            members[group_of[id(p)]].append(p)
        elif id(p) not in old:  # made by the surgery
            members[_replaced_ones_group(name, before, group_of)].append(p)
            made.add(id(p))
    kept = {p: optimizer.state[p] for group in members for p in group
            if id(p) not in made and p in optimizer.state}
    optimizer.state.clear()
    optimizer.state.update(kept)
    for group, params in zip(optimizer.param_groups, members):
        group["params"] = params
        if group.get("momentum", 0) > 0 and any("momentum_buffer" in kept.get(p, {})
                                                for p in params):
            for p in params:
                if id(p) in made:
                    optimizer.state[p] = {"momentum_buffer": torch.zeros_like(p)}


def _replaced_ones_group(name: str, before: Mapping[str, torch.Tensor],
                         group_of: dict[int, int]) -> int:
    """The optimizer group of what the new parameter ``name`` replaced: its layer's bias for
    a bias, else its layer's weight (stored as ``weight``, or as a parametrization's or
    pruning's sources), as ``before`` names them. One line where there is not one."""
    layer, _, kind = name.rpartition(".")
    is_bias = kind == "bias"
    parts = {source: group_of.get(id(p)) for source, p in before.items()
             if source.startswith(f"{layer}.")
             and ("bias" in source[len(layer) + 1:]) == is_bias}
    groups = set(parts.values())
    if len(groups) == 1 and None not in groups:
        return groups.pop()
    replaced = "bias" if is_bias else "weight"
    if groups <= {None}:  # (empty: nothing of the layer was in before)
        where = "was in none of the optimizer's parameter groups; add it to one"
    else:  # a weight stored as parts (weight norm's magnitude and direction) across groups
        where = "was split: " + ", ".join(
            f"{source!r} in {'none' if group is None else f'group {group}'}"
            for source, group in parts.items()) + "; put its parts in one group"
    raise ConfigError(f"rebind_optimizer: the new parameter {name!r} has no group to join: "
                      f"layer {layer!r}'s {replaced} before the conversion {where} "
                      f"before converting (before=dict(model.named_parameters()) taken "
                      f"then), or build the optimizer from the converted model")


def choose_forms_now(model: nn.Module, shapes: list[tuple[int, ...]], *, device: torch.device,
                     memory_format: torch.memory_format = torch.contiguous_format,
                     amp_dtype: torch.dtype | None = None, graphed: bool = False,
                     input_requires_grad: bool = False) -> None:
    """Let every ``combine="auto"`` layer of ``model`` time its forms now, for a training
    forward (and backward) at the first input shape and an evaluation forward at each
    other, before ``torch.compile`` or CUDA graphs take over: neither lets a shape be
    timed, so without this a compiled model would run the stacked form everywhere (the
    fold, for layers with ``fuse_norm``).

    ``graphed``: the model will run as CUDA graph replays (``torch.compile``'s
    ``reduce-overhead``), so on CUDA the forms are timed as replays too
    (:func:`.kernels.graph_trials.graph_replays`).

    ``input_requires_grad``: the training input needs a gradient, as a layer's does when
    it is timed alone as inside a network (a whole model's images need none): the
    training forms are then timed with the input's gradient, as the layer will run.

    The model is left exactly as it was: parameters, buffers (batch-norm statistics move
    in a training forward), gradients and mode. The inputs are zeros: only shapes matter."""
    if not any(getattr(m, "combine", None) == "auto" for m in model.modules()):
        return
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # (else the gradients are left None, not put back)
    grads = {p: None if p.grad is None else p.grad.detach().clone() for p in model.parameters()}
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    try:
        with modes_kept(model):
            for i, shape in enumerate(shapes):
                model.train(i == 0)
                x = torch.zeros(shape, device=device).contiguous(memory_format=memory_format)
                x.requires_grad_(input_requires_grad and i == 0)
                with torch.set_grad_enabled(i == 0), autocast, graph_trials.graph_replays(graphed):
                    model(x)
    finally:
        model.load_state_dict(saved)
        for p, grad in grads.items():
            p.grad = grad
