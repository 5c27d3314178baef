"""A model's convolutions by module name: :func:`conv_layers` lists them, and
:func:`select_layers` reads a layer list (``"all"``, names, fnmatch patterns) as the dense
convs it names, with the errors and warnings a wrong or unconvertible name gets
(:func:`select_sized_layers` a name -> size mapping, with each layer's size).

Apart from :mod:`basisconv.surgery`, which replaces the layers found here, because finding
them is needed without replacing anything: the selection policies and the model checks
resolve a config's layer list on a model (on the meta device) before any conversion.
``basisconv.surgery`` still exports :func:`conv_layers`, the name the README imports.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Iterable, Mapping

import torch.nn as nn

from .counts import is_int
from .errors import ConfigError, warn_caller
from .layer_options import size_entry
from .layers import BasisConv2d, basis_layers
from .source_conv import check_convertible

_GLOB_CHARS = set("*?[")


def conv_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``nn.Conv2d`` and :class:`BasisConv2d` layers by module name, in module order."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, BasisConv2d)) and name}


def conv_names(model: nn.Module) -> dict[str, str]:
    """Every name a conv is registered under, mapped to the one :func:`conv_layers` gives it
    (its first). A conv registered twice (weight tying by assignment, ``self.b = self.a``)
    is one layer: either name selects it, and it is replaced under both."""
    first: dict[int, str] = {}
    names = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if name and isinstance(m, (nn.Conv2d, BasisConv2d)):
            names[name] = first.setdefault(id(m), name)
    return names


def select_layers(model: nn.Module, layers: str | Iterable[str] = "all",
                  key: str | None = None) -> dict[str, nn.Conv2d]:
    """The dense convs that ``layers`` names: ``"all"``, or names and fnmatch patterns
    (``"layer*.conv*"``). Named layers that cannot be converted are an error; layers a
    pattern or ``"all"`` picks up that cannot be converted (grouped, non-zero padding, a
    subclass with its own forward, an unmade lazy conv) are skipped with a warning, and
    layers already in basis form are left alone (a warning for each entry that they are
    all it matched: :func:`_warn_of_unapplied`). ``key`` names where ``layers`` came from
    in errors about them (``selection.layers`` for a config's list)."""
    layers = _layer_list(layers)
    chosen, unapplied = _chosen_and_kept(model, layers, key)
    _warn_of_unapplied(model, layers, unapplied, bool(chosen), key)
    return chosen


def _layer_list(layers) -> list:
    """``layers`` as a list of its entries (a name alone is a list of one), or one clear
    error for what is no layer list."""
    if isinstance(layers, str):
        return [layers]
    if isinstance(layers, Mapping):  # (iterated, it gives its names: the sizes were dropped;
        # apply_basis reads a mapping itself, select_sized_layers)
        raise ConfigError(f"layers={dict(layers)!r} gives a size per layer, which apply_basis "
                          f"takes; here layers takes names only, all of one size")
    if not isinstance(layers, Iterable):
        raise ConfigError(f"apply_basis: layers={layers!r}; give 'all', a name, or a list of "
                          f"names and patterns like 'layer*.conv*' (to convert none, do not "
                          f"call it)")
    layers = list(layers)
    if not layers:
        raise ConfigError("apply_basis: the layer list is empty; give 'all', names or patterns "
                          "like 'layer*.conv*' (if pick_layers chose none, keep the dense model)")
    return layers


def _chosen_and_kept(model: nn.Module, layers: list, key: str | None
                     ) -> tuple[dict[str, nn.Conv2d], dict[str, list[str]]]:
    """:func:`select_layers`' dense convs, in module order, and the entries (patterns) that
    chose none of them while matching layers already in basis form, each with those
    layers, left as they are (whose warning the caller words: :func:`_warn_of_unapplied`)."""
    convs = conv_layers(model)
    names = conv_names(model)
    chosen: dict[str, nn.Conv2d] = {}
    unapplied: dict[str, list[str]] = {}  # entry -> the basis layers, all it matched
    valid = ", ".join(convs) or "(none: the model has no Conv2d layers)"
    given = _given(key)
    for entry in layers:
        if not isinstance(entry, str):
            raise ConfigError(f"apply_basis: layer names must be strings, got {entry!r}")
        # a name is taken literally before as a pattern (a ModuleDict key may hold brackets:
        # as a pattern, "conv[12]" would convert conv1 and conv2)
        if entry == "all" or (_GLOB_CHARS & set(entry) and entry not in names):
            matched = list(dict.fromkeys(first for n, first in names.items()
                                         if entry == "all" or fnmatch.fnmatchcase(n, entry)))
            if not matched:
                raise ConfigError(f"{given}layer pattern {entry!r} matches no convolution; "
                                  f"valid names: {valid}")
            already = [name for name in matched if isinstance(convs[name], BasisConv2d)]
            found = _convertible(convs, [name for name in matched if name not in already])
            if already and not found:
                unapplied[entry] = already
            chosen.update(found)
            continue
        entry = names.get(entry, entry)
        if entry not in convs:
            raise _not_a_conv_layer(model, entry, convs, given, valid)
        if isinstance(convs[entry], BasisConv2d):
            raise ConfigError(f"{given}layer {entry!r} is already a BasisConv2d; to change its "
                              f"basis size, {_resize_advice(model, [entry])}")
        try:
            check_convertible(convs[entry], entry)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{given}{err}") from None
        chosen[entry] = convs[entry]
    # keep module order whatever the order of the list
    return {n: chosen[n] for n in convs if n in chosen}, unapplied


def _convertible(convs: dict[str, nn.Module], matched: list[str]) -> dict[str, nn.Conv2d]:
    """The convs of ``matched`` (dense layers a pattern matched) that can be converted; each
    other one skipped with a warning saying why."""
    found = {}
    for name in matched:
        try:
            check_convertible(convs[name], name, skipping=True)
        except (TypeError, ValueError) as err:
            warn_caller(_skip_line(name, err))
            continue
        found[name] = convs[name]
    return found


def select_sized_layers(model: nn.Module, layers: Mapping[str, int | float],
                        key: str | None = None
                        ) -> tuple[dict[str, nn.Conv2d], dict[str, tuple[str, int | float]]]:
    """The dense convs that a name -> size mapping names (each key read by
    :func:`select_layers`: a name or a pattern) and, for each, the entry that names it and
    the size it gives (so that an error about the size names the key to fix), both in
    module order. A conv that two entries give different sizes (overlapping patterns, or
    the two names of a tied conv) is an error: which one holds is not said; a count and a
    fraction are two sizes even where Python calls them equal (1 and 1.0). An entry that
    matches only layers already in basis form is warned of (:func:`_warn_of_unapplied`)."""
    if not layers:  # (select_layers' error for an empty layer list)
        select_layers(model, [], key)
    chosen: dict[str, nn.Conv2d] = {}
    given: dict[str, tuple[str, int | float]] = {}  # layer -> (its entry, its size)
    unapplied: dict[str, list[str]] = {}  # entry -> the basis layers, all it matched
    for entry, size in layers.items():
        found, kept = _chosen_and_kept(model, [entry], key)
        unapplied.update(kept)
        for name, conv in found.items():
            earlier, first = given.setdefault(name, (entry, size))
            if (is_int(first), first) != (is_int(size), size):  # (1 == 1.0: a count, all)
                raise ConfigError(f"apply_basis: layer {name!r} is given two sizes, {first!r} "
                                  f"by {earlier!r} and {size!r} by {entry!r}; give it one")
            chosen[name] = conv
    _warn_of_unapplied(model, layers, unapplied, bool(chosen), key)
    order = [name for name in conv_layers(model) if name in chosen]
    return {name: chosen[name] for name in order}, {name: given[name] for name in order}


def _warn_of_unapplied(model: nn.Module, layers: list[str] | Mapping[str, int | float],
                       unapplied: dict[str, list[str]], converts: bool, key: str | None
                       ) -> None:
    """Warn of the entries of a layer list or a name -> size mapping that match only layers
    already in basis form: where the others convert layers, each such entry (a mapping's
    size is not applied, a list's entry converts nothing); where nothing converts, one line
    for all. (Found in review: each entry of a mapping said "nothing is converted" while
    the others converted layers; a list's such entry said nothing, as an entry matching no
    layer at all is an error.) Silent for a second ``apply_basis(model, "all", 0.25)``
    after converting some layers: "all" converts the others."""
    if not converts:
        if unapplied:
            already = list(dict.fromkeys(n for names in unapplied.values() for n in names))
            warn_caller(_basis_only_line(model, _given(key) + ", ".join(map(repr, layers)),
                                         already, "nothing is converted"))
        return
    for entry, already in unapplied.items():
        if isinstance(layers, Mapping):
            named, outcome = size_entry(entry, key), f"its size {layers[entry]!r} is not applied"
        else:
            named, outcome = _given(key) + repr(entry), "it converts nothing"
        warn_caller(_basis_only_line(model, named, already,
                                     f"{outcome} (the other entries' layers are converted)"))


def _given(key: str | None) -> str:
    """What opens an error or warning about ``layers`` when it came from elsewhere (a
    config's ``selection.layers: ``), else nothing."""
    return f"{key}: " if key else ""


def _basis_only_line(model: nn.Module, named: str, already: list[str], outcome: str) -> str:
    """The warning for layers ``named`` (entries of a layer list or mapping) that match only
    the basis layers ``already``, left as they are: the ``outcome``, and how to resize
    them."""
    return (f"{named} matches only layers already in basis form ({', '.join(already)}), "
            f"left as they are: {outcome}; to change their basis size, "
            f"{_resize_advice(model, already)}")


def _resize_advice(model: nn.Module, names: Iterable[str]) -> str:
    """How to change the basis size of the basis layers ``names``: convert a dense copy of
    the model. :func:`~basisconv.dense_form.to_dense` makes every basis layer dense, so the
    model's others are named, to convert again (found in review: the advice, followed for
    one layer, left the rest dense without a word); converted at its size, each is fitted
    back to its weights."""
    named = set(names)
    others = [name for name in basis_layers(model) if name not in named]
    advice = "convert a dense copy of the model instead: apply_basis(to_dense(model), ...)"
    if others:
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        advice += (f", which makes its other basis layers dense too ({', '.join(others[:3])}"
                   f"{more}): convert them again in it, at their sizes")
    return advice


def _skip_line(name: str, err: Exception) -> str:
    """The warning for a layer a pattern or ``"all"`` matched that cannot be converted:
    :func:`~basisconv.source_conv.check_convertible`'s reason, which opens with the layer
    (``layer 'x' is a grouped conv``), as a sentence after the skip (``skipping layer 'x':
    it is a grouped conv``)."""
    at, said = f"layer {name!r}", str(err)
    reason = f"it{said[len(at):]}" if said.startswith(at + " ") else said
    return f"skipping {at}: {reason}"


def _not_a_conv_layer(model: nn.Module, name: str, convs: dict[str, nn.Module], given: str,
                      valid: str) -> ConfigError:
    """The error for a layer name that is no conv of the model: what the module of that
    name is instead (for a container, the pattern of the convs inside it), or the names
    closest to it; ``given`` prefixes it (where the name came from)."""
    module = dict(model.named_modules()).get(name)
    if module is not None and name:
        conv_kind = isinstance(module, nn.modules.conv._ConvNd)
        what = "only nn.Conv2d layers convert" if conv_kind else "not a convolution"
        at = f"{given}layer {name!r} is a {type(module).__name__}, {what}"
        if any(n.startswith(name + ".") for n in convs):  # a container of convs
            return ConfigError(f"{at}; for the convolutions inside it give the pattern "
                               f"'{name}.*'")
        return ConfigError(f"{at}; valid names: {valid}")
    # a wrapper (torch.compile's _orig_mod, DataParallel's module) prefixes the names
    close = ([n for n in convs if n.endswith("." + name)]
             or difflib.get_close_matches(name, list(convs), n=3))
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"{given}unknown layer {name!r}{hint}; valid names: {valid}")


__all__ = ["conv_layers", "conv_names", "select_layers", "select_sized_layers"]
