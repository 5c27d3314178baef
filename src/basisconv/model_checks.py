"""What only the model can tell about a run's config, judged on it shaped on the meta
device (nothing is allocated): the width this machine can build it at, the layer names and
patterns a policy reads, the basis size its layers take, the selection's count against the
candidates, and the exhaustive search's subset count. Apart from the range checks of
:mod:`basisconv.range_checks` and :mod:`basisconv.config_checks` (whose
:func:`~basisconv.config_checks.validate` calls :func:`check_model_size` and
:func:`check_against_the_model`), as this is where a config meets the model code (network,
candidate table, surgery); the sensitivity estimate and the search call these checks
again, on their own.
"""

from __future__ import annotations

import math
import os

import torch
from omegaconf import DictConfig

from .candidates import check_some_candidate, convert_candidates
from .errors import ConfigError
from .layer_names import select_layers
from .layers import basis_layers
from .models import parameter_count
from .network import build_dense, check_conversion, held_back
from .range_checks import check
from .selection import check_count_fits, fixed_layers
from .selection_checks import ORDERED_POLICIES, SENSITIVITY_POLICIES


def machine_memory() -> int | None:
    """This machine's physical memory in bytes; None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # (no sysconf on Windows)
        return None


def check_model_size(cfg: DictConfig) -> None:
    """A ``model.width`` this machine can build the model at. The model is built in CPU
    memory first, so float32 weights (4 bytes a parameter) beyond the machine's memory
    were torch's "can't allocate memory" trace (1e6), and channel counts beyond torch's
    64-bit sizes an overflow trace (1e18, 1e30), where the run built it. Counted on the
    meta device (:func:`~basisconv.models.parameter_count`) for widths above 1 only: at
    most 1, no layer is wider than the published model's."""
    name, width = cfg.model.name, cfg.model.width
    if width <= 1:
        return
    try:
        count = parameter_count(name, cfg.data.num_classes, width)
    except Exception:  # noqa: BLE001 - a model that cannot be shaped on the meta device
        return  # at all (one that reads files as it is built) is not judged here
    check(count is not None, f"model.width={width} gives {name} channel counts beyond "
                             f"torch's 64-bit tensor sizes; use a smaller width (1.0 is "
                             f"the published model)")
    memory = machine_memory()
    if memory is not None and 4 * count > memory:
        raise ConfigError(f"model.width={width} gives {name} {count:,} parameters, whose "
                          f"float32 weights alone take {4 * count / 2**30:,.2f} GiB, more than "
                          f"this machine's {memory / 2**30:,.2f} GiB of memory; use a smaller "
                          f"width (1.0 is the published model)")


def check_against_the_model(cfg: DictConfig, estimate: bool = False, *,
                            reads_selection: bool = True) -> int | None:
    """What only the model can tell, checked on it shaped on the meta device (nothing is
    allocated): the layer names and patterns a run's policy reads (``selection.layers`` of
    ``list``, the candidates ``sensitivity.layers`` of an ordered policy, or of every policy
    in an ``estimate``), and the basis its layers take (a ``basis.size`` above a layer's
    ``out_channels``: above every candidate's, or any of the layers ``all`` or ``list``
    converts where ``basis.only_where_saves=false``; a size at which no candidate saves
    compute), and a ``selection.count`` above the number of candidates. Checked only as
    the run built its model (or made its candidate table), a misspelt name or a size too
    large for one model in a sweep's last job failed after the jobs before it had trained.
    ``reads_selection=False``: a run that reads no ``selection`` key but its metric (the
    exhaustive search, and the estimate itself), whose policy's layers and count the model
    does not judge; a count that fits the training runs' model (``OVERRIDES=
    selection.count=10`` for ``scripts/reproduce.sh``) was refused by the search on
    ResNet-8, which warns that it does not read it. One rule for every run: a selection
    value is checked on its own always (:func:`~basisconv.selection_checks.check_selection`),
    against the model only where the run reads it. Returns the number of candidates it
    counted (None where it counted none: the run counts them as it starts)."""
    policy = cfg.selection.policy if reads_selection else "none"
    lists = [(list(cfg.selection.layers), "selection.layers")] if policy == "list" else []
    candidates = policy in ORDERED_POLICIES or estimate
    if candidates:
        lists.append((list(cfg.sensitivity.layers), "sensitivity.layers"))
    if not candidates and policy not in ("all", "list"):
        return None
    try:
        with torch.device("meta"):
            model = build_dense(cfg)
    except Exception:  # noqa: BLE001 - a model that cannot be shaped on the meta device
        return None  # (one that reads files as it is built) is checked as the run builds it
    found = None
    with held_back():  # (what a pattern skips or a basis leaves dense the run says itself)
        for layers, key in lists:
            select_layers(model, layers, key=key)
        if candidates:  # (the candidate table converts them as the estimate's first step;
            # in place: the model is read no more, as a policy with candidates converts no
            # fixed layers below)
            found = len(basis_layers(convert_candidates(model, cfg.basis, lists[-1][0],
                                                        inplace=True)))
            check_some_candidate(found, cfg.basis.size)  # (else refused by the table)
            if policy in ORDERED_POLICIES:  # a count above the candidates was refused only
                # as the layers were chosen: after the whole sensitivity estimate, or the
                # sweep's jobs before it
                check_count_fits(cfg.selection, found)
            if estimate or policy in SENSITIVITY_POLICIES:  # (the runs that read an estimate)
                check_drop_noise_fits(cfg.sensitivity.drop_noise_layers, found)
    if not estimate and policy in ("all", "list"):  # (the estimate converts no more)
        check_conversion(cfg, fixed_layers(cfg.selection), model)
    return found


def check_drop_noise_fits(drop_noise_layers: int, candidates: int) -> None:
    """``sensitivity.drop_noise_layers`` at most the number of ``candidates``: one
    :class:`ConfigError` naming the range. A larger number was capped to the candidates
    (:func:`~basisconv.noise.spread_layers`) while the cache key kept the number given, so
    one table was estimated again under a key of its own for each number above."""
    if drop_noise_layers > candidates:
        raise ConfigError(f"sensitivity.drop_noise_layers={drop_noise_layers}; there are "
                          f"{candidates} candidate layers, so choose 0..{candidates} (0: the "
                          f"drops' own noise not measured)")


def check_search_size(cfg: DictConfig, candidates: int) -> int:
    """The number of subsets of ``sensitivity.search_subset_size`` among ``candidates``
    layers; :class:`ConfigError` when the size is out of range or there are more subsets
    than ``sensitivity.search_max_subsets``."""
    k = cfg.sensitivity.search_subset_size
    if not 1 <= k <= candidates:
        raise ConfigError(f"sensitivity.search_subset_size={k}; there are {candidates} "
                          f"candidate layers, so choose 1..{candidates}")
    total = math.comb(candidates, k)
    if total > cfg.sensitivity.search_max_subsets:
        raise ConfigError(f"{total} subsets of {k} among {candidates} candidate layers is more "
                          f"than sensitivity.search_max_subsets={cfg.sensitivity.search_max_subsets}; "
                          f"restrict sensitivity.layers, use a smaller model (model=resnet8) or "
                          f"raise the limit")
    return total
