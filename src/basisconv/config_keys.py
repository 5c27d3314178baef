"""The keys a run's config holds, checked before any of its values: keys its schema lacks
(added with ``+``, each with the closest spelling), values left ``???`` (a group removed
with ``~``), and every ``${...}`` resolved. Apart from the value checks of
:mod:`basisconv.config_checks` (which runs these first), as these read the config's shape
only, through OmegaConf; :mod:`basisconv.hydra_errors` reads :data:`OTHER_NAMES` too.
"""

from __future__ import annotations

import difflib
import functools

from omegaconf import DictConfig, ListConfig, OmegaConf

from .config import TrainConfig


#: Keys by the names the package's own API and logs give them (``BasisConv2d(num_basis=)``,
#: "num_basis=16 saves no compute"), which a closest spelling missed (basis.num_basis was
#: "did you mean basis.combine?"), and the k of the ``first_k``/``last_k`` policies' names
#: (selection.k was "did you mean selection.seed?").
OTHER_NAMES = {"basis.num_basis": "basis.size", "selection.k": "selection.count"}


@functools.cache
def schema_keys(schema_class: type) -> dict:
    """The nested keys (and defaults) of ``schema_class``, a structured config's dataclass,
    as a plain dict; read, never changed. Made once per class: the same every time, and
    making them (OmegaConf.structured) was a fifth of a config check."""
    return OmegaConf.to_container(OmegaConf.structured(schema_class), resolve=False)


def unknown_keys(cfg: DictConfig, schema_class: type = TrainConfig) -> list[str]:
    """The keys of ``cfg`` that its schema (``schema_class``) does not have (added with
    ``+key=value``, so nothing reads them), dotted, each with `` (did you mean <the closest
    key beside it>?)`` when one is close; Hydra's own ``hydra`` node is not the schema's."""
    schema = schema_keys(schema_class)
    given = OmegaConf.to_container(cfg, resolve=False)
    unknown: list[str] = []

    def walk(node: dict, expected: dict, prefix: str) -> None:
        for key, value in node.items():
            if prefix == "" and key == "hydra":
                continue
            if key not in expected:
                close = difflib.get_close_matches(str(key), list(expected), n=1)
                hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
                if f"{prefix}{key}" in OTHER_NAMES:
                    hint = f" (did you mean {OTHER_NAMES[f'{prefix}{key}']}?)"
                unknown.append(f"{prefix}{key}{hint}")
            elif isinstance(expected[key], dict) and isinstance(value, dict):
                walk(value, expected[key], f"{prefix}{key}.")

    walk(given, schema, "")
    return unknown


def missing_values(cfg: DictConfig, prefix: str = "") -> list[str]:
    """The keys whose value is ``???`` (a group removed with ``~``, or given so), Hydra's
    own aside; found without resolving anything (``OmegaConf.missing_keys``
    resolves, and an interpolation to a missing value fails there as everywhere else)."""
    found = []
    for key in cfg:
        if not prefix and key == "hydra":
            continue
        node = cfg._get_node(key)
        if OmegaConf.is_missing(cfg, key):
            found.append(f"{prefix}{key}")
        elif isinstance(node, DictConfig):
            found += missing_values(node, f"{prefix}{key}.")
    return found


def resolve_all(cfg: DictConfig) -> None:
    """Resolve every ``${...}`` of ``cfg`` (Hydra's own node aside), raising
    :class:`~omegaconf.errors.InterpolationResolutionError` (the entry points say it in
    one line) for a broken one: the checks after it (``validate``) read only the keys they
    check, and the sensitivity estimate and the exhaustive search resolve the rest only for
    their record, so a typo in ``logger.project`` was their error after all their training."""
    for key in cfg:
        if key != "hydra":
            node = cfg._get_node(key)
            if isinstance(node, (DictConfig, ListConfig)):  # (a group, or a list of values)
                OmegaConf.to_container(node, resolve=True)
            else:
                cfg[key]  # (a value read resolves its ${...})
