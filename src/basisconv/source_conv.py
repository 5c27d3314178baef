"""The trained ``nn.Conv2d`` a basis layer is converted from, as a conversion reads it
(:meth:`~basisconv.layers.BasisConv2d.from_conv`, and :func:`basisconv.surgery.apply_basis`
for many at once): whether it can be converted at all, the weight that torch's hooks compute
for it now, whether its parameters train, and the basis size an error bound asks of its
filters.

Kept apart from :mod:`basisconv.layers`, which says what a basis layer stores and computes:
this is the other side, torch's ways of making a conv's weight (parametrizations, the older
weight-norm, spectral-norm and pruning hooks, lazy and subclassed convs) that a conversion
must read right or refuse. Every name here was defined in ``basisconv.layers`` first, which
still exports it (and :func:`parametrizations_in_eval`, added since).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable, Iterator

import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from .counts import is_int, is_number
from .errors import ConfigError
from .fitting import FIT_MODES, smallest_basis, svd_errors
from .model_copy import modes_kept, unmade_lazy


def check_convertible(conv: nn.Module, where: str = "", skipping: bool = False) -> None:
    """Raise a one-line error when ``conv`` cannot become a
    :class:`~basisconv.layers.BasisConv2d`. ``skipping``: the reason is a warning's, for a
    layer a pattern matched that the conversion leaves as it is, so it says the layer stays
    dense and how it could be converted, not to leave it dense (the error's advice for a
    layer the caller named)."""
    at = f"layer {where!r}" if where else "the layer"
    dense, other = (("so it stays dense", "to convert it,") if skipping
                    else ("so leave this layer dense", "or"))
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"{at} is a {type(conv).__name__}, not an nn.Conv2d; only 2-D "
                        f"convolutions can be converted")
    if unmade_lazy(conv):
        raise ConfigError(f"{at} is a lazy conv whose weight is not made yet; run one forward "
                          f"pass of the model first, then convert")
    # A subclass that computes its own output (weight standardization, timm's dynamic
    # "same" padding, fake quantization) is not the plain conv of its weight, so a basis
    # fitted to that weight would silently compute something else.
    kind = type(conv)
    if kind.forward is not nn.Conv2d.forward or kind._conv_forward is not nn.Conv2d._conv_forward:
        raise ConfigError(f"{at} is a {kind.__name__}, an nn.Conv2d subclass with its own "
                          f"forward; a basis layer would compute a plain conv of its weight "
                          f"instead, {dense} ({other} replace it by a plain nn.Conv2d with "
                          f"the weight it uses)")
    # the same, where the forward is replaced on the module itself (conv.forward = ..., as
    # a patching library does): the class alone said it was a plain conv
    patched = [name for name in ("forward", "_conv_forward") if name in vars(conv)]
    if patched:
        raise ConfigError(f"{at} has its {patched[0]} replaced on the instance; a basis layer "
                          f"would compute a plain conv of its weight instead, {dense} "
                          f"({other} del conv.{patched[0]} if it computes the plain conv)")
    check_plain_options(conv.groups, conv.padding_mode, at, dense,
                        f"{dense} ({other} {_padded_first(conv)})")


#: The module that pads as a conv's ``padding_mode`` does: such a conv is this module then
#: the conv with ``padding=0``, which converts (what a padded conv's error suggests).
PAD_MODULES = {"reflect": "nn.ReflectionPad2d", "replicate": "nn.ReplicationPad2d",
               "circular": "nn.CircularPad2d"}


def _padded_first(conv: nn.Conv2d) -> str:
    """How a conv of another ``padding_mode`` becomes convertible: its padding as a module
    before it, the conv itself with ``padding=0``."""
    pad = PAD_MODULES.get(conv.padding_mode, "a padding module")
    sides = tuple(conv._reversed_padding_repeated_twice)  # (left, right, top, bottom)
    amount = sides[0] if len(set(sides)) == 1 else sides
    return (f"pad its input first: nn.Sequential({pad}({amount!r}), the conv with padding=0) "
            f"converts")


def check_plain_options(groups, padding_mode, at: str, fix: str = "leave this layer dense",
                        padding_fix: str | None = None) -> None:
    """What a basis layer computes is an ungrouped conv with zero padding: a conv of other
    ``groups`` or ``padding_mode`` is one error (converting it, or building a
    :class:`~basisconv.layers.BasisConv2d` with them as one would an ``nn.Conv2d``);
    ``padding_fix`` is the other padding's advice where it is not ``fix``."""
    if groups != 1:
        raise ConfigError(f"{at} is a grouped conv (groups={groups!r}); basis convolutions "
                          f"support groups=1 only, {fix}")
    if padding_mode != "zeros":
        raise ConfigError(f"{at} uses padding_mode={padding_mode!r}; basis convolutions "
                          f"support zero padding only, {padding_fix or fix}")


