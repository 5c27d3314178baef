"""What a basis layer's arguments may be, checked before any layer is built: the basis
size (a count or a fraction of ``out_channels``, the count a fraction gives, and how an
entry of a name -> size mapping is named), the conv's geometry, a yes/no option, and the
coefficient rank.

Kept apart from :mod:`basisconv.layers` (whose :class:`~basisconv.layers.BasisConv2d`
runs them when it is made, and where they were defined first) because they are asked
apart from any layer: a config's ``basis.size`` (:mod:`basisconv.range_checks`), each
selected layer's size (:mod:`basisconv.basis_sizes`), the cost model's and the
benchmarks' sizes by fraction, and :func:`~basisconv.surgery.apply_basis`'s options.
Rules about values: nothing here reads a module or a tensor.
"""

from __future__ import annotations

from torch.nn.modules.utils import _pair

from .counts import count_or_fraction_problem, is_int, is_number, share_of
from .errors import ConfigError


def check_basis_size(value, key: str = "num_basis") -> None:
    """The basis-size rule before it meets a layer (``key`` names the value in errors):
    an int is a count (at least 1), a float a fraction of ``out_channels`` in ``(0, 1]``."""
    if not is_number(value):  # a TypeError, as the layer's API promises for a wrong type
        raise TypeError(f"{key}={value!r} must be an int (a count >= 1) or a float in (0, 1] "
                        f"(a fraction of out_channels)")
    problem = count_or_fraction_problem(value)
    if problem:
        raise ConfigError(f"{key}={value} {problem}; a layer takes 1..its out_channels as a "
                          f"count, or a fraction in (0, 1] of them")


def size_entry(entry: str, key: str | None = None) -> str:
    """How errors and warnings name one entry of :func:`~basisconv.surgery.apply_basis`'s
    name -> size mapping: ``layers['layer2.*']``, its key as the user wrote it, so that a
    size out of range for a layer it matched names the entry to fix; under ``key``, the
    name the caller gives the mapping (``apply_basis``'s ``keys["layers"]``:
    ``selection.layers['layer2.*']``), ``layers`` where it gives none."""
    return f"{key or 'layers'}[{entry!r}]"


def resolve_num_basis(num_basis: int | float, out_channels: int, where: str = "",
                      key: str = "num_basis") -> int:
    """The basis size as an int in ``[1, out_channels]``.

    An int is a count; a float in ``(0, 1]`` a fraction of ``out_channels``, rounded half
    up and at least 1 (``0.25`` of 64 channels is 16). ``where`` names the layer in errors,
    ``key`` the value the user set (``basis.size`` when it comes from a config).
    """
    at = f"layer {where!r}: " if where else ""
    if is_int(num_basis):
        count = int(num_basis)
    else:
        try:
            check_basis_size(num_basis, key)
        except (TypeError, ConfigError) as err:
            raise type(err)(f"{at}{err}") from None
        count = max(1, share_of(out_channels, num_basis))
    if not 1 <= count <= out_channels:
        raise ConfigError(f"{at}{key} = {count} is out of range: valid is 1..{out_channels} "
                          f"(its out_channels); set {key} to a count in that range, or to a "
                          f"fraction in (0, 1] of each layer's out_channels")
    return count


def check_geometry(kernel_size, stride, padding, dilation) -> tuple:
    """The conv's kernel size, stride, padding and dilation as ``nn.Conv2d`` keeps them,
    checked when the layer is made (a bad value would otherwise surface at the first
    forward, deep inside ``F.conv2d`` or the fused kernel)."""
    pairs = {}
    for name, value, least in (("kernel_size", kernel_size, 1), ("stride", stride, 1),
                               ("dilation", dilation, 1), ("padding", padding, 0)):
        if name == "padding" and isinstance(value, str):
            if value not in ("same", "valid"):
                raise ConfigError(f"padding={value!r}: use 'same', 'valid' or ints >= 0, as "
                                  f"for nn.Conv2d")
            pairs[name] = value
            continue
        pair = _pair(value)
        if len(pair) != 2 or not all(is_int(v) and v >= least for v in pair):
            raise ConfigError(f"{name}={value!r}: use an int >= {least} or two of them")
        pairs[name] = tuple(int(v) for v in pair)
    if pairs["padding"] == "same" and pairs["stride"] != (1, 1):
        raise ConfigError(f"padding='same' needs stride 1 (got stride={stride!r}), as for "
                          f"nn.Conv2d; give the padding as ints for a strided layer")
    return pairs["kernel_size"], pairs["stride"], pairs["padding"], pairs["dilation"]


def check_flag(name: str, value) -> bool:
    """A yes/no option as a bool: ``bias="false"`` or ``fuse_norm="no"`` would otherwise be
    taken as true (a non-empty string), silently."""
    if value not in (True, False):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_coefficient_rank(rank, out_channels: int, num_basis: int, where: str = "",
                           key: str = "coefficient_rank") -> int | None:
    """``None`` (a full coefficient matrix), or a rank in ``1..min(C_out - m, m)`` (at
    least 1), returned as an int; ``where`` names the layer in errors, ``key`` the value the
    user set (``basis.coefficient_rank`` when it comes from a config)."""
    if rank is None:
        return None
    top = max(1, min(out_channels - num_basis, num_basis))
    if not is_int(rank) or not 1 <= rank <= top:
        at = f" for layer {where!r}" if where else ""
        raise ConfigError(f"{key} must be an int in 1..{top}{at} (min of out_channels - "
                          f"num_basis = {out_channels - num_basis} and num_basis = {num_basis}), "
                          f"got {rank!r}")
    return int(rank)
