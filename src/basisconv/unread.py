"""What a command line gives that its run does not read, said as a warning: a key of a
group the run leaves unused (``basis.size`` with ``selection=none``, a selection key its
policy does not read, ``logger.mode`` with ``logger=none``, a ``wandb.*`` key of a local
analysis, the selection keys the exhaustive search ignores) or a preset's choice made
otherwise under a name that does not say so. Warned, not refused: a sweep or
``reproduce.sh``'s ``OVERRIDES`` give such keys to some of their jobs on purpose. One
home for these rules beside :mod:`basisconv.cli`, which refuses what cannot run."""

from __future__ import annotations

import logging
import re
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from . import distributed
from .config import SEARCH_ONLY
from .hydra_errors import typed_overrides
from .override_checks import CONFIGS
from .resuming import in_sweep
from .selection_checks import (KEYS as SELECTION_KEYS, ORDERED_POLICIES, POLICIES,
                               SENSITIVITY_POLICIES, budget_chooses, keys_read)

log = logging.getLogger(__name__)

#: what the dense baseline (``selection=none``) does not read, and a run logging to no
#: tracker (``logger=none``): the beginning of a dotted key (or of an override)
UNREAD_BY_DENSE = r"(basis\b|selection\.layers\b)"
UNREAD_BY_NO_LOGGER = r"logger\.(?!backend\b)"
#: the one ``selection`` key the exhaustive search reads (its fast choice is ranked by it):
#: the policy (``selection=random``) and the other keys are unread there, warned of
#: (:func:`warn_unread_search_selection`) and left out of its folder's settings check
#: (:func:`basisconv.search.unread_search_selection`)
SELECTION_KEY_SEARCH_READS = "metric"
#: the ``sensitivity`` keys that say where an estimate (and a time budget's layer times) is
#: kept and found: never warned of, as they change nothing a run computes and
#: ``scripts/reproduce.sh`` gives them to every training run (its baselines' warned of
#: them, each run; found in review)
WHERE_KEPT = ("cache_dir", "restore_from")


def fit_unread(cfg: Any) -> bool:
    """Whether a run converts no trained layer, so ``basis.fit`` (how a conversion fits a
    layer) is unread: its basis layers train from scratch (no ``basis.init=convert``, no
    dense warm-up) and no sensitivity probe converts them to rank the layers."""
    return (cfg.selection.policy not in SENSITIVITY_POLICIES and cfg.basis.init == "scratch"
            and not cfg.basis.dense_warmup_epochs)


def sensitivity_unread(cfg: Any, key: str) -> str | None:
    """Why a training run of ``cfg`` does not read ``sensitivity.<key>``, or None where it
    reads it: the sensitivity policies read the whole group (their estimate) but the
    search's keys; the other ordered policies its candidate layers (``layers``), and a time
    budget ``recompute`` (its layer times: :mod:`basisconv.time_budget`); ``none``,
    ``all`` and ``list`` none of it. :data:`WHERE_KEPT` is not judged."""
    policy = cfg.selection.policy
    if key in SEARCH_ONLY:
        return "only scripts/exhaustive_search.py reads it"
    if key in WHERE_KEPT or policy in SENSITIVITY_POLICIES or (
            policy in ORDERED_POLICIES and key == "layers"):
        return None
    if (policy in ORDERED_POLICIES and key == "recompute"
            and cfg.selection.get("budget_metric") == "time" and budget_chooses(cfg.selection)):
        return None
    return (f"selection={policy} takes no sensitivity estimate (the sensitivity_budget and "
            f"sensitivity_threshold policies do)")


