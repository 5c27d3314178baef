"""Skip-training of the coefficient matrices, our reading of the paper's "practical
skip-training scheme" (the paper's details are not available to us):

* *dense warm-up, then convert*: train the dense model for a few epochs, then call
  ``apply_basis(model, layers, num_basis, inplace=True, convert=True)``
  (:mod:`basisconv.surgery`); the basis filters and coefficients are fitted to the trained
  weights (``BasisConv2d.from_conv``). Build a new optimizer afterwards: the converted
  layers have new parameters.
* *coefficients trained every N steps*: :class:`CoefficientSkipSchedule` (here) switches
  ``requires_grad`` of the coefficients off on the other steps, so autograd does not compute
  their gradient at all and the optimizer skips them (``model_cost`` of the model on a
  skipped step counts that saving; ``network.skip_training_cost`` says how a run records
  it). Under ``fuse_norm`` the folded norm's backward needs the combination matrix's
  gradient anyway: a skipped step saves only a low-rank factor product there.

``basisconv.surgery``, where the schedule was first, still exports it.
"""

from __future__ import annotations

import contextlib

import torch.nn as nn

from .counts import is_int
from .errors import ConfigError
from .layers import basis_layers

#: The mark a :class:`CoefficientSkipSchedule` sets on a layer whose coefficients it froze
#: for a step.
_FROZEN_BY_SCHEDULE = "_basisconv_frozen_by_skip_schedule"


def frozen_by_schedule(layer: nn.Module) -> bool:
    """Whether a :class:`CoefficientSkipSchedule` froze ``layer``'s coefficients for its
    current (skipped) step: they are trainable all the same."""
    return getattr(layer, _FROZEN_BY_SCHEDULE, False)


class CoefficientSkipSchedule:
    """Skip-training of the coefficient matrices: they train only on every
    ``train_every``-th step (our reading of the paper's skip-training scheme).

    Call it once per step, before the forward: ``schedule(step)``, which returns whether
    the coefficients train on this step. On skipped steps the coefficients have
    ``requires_grad=False``, so autograd does not compute their gradient (the
    combination's weight-gradient matmul is not run, except under ``fuse_norm``, whose
    folded norm needs it), and their ``.grad`` is set to ``None``, so optimizers (SGD,
    Adam, ...) leave them, momentum and weight decay included, untouched.

    After the loop, :meth:`restore` makes them trainable again (or use the schedule as a
    context manager): a loop that ended on a skipped step left them frozen, so a later
    phase without the schedule silently did not train them. A coefficient the schedule
    froze is marked (on its layer, which a copy of the model keeps: a parameter's own
    attributes are lost by ``deepcopy``, as ``apply_basis`` copies) so that a schedule built
    later (per epoch, after more conversions, on a model saved whole) still takes it as
    trainable; one frozen by the user stays frozen.
    """

    def __init__(self, model: nn.Module, train_every: int):
        if not is_int(train_every) or train_every < 1:
            raise ConfigError(f"train_every must be an int >= 1 (1 = train the coefficients "
                              f"every step), got {train_every!r}")
        self.train_every = int(train_every)
        layers = list(basis_layers(model).values())
        if not layers:
            raise ConfigError("CoefficientSkipSchedule: the model has no BasisConv2d layers; "
                              "convert some with apply_basis first")
        seen: dict[int, nn.Parameter] = {}
        for layer in layers:
            for p in layer.coefficient_parameters():
                # frozen coefficients stay frozen on active steps too, unless a schedule
                # froze them (its skipped step, not the user's choice)
                if p.requires_grad or getattr(layer, _FROZEN_BY_SCHEDULE, False):
                    seen.setdefault(id(p), p)
        if not seen:
            raise ConfigError("CoefficientSkipSchedule: every coefficient matrix of the model is "
                              "frozen (requires_grad=False); there is nothing to skip-train")
        self.parameters = list(seen.values())
        # the layers whose coefficients this schedule freezes and marks (once, not per step)
        self.layers = [layer for layer in layers
                       if any(id(p) in seen for p in layer.coefficient_parameters())]

    @contextlib.contextmanager
    def skipped(self):
        """The model as on a skipped step (its coefficients not training), inside the
        ``with`` block, to count that step's cost; put back after."""
        training = [p.requires_grad for p in self.parameters]
        for p in self.parameters:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, was in zip(self.parameters, training):
                p.requires_grad_(was)

    def __call__(self, step: int) -> bool:
        active = step % self.train_every == 0
        self._mark(frozen=not active)
        for p in self.parameters:
            p.requires_grad_(active)
            if not active:
                p.grad = None
        return active

    def restore(self) -> None:
        """The coefficients trainable again, as before the schedule (after its loop)."""
        self._mark(frozen=False)
        for p in self.parameters:
            p.requires_grad_(True)

    def _mark(self, frozen: bool) -> None:
        """Mark the layers whose coefficients this schedule froze (or unmark them)."""
        for layer in self.layers:
            setattr(layer, _FROZEN_BY_SCHEDULE, frozen)

    def __enter__(self) -> "CoefficientSkipSchedule":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
