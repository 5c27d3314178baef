"""Each selected layer's basis size, and which of them convert: a count or a fraction of
its width (``num_basis``), or the smallest basis within an error bound of its trained
filters (``max_error``); then, under ``only_where_saves``, the layers whose basis form
saves no multiply-adds left dense (else each is warned of).

Apart from :mod:`basisconv.surgery` because it decides, and replaces nothing: it reads
the selected convs and the cost model, while the surgery that calls it
(:func:`~basisconv.surgery.apply_basis`) does the replacing. Its INFO lines (a layer left
dense) are logged under this module's name.
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch.nn as nn

from .cost_formulas import forward_macs_per_pixel, saves_compute
from .counts import is_int
from .errors import ConfigError, warn_caller
from .layer_options import check_basis_size, resolve_num_basis, size_entry
from .source_conv import basis_size_for_error, check_finite_weight, check_max_error

log = logging.getLogger(__name__)


def check_max_error_use(max_error, num_basis, convert: bool) -> None:
    """Refuse a ``max_error`` that cannot size the layers: without ``convert`` (no trained
    filters are read), beside a ``num_basis``, or out of its range."""
    if not convert:
        raise ConfigError("apply_basis: max_error sizes layers by their trained filters, "
                          "so it needs convert=True")
    if num_basis is not None:
        raise ConfigError("apply_basis: give max_error (sizes by an error bound on the "
                          "trained filters, with convert=True) or num_basis (a count or "
                          "fraction), not both")
    check_max_error(max_error)


def check_sizes_per_layer(sizes: Mapping, num_basis, max_error, key: str | None = None
                          ) -> None:
    """Check the sizes of layers given as a name -> size mapping, each by the count-or-
    fraction rule, before any layer is found or converted; refuse a ``num_basis`` or
    ``max_error`` beside them (as those two are refused together): with every layer's size
    given, which of two sizes holds would be a guess. ``key`` names the mapping in errors
    (:func:`~basisconv.layer_options.size_entry`)."""
    other = (f"num_basis={num_basis}" if num_basis is not None else
             f"max_error={max_error}" if max_error is not None else None)
    if other:
        raise ConfigError(f"apply_basis: layers given with their sizes and {other} too; give "
                          f"each layer's size in the mapping, or its names as a list with "
                          f"{other}")
    for entry, size in sizes.items():
        check_basis_size(size, key=size_entry(entry, key))


def sized_targets(targets: dict[str, nn.Conv2d], num_basis, max_error: float | None,
                  only_where_saves: bool, combine: str, fuse_norm: bool,
                  coefficient_rank: int | None, fit: str, keys: Mapping[str, str]
                  ) -> tuple[dict[str, nn.Conv2d], dict[str, int]]:
    """The selected layers that :func:`~basisconv.surgery.apply_basis` converts, with each
    one's basis size: sized by ``max_error`` (:func:`_sizes_for_error`) or ``num_basis``
    (:func:`_sizes_of`: one size, or each layer's by name), then those that save no
    compute left dense under ``only_where_saves`` (else warned of, :func:`_where_it_saves`).
    Where that leaves none, a warning says the model returned has no basis layer."""
    key = keys["only_where_saves"]
    leave_dense = ("pass only_where_saves=True" if key == "only_where_saves" else
                   f"set {key}=true") + " to leave such layers dense"
    if max_error is not None:
        sizes = _sizes_for_error(targets, max_error, coefficient_rank, fit)
    else:
        targets, sizes = _sizes_of(targets, num_basis, only_where_saves, keys["num_basis"],
                                   leave_dense, keys.get("layers"))
    selected = bool(targets)
    targets = _where_it_saves(targets, sizes, combine, fuse_norm, only_where_saves, leave_dense)
    if selected and not targets and key == "only_where_saves":
        # (a count above every layer is refused in _sizes_of; a config's run says so itself,
        # training.Training.warn_if_dense; each layer's reason is logged at INFO, which a script of
        # the Python API does not show)
        # (a bound is loosened, not shrunk: a tighter one gives larger bases)
        size, fix = ((f"max_error={max_error}", "give a larger max_error")
                     if max_error is not None else
                     ("the sizes given", "give smaller bases") if isinstance(num_basis, Mapping)
                     else (f"{keys['num_basis']}={num_basis}", "give a smaller basis"))
        warn_caller(f"apply_basis: at {size} no selected layer saves compute, so "
                    f"only_where_saves=True left them all dense and the model returned has "
                    f"no basis layer; {fix}")
    return targets, sizes


def _sizes_for_error(targets: dict[str, nn.Conv2d], max_error: float,
                     coefficient_rank: int | None, fit: str) -> dict[str, int]:
    """Each layer's smallest basis within ``max_error`` of its trained filters."""
    sizes = {}
    for name, conv in targets.items():
        check_finite_weight(conv, name, fitting=True)
        try:
            sizes[name] = basis_size_for_error(conv, max_error, coefficient_rank, fit)
        except ConfigError as err:
            raise ConfigError(f"layer {name!r}: {err}") from None
    return sizes


def _sizes_of(targets: dict[str, nn.Conv2d], num_basis, only_where_saves: bool, key: str,
              leave_dense: str, layers_key: str | None = None
              ) -> tuple[dict[str, nn.Conv2d], dict[str, int]]:
    """Each layer's basis size for ``num_basis`` (a count, or a fraction of its width; or a
    mapping of layer names to the entry of ``apply_basis``'s mapping that named each and
    its size), and the layers that take one: under ``only_where_saves`` a count above a
    layer's width (one size for a model whose layers differ in width) leaves it dense, as
    a count of all its filters would; a count above every layer is refused (nothing would
    change), as is a mapping's count above a layer's width (a size given for the layers
    its entry names: the error names that entry, ``layers['layer2.*']``, under
    ``layers_key`` where the caller names the mapping so)."""
    per_layer = isinstance(num_basis, Mapping)
    widest = max((conv.out_channels for conv in targets.values()), default=0)
    if only_where_saves and targets and _count_above(num_basis, widest):
        raise ConfigError(f"{key}={num_basis} is more than the output channels of every "
                          f"selected layer (at most {widest}); give a count up to {widest}, "
                          f"or a fraction in (0, 1] of each layer's out_channels")
    kept, sizes = {}, {}
    for name, conv in targets.items():
        entry, size = num_basis[name] if per_layer else (None, num_basis)
        size_key = size_entry(entry, layers_key) if per_layer else key
        above = not per_layer and _count_above(size, conv.out_channels)  # 16 of a layer's 8
        if above and only_where_saves:
            log.info("layer %r: %s=%d is more than its %d output channels; left dense "
                     "(only_where_saves)", name, key, num_basis, conv.out_channels)
            continue
        try:
            sizes[name] = resolve_num_basis(size, conv.out_channels, where=name, key=size_key)
        except ConfigError as err:
            if not above or _count_above(num_basis, widest):  # (then leaving such layers
                raise                                      # dense would leave them all)
            raise ConfigError(f"{err}; or {leave_dense}") from None
        kept[name] = conv
    return kept, sizes


def _count_above(num_basis, out_channels: int) -> bool:
    """Whether ``num_basis`` is a count (an int) above a layer's ``out_channels``: one basis
    size for a model whose layers differ in width can be so for its narrower ones."""
    return is_int(num_basis) and num_basis > out_channels


def _where_it_saves(targets: dict[str, nn.Conv2d], sizes: dict[str, int], combine: str,
                    fuse_norm: bool, only_where_saves: bool, leave_dense: str
                    ) -> dict[str, nn.Conv2d]:
    """The layers to convert: those whose basis form does fewer multiply-adds, and, unless
    ``only_where_saves``, the others too, each with a warning. Judged in the stacked form
    when fused with a norm (stricter than split): a layer converted for a split saving
    must not cost more than the dense conv once fused."""
    kept = {}
    for name, conv in targets.items():
        m = sizes[name]
        if not saves_compute(conv, m, combine, fused_norm=fuse_norm):
            shape = (conv.in_channels, conv.out_channels, conv.kernel_size)
            dense = forward_macs_per_pixel(*shape, None)
            basis = forward_macs_per_pixel(*shape, m, combine, fuse_norm)
            k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
            message = (f"layer {name!r}: num_basis={m} saves no compute ({basis} vs {dense} "
                       f"dense multiply-adds per pixel; C_out={conv.out_channels}, "
                       f"C_in*k*k={k}, the basis must be well below min of the two)")
            if only_where_saves:
                log.info("%s; left dense (only_where_saves)", message)
                continue
            warn_caller(f"{message}; {leave_dense}")
        kept[name] = conv
    return kept


__all__ = ["check_max_error_use", "check_sizes_per_layer", "sized_targets"]