def warn_unread_basis_overrides(cfg: Any) -> None:
    """``selection=none`` (the default: the dense baseline) converts no layer, so ``basis.*``
    and ``selection.layers`` given to one run are unread: ``train.py basis.size=0.25``
    trains the dense model; ``selection=all`` converts every conv, so a
    ``selection.layers`` given with it is unread too (``selection=all
    selection.layers=[layer4.*]`` converts every layer, not layer 4's); and ``basis.fit``
    chooses how a conversion fits a layer, so a run that converts nothing (its basis layers
    trained from scratch, layers chosen without the sensitivity probe) leaves it unread.
    Said as a warning, not refused: a sweep such as ``-m selection=none,all,list
    basis.size=0.25 selection.layers=[...]`` gives them to its other jobs on purpose, and
    so may ``reproduce.sh``'s OVERRIDES to the baseline row."""
    policy = cfg.selection.policy
    if not HydraConfig.initialized() or not distributed.first_process() or in_sweep():
        return
    given = typed_overrides()
    warn_unread_selection_keys(cfg.selection, given)
    warn_unread_sensitivity_keys(cfg, given)  # (before the dense baseline's return)

    def unread(keys: str) -> str:
        return " ".join(o for o in given if re.match(rf"[+~]*({keys})", o))

    if policy == "none" and (keys := unread(UNREAD_BY_DENSE)):
        log.warning("selection=none (the dense baseline) converts no layer, so %s is unread "
                    "and the model stays dense; choose the layers with selection=all, list, "
                    "first_k, ... to train basis convolutions", keys)
        return
    if policy == "all" and (keys := unread(r"selection\.layers\b")):
        log.warning("selection=all converts every convolution, so %s is unread; to convert "
                    "only the layers it names, use selection=list", keys)
    if policy != "none" and fit_unread(cfg) and (keys := unread(r"basis\.fit\b")):
        log.warning("%s is unread: it chooses how a conversion fits a layer (basis.init="
                    "convert, basis.dense_warmup_epochs > 0, the sensitivity policies), and "
                    "this run trains its basis layers from scratch", keys)


def warn_unread_sensitivity_keys(cfg: Any, overrides: list[str]) -> None:
    """A ``sensitivity.<key>`` given to one training run that does not read it
    (:func:`sensitivity_unread`): ``selection=all sensitivity.finetune_epochs=3`` or
    ``experiment=basis_selected sensitivity.search_subset_size=4`` changed nothing, unsaid
    (left at stop 72)."""
    unread = {}
    for override in overrides:
        key = re.match(r"[+~]*sensitivity\.(\w+)", override)
        if key and (why := sensitivity_unread(cfg, key[1])):
            unread.setdefault(why, []).append(override)
    for why, keys in unread.items():
        log.warning("%s %s unread: %s", " ".join(keys), "is" if len(keys) == 1 else "are", why)


def unread_in_training(cfg: Any, key: str) -> str | None:
    """Why a training run of ``cfg`` does not read the dotted ``key`` (``basis`` for the
    group's choice), or None where it reads it: the rules the single-run warnings above
    and below say, for :func:`warn_keys_no_sweep_job_reads`."""
    policy = cfg.selection.policy
    if policy == "none" and re.match(UNREAD_BY_DENSE, key):
        return "selection=none converts no layer"
    if key.startswith("selection.") and key[len("selection."):] in SELECTION_KEYS and (
            key[len("selection."):] not in keys_read(cfg.selection)):
        return f"selection={policy} does not read it"
    if key == "basis.fit" and fit_unread(cfg):
        return "no layer is converted: the basis layers train from scratch"
    if key.startswith("sensitivity.") and (why := sensitivity_unread(cfg, key.split(".")[1])):
        return why
    if cfg.logger.backend == "none" and re.match(UNREAD_BY_NO_LOGGER, key):
        return "logger=none logs to no tracker"
    return None