def check_finite_weight(conv: nn.Conv2d, where: str = "", fitting: bool = True) -> None:
    """A conv whose weight holds NaN or inf can be neither fitted (LAPACK fails deep
    inside with an internal assert) nor give a fresh layer its scale: one error naming it.
    A weight on the meta device has no values: it cannot be ``fitting`` either."""
    weight = conv.weight.detach()
    at = f"layer {where!r}" if where else "the layer"
    if weight.is_meta:
        if fitting:
            raise ConfigError(f"{at} has no weights yet (meta device): load them first "
                              f"(load_state_dict(..., assign=True)), or make fresh basis "
                              f"layers (convert=False)")
    elif not bool(torch.isfinite(weight).all()):
        raise ConfigError(f"{at} has NaN or infinite weights; convert a model whose weights "
                          f"are finite (from a diverged run? load an earlier checkpoint)")


#: torch's forward pre-hooks that recompute ``weight`` (old-style weight and spectral norm,
#: pruning masks): a conversion fits the weight they computed, and a basis layer has none.
WEIGHT_HOOKS = (WeightNorm, SpectralNorm, BasePruningMethod)


def trains(conv: nn.Conv2d, name: str) -> bool:
    """Whether ``conv``'s ``weight`` or ``bias`` trains: its parameter's ``requires_grad``,
    or, where a hook or parametrization computes it afresh (pruning, weight or spectral
    norm), whether any parameter it is computed from does. Why not the computed tensor's
    own flag: it says only whether grad mode was on when it was made, and
    :func:`refresh_computed_weight` remakes it under ``no_grad`` (as does a conversion
    inside ``torch.no_grad()``), so a trainable conv would give a frozen basis layer."""
    stored = conv._parameters.get(name)
    if stored is not None:
        return stored.requires_grad
    if parametrize.is_parametrized(conv, name):
        return any(p.requires_grad for p in conv.parametrizations[name].parameters())
    for hook in conv._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm) and hook.name == name:
            sources = [f"{name}_g", f"{name}_v"]
        elif isinstance(hook, SpectralNorm) and hook.name == name:
            sources = [f"{name}_orig"]
        elif isinstance(hook, BasePruningMethod) and hook._tensor_name == name:
            sources = [f"{name}_orig"]
        else:
            continue
        # a source may be computed in its turn (spectral norm, then pruning of its
        # weight_orig; a parametrized weight_v): followed down to the parameters
        return any(trains(conv, source) for source in sources)
    return getattr(conv, name).requires_grad


def refresh_computed_weight(conv: nn.Conv2d) -> None:
    """Recompute a weight that torch's older hooks (``torch.nn.utils.weight_norm``,
    ``spectral_norm``, ``prune``) keep as a plain attribute and update only at the start
    of a forward: after ``load_state_dict`` it still holds the weight from before, and a
    conversion would fit that stale weight (wrong even at full rank). Spectral norm's is
    its evaluation weight (no power iteration), what the loaded model computes in eval."""
    with torch.no_grad():
        for hook in conv._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm):
                setattr(conv, hook.name, hook.compute_weight(conv))
            elif isinstance(hook, SpectralNorm):
                setattr(conv, hook.name, hook.compute_weight(conv, do_power_iteration=False))
            elif isinstance(hook, BasePruningMethod):
                setattr(conv, hook._tensor_name, hook.apply_mask(conv))


