"""Which layers get basis convolutions: the ``selection/`` config group.

Policies: ``none`` (the dense baseline), ``all`` (every convolution where a basis can
save compute; see ``basis.only_where_saves``), ``list`` (explicit module names or fnmatch
patterns such as ``layer*.*.conv*``).
"""

from __future__ import annotations

import torch.nn as nn
from omegaconf import DictConfig

from .errors import ConfigError

POLICIES = ("none", "all", "list")


def choose_layers(selection: DictConfig, model: nn.Module) -> list[str] | str | None:
    """The ``layers`` argument for :func:`basisconv.surgery.apply_basis`: ``None`` for no
    basis layers, ``"all"``, or names/patterns (checked against the model by
    ``apply_basis``, which names the valid layers when one does not exist)."""
    if selection.policy == "none":
        return None
    if selection.policy == "all":
        return "all"
    if selection.policy == "list":
        if not selection.layers:
            raise ConfigError("selection.policy=list needs selection.layers, e.g. "
                              "selection.layers=[layer1.0.conv1,'layer4.*']")
        return list(selection.layers)
    raise ConfigError(f"selection.policy={selection.policy!r}; choose one of {', '.join(POLICIES)}")