def warn_keys_no_sweep_job_reads(jobs: list[tuple[list[str], Any]]) -> None:
    """A key swept over several values (``-m experiment=basis_all selection.count=2,3``)
    that no job of the sweep reads (:func:`unread_in_training`) is
    warned of before the first job runs: its jobs are one run trained once per value (found
    in review: silently, where one run with that key is warned of; in a sweep each job's
    own warnings are left unsaid, as a sweep gives such keys to some of its jobs on
    purpose, ``selection=none,all basis.size=0.25,0.5``). ``jobs``: each job's overrides
    and composed config. A key of one value that no job reads is said too (its one run's
    warning, which a sweep's job leaves unsaid)."""
    values: dict[str, dict[str, None]] = {}  # each key's values, in order, once
    for overrides, _ in jobs:
        for override in overrides:
            key, _, value = override.lstrip("+~").partition("=")
            values.setdefault(key, {})[value] = None
    for key, given in values.items():
        reasons = [unread_in_training(cfg, key) for _, cfg in jobs]
        if not all(reasons):
            continue
        why = "; ".join(dict.fromkeys(reasons))
        if len(given) > 1:
            log.warning("%s is swept over %s, but no job of the sweep reads it (%s): each "
                        "value trains the same run again; choose what reads it, or drop it "
                        "from the sweep", key, ",".join(given), why)
        else:  # (found in review: -m seed=0,1 basis.size=0.25 trained dense runs unsaid,
            # as each job's single-run warning is left unsaid in a sweep)
            log.warning("%s=%s is given to every job of the sweep, but no job reads it (%s); "
                        "choose what reads it, or drop it", key, next(iter(given)), why)


def warn_preset_choice_overridden(cfg: Any) -> None:
    """A group an experiment preset chooses, chosen otherwise on the command line, where the
    preset's ``name`` does not say that group's settings: ``experiment=baseline
    selection=all`` converted every conv under the name ``<model>-baseline`` (its folder,
    wandb group and table row), unsaid (found in review). Said as a warning, unless a
    ``name=`` of the run's own is given; ``experiment=basis_selected selection=random`` is
    that preset's design (its name holds the option chosen, ``${choice:selection,...}``).
    ``experiment=basis_all basis=warmup`` is warned of: the name holds ``${basis.size}``,
    which both options leave alone."""
    if not HydraConfig.initialized() or not distributed.first_process() or in_sweep():
        return
    preset = HydraConfig.get().runtime.choices.get("experiment")
    given = typed_overrides()
    if preset is None or any(re.match(r"[+~]*name=", o) for o in given):
        return
    path = CONFIGS / "experiment" / f"{preset}.yaml"
    if not path.is_file():  # (a preset of a config path of the user's own)
        return
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    name = str(config.get("name", ""))  # (as written: ${model.name}-baseline)
    chosen = {key.removeprefix("override /"): str(option)
              for entry in config.get("defaults", []) if isinstance(entry, dict)
              for key, option in entry.items() if key.startswith("override /")}
    for override in given:
        group, _, option = override.partition("=")
        if (group in chosen and option and option != chosen[group]
                and not _name_tells_apart(name, group, chosen[group], option)):
            log.warning("experiment=%s chooses %s=%s; %s given with it runs under the preset's "
                        "name %s, which does not say so: give the run a name of its own "
                        "(name=...), or choose the preset that runs it", preset, group,
                        chosen[group], override, cfg.name)


def warn_preset_not_taken(cfg: Any) -> None:
    """``scripts/sensitivity.py`` and ``exhaustive_search.py`` compose ``sensitivity.yaml``
    (the search through ``search.yaml``), whose own choices come after a preset's:
    ``experiment=basis_all`` there kept the ``sensitivity_budget`` layers and the script's
    own name (``<model>-sensitivity``, ``<model>-search``), unsaid (left at stop 70). A
    preset chooses a training row; here it is warned of, naming the key that chooses the
    layers the estimate marks."""
    if not HydraConfig.initialized() or not distributed.first_process() or in_sweep():
        return
    preset = HydraConfig.get().runtime.choices.get("experiment")
    if preset:
        log.warning("experiment=%s is a training run's preset: here its layer choice and "
                    "name are not taken (this marks selection=%s's layers, under %s); "
                    "choose the layers with selection=... and train them with "
                    "scripts/train.py experiment=%s", preset, cfg.selection.policy, cfg.name,
                    preset)


def _name_tells_apart(name: str, group: str, option: str, other: str) -> bool:
    """Whether a preset's ``name`` (as written) interpolates a key of ``group`` that its two
    options set differently, or the option itself (``${choice:group,...}``): then the two
    runs' names differ."""
    if f"${{choice:{group}," in name:
        return option != other
    keys = re.findall(rf"\$\{{{group}\.(\w+)\}}", name)
    settings = [_group_option(group, o) for o in (option, other)]
    return any(settings[0].get(key, option) != settings[1].get(key, other) for key in keys)