@contextlib.contextmanager
def parametrizations_in_eval(convs: Iterable[nn.Module]) -> Iterator[None]:
    """Read the convs' parametrized weights as in eval for the block, their modes put back
    after. Why: a parametrization may change its state at each read in training mode
    (spectral norm's power iteration), and a conversion reads a weight several times (to
    check, to size, to fit): a training model's conv was fitted some iterations ahead of
    it (at full rank off by ~1e-3, neither its eval output nor its next forward's), and the
    model a conversion copies had its state advanced. In eval it is the weight a loaded
    model computes, as :func:`refresh_computed_weight` takes the older spectral norm's."""
    with contextlib.ExitStack() as stack:
        for conv in convs:
            if parametrize.is_parametrized(conv):
                stack.enter_context(modes_kept(conv.parametrizations))
                conv.parametrizations.eval()
        yield


def check_max_error(max_error) -> None:
    """A relative weight error bound: a number in ``[0, 1)``."""
    if not is_number(max_error) or not 0.0 <= float(max_error) < 1.0:
        raise ConfigError(f"max_error must be in [0, 1), got {max_error!r}")


def check_not_inference_mode(function: str) -> None:
    """Refuse a conversion under ``torch.inference_mode()``. Why: every tensor it makes (the
    new layers' parameters, and a copied model's) would be an inference tensor, which can
    never train: the first training step after fails in torch's words ("Inference tensors
    cannot be saved for backward"), naming no conversion. ``no_grad`` makes plain ones."""
    if torch.is_inference_mode_enabled():
        raise ConfigError(f"{function} under torch.inference_mode() makes inference tensors, "
                          f"which cannot train; convert under torch.no_grad() instead")


def check_fit(fit) -> str:
    """How a conversion chooses its basis: one of :data:`~basisconv.fitting.FIT_MODES`."""
    if fit not in FIT_MODES:
        raise ConfigError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    return fit


def basis_size_for_error(conv: nn.Conv2d, max_error: float,
                         coefficient_rank: int | None = None, fit: str = "pivots") -> int:
    """The smallest basis of ``conv``'s filters whose relative weight error is at most
    ``max_error`` (with ``coefficient_rank``, that of the rank-limited coefficients): how
    ``from_conv`` and ``apply_basis`` size a layer by an error bound instead of a count.
    With ``fit="svd"`` the error is the best rank-``m`` weight's (the singular values'
    energy, BasisConv's criterion)."""
    check_max_error(max_error)
    if check_fit(fit) == "svd":
        if coefficient_rank is not None:
            raise ConfigError("max_error with fit='svd' sizes a layer by its singular values; "
                              "give num_basis with coefficient_rank, or fit='pivots'")
        errors = svd_errors(conv.weight)
        return max(1, int(torch.nonzero(errors <= float(max_error) + 1e-12)[0]))
    if coefficient_rank is not None and (not is_int(coefficient_rank) or coefficient_rank < 1):
        raise ConfigError(f"coefficient_rank must be None or an int >= 1, got "
                          f"{coefficient_rank!r}")  # (before the search uses it)
    m, reached = smallest_basis(conv.weight, float(max_error), coefficient_rank)
    if m is None and math.isinf(reached):
        raise ConfigError(f"coefficient_rank={coefficient_rank} fits no basis size of "
                          f"out_channels={conv.out_channels}: it must be at most num_basis and "
                          f"out_channels - num_basis")
    if m is None:
        raise ConfigError(
            f"max_error={max_error} cannot be met with coefficient_rank={coefficient_rank}: "
            f"its coefficients reach a relative weight error of {reached:.3g} at best; raise "
            f"coefficient_rank or max_error, or give num_basis")
    return m