def _group_option(group: str, option: str) -> dict:
    """A config group option's own settings, with the same group's options its defaults
    list names (``basis/warmup.yaml`` builds on ``scratch``); empty if not ours."""
    path = CONFIGS / group / f"{option}.yaml"
    if not path.is_file():
        return {}
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    settings: dict = {}
    for entry in config.pop("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            settings.update(_group_option(group, entry))
    return {**settings, **config}


def warn_unread_logger_overrides(cfg: Any) -> None:
    """``logger=none`` logs to no tracker, so ``logger.mode``, ``logger.project`` and the
    like given with it are unread: ``logger=none logger.mode=online`` logged nothing,
    without a word (found in review). Said as a warning, as the basis keys are."""
    if (cfg.logger.backend != "none" or not HydraConfig.initialized()
            or not distributed.first_process() or in_sweep()):
        return
    keys = [o for o in typed_overrides() if re.match(rf"[+~]*{UNREAD_BY_NO_LOGGER}", o)]
    if keys:
        log.warning("logger=none logs to no tracker, so %s %s unread; use logger=wandb to "
                    "log the run there", " ".join(keys), "is" if len(keys) == 1 else "are")


def warn_unread_search_selection(cfg: Any) -> None:
    """The exhaustive search scores the fast method's choice, the ``sensitivity.
    search_subset_size`` least sensitive layers by ``selection.metric``: the selection's
    other keys and its policy (``selection=random``) are unread there (they were, unsaid;
    found in review)."""
    if not HydraConfig.initialized() or in_sweep():
        return
    keys = [o for o in typed_overrides()
            if re.match(rf"[+~]*selection(=|\.(?!{SELECTION_KEY_SEARCH_READS}\b))", o)]
    if keys:
        log.warning("the exhaustive search scores the %d layers least sensitive by "
                    "selection.metric=%s (sensitivity.search_subset_size), so %s %s unread",
                    cfg.sensitivity.search_subset_size, cfg.selection.metric, " ".join(keys),
                    "is" if len(keys) == 1 else "are")


def warn_unread_source_overrides(cfg: Any) -> None:
    """The analysis reads one source: ``source=local`` the records under ``runs_dir``,
    ``source=wandb`` a wandb project. A key of the other one given on the command line is
    unread (``wandb.project=x`` without ``source=wandb`` analysed the local records,
    unsaid; found in review)."""
    if not HydraConfig.initialized():
        return
    other = r"wandb\." if cfg.source == "local" else r"runs_dir="
    keys = [o for o in typed_overrides() if re.match(rf"[+~]*{other}", o)]
    if keys:
        reads = "source=wandb" if cfg.source == "local" else "source=local"
        log.warning("source=%s does not read %s; %s reads %s", cfg.source, " ".join(keys),
                    reads, "it" if len(keys) == 1 else "them")


def warn_unread_selection_keys(selection: Any, overrides: list[str]) -> None:
    """A ``selection.<key>`` given to one run that its policy does not read
    (:func:`~basisconv.selection_checks.keys_read`) is ignored: ``experiment=basis_selected
    selection.threshold=0.01`` converted the budget policy's layers and ``selection=all
    selection.count=3`` every conv, neither saying so. Said for each key with the policies
    that read it; ``selection.layers`` is said above (``none``, ``all``) or refused (the
    ordered policies), as is a count with the threshold policy."""
    policy, read = selection.policy, keys_read(selection)
    said = {"layers"} | ({"count"} if policy == "sensitivity_threshold" else set())
    unread = []
    for override in overrides:
        key = re.match(r"[+~]*selection\.(\w+)", override)
        if key and key[1] in SELECTION_KEYS and key[1] not in read | said:
            readers = [p for p in POLICIES if key[1] in keys_read({"policy": p, "count": None})]
            unless = " without selection.count" if policy in readers else ""
            unread.append(f"{override} (read by {', '.join(readers)}{unless})")
    if unread:
        log.warning("selection=%s does not read %s: the run ignores %s; choose a policy that "
                    "reads it, or drop the override", policy, ", ".join(unread),
                    "it" if len(unread) == 1 else "them")
