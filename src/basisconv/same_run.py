"""Whether two configs are the same run: the keys that may change between an interrupted
run and its resumption (they change how it runs, not what it computes), the keys newer
versions added (a config without one ran as its old value), and the check that refuses
to resume, or to write over, a run of other settings.

Apart from :mod:`basisconv.checkpoint` (the files): the rule is a config's, not a
file's. A resume asks it of a checkpoint's config (:mod:`basisconv.resume_point`), the
sensitivity estimate and the search of their folder's record, and the analysis, which
reads no checkpoint, of records (runs that differ only in these keys are repeats).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .cifar10_location import absolute_root
from .errors import ConfigError
from .records import RECORD, read_record

log = logging.getLogger(__name__)

#: Keys that may differ between an interrupted run and its resumption: they change how a
#: run executes or where it keeps things, not what it computes (to rounding), so
#: ``scripts/reproduce.sh`` lets them change between invocations and the analysis takes
#: runs that differ only in them as repeats. Every ``logger.*`` key is one of them too
#: (:func:`changes_only_execution`).
RESUMABLE_CHANGES = {"trainer.resume", "trainer.progress", "trainer.threads", "trainer.device",
                     "trainer.compile", "trainer.compile_mode", "trainer.cuda_graphs",
                     "trainer.checkpoint", "trainer.checkpoint_every_s",
                     "trainer.collective_timeout_s", "publish",
                     "data.download", "data.verify_md5",
                     "sensitivity.restore_from", "sensitivity.workers",
                     "sensitivity.cache_dir", "sensitivity.recompute"}


#: Keys added after run records were first published (``70ccc68``), with the value a run
#: written without them ran as (what the code did before the key existed). A record or
#: checkpoint that lacks one is read as having this value (:func:`flat_config`), so that a
#: newer run that sets another value is a different configuration, not a repeat of the old
#: one; ``tests/test_configs.py`` keeps this list whole (values of the defaults' types: 0
#: and 0.0 are two values to a resume and the analysis). Add every new key here.
ADDED_KEYS = {"basis.fuse_norm": False, "basis.fit": "pivots", "trainer.cuda_graphs": False,
              "trainer.checkpoint_every_s": 0.0, "sensitivity.workers": 1,
              "sensitivity.drop_noise_layers": 0, "basis.frobenius_decay": False,
              "logger.init_timeout_s": 90.0, "logger.finish_timeout_s": 300.0,
              "trainer.collective_timeout_s": 1800.0}


def changes_only_execution(key: str) -> bool:
    """Whether a (flattened) config key may differ between an interrupted run and its
    resumption: one of :data:`RESUMABLE_CHANGES`, or any ``logger.*`` key."""
    return key in RESUMABLE_CHANGES or key.startswith("logger.")


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flat_config(config: dict) -> dict[str, Any]:
    """A run's config flattened (``trainer.lr``), with the :data:`ADDED_KEYS` an older
    basisconv did not write filled in with the value it ran as."""
    return {**ADDED_KEYS, **flatten(config)}


def check_same_run(saved_config: dict, config: dict, path: Path,
                   fix: str = "use a new output directory, or trainer.resume=false to start "
                              "over", unread: tuple[str, ...] = (),
                   saved_root: str | None = None) -> None:
    """Refuse to resume a checkpoint written under a different configuration (or, with
    another ``fix``, to replace a record ``path`` of one: :func:`refuse_other_settings`).

    A key an older basisconv did not write counts as the value it ran as
    (:data:`ADDED_KEYS`); other keys that only one side has (removed, or written by a newer
    version) are logged, not refused, so a reproduce started before an upgrade can go on.
    ``unread``: flattened keys, or prefixes ending in ``.``, that may differ too (the run
    does not read them). ``saved_root``: the folder the saved ``data.root`` named where
    that run started (:func:`recorded_root`), as a relative root names another folder
    from elsewhere."""
    old, new = flat_config(saved_config), flat_config(config)
    one_sided = sorted(old.keys() ^ new.keys())
    if one_sided:
        log.warning("%s: config keys %s exist on one side only (another basisconv version); "
                    "resuming anyway", path, ", ".join(one_sided))
    # 1 and 1.0 differ too: basis.size and the subsets read an int as a count, a float
    # as a fraction (and Python calls them equal)
    changed = sorted(k for k in old.keys() & new.keys()
                     if (old[k] != new[k] or type(old[k]) is not type(new[k]))
                     and not changes_only_execution(k) and not k.startswith(unread))
    # a saved root where its run started is compared even where both are written alike
    compared = saved_root is not None and "data.root" in old.keys() & new.keys()
    if "data.root" in changed or compared:
        differs = _data_root_difference(old, new, saved_root, path)
        changed = sorted([*(key for key in changed if key != "data.root"),
                          *([differs] if differs else [])])
    if changed:
        raise ConfigError(
            f"{path} was written by a different config (differs in {', '.join(changed)}); "
            f"{fix}")


def _data_root_difference(old: dict[str, Any], new: dict[str, Any], saved_root: str | None,
                          path: Path) -> str | None:
    """How a refusal names ``data.root`` where the two configs read other data (None where
    they read the same: logged where it is written otherwise). Written alike, a relative
    root that names another folder from here says both folders and the fix (found in
    self-review: "differs in data.root" beside two equal values left the user guessing)."""
    if same_data(old, new, saved_root):
        if old["data.root"] != new["data.root"]:
            log.info("%s: data.root %s -> %s holds the same data; resuming", path,
                     old["data.root"], new["data.root"])
        return None
    if old["data.root"] != new["data.root"]:
        return "data.root"
    return (f"data.root: {old['data.root']!r} named {saved_root} where the saved run "
            f"started, {absolute_root(str(new['data.root']))} from here; start the command "
            f"there, or give data.root={saved_root}")


def refuse_other_settings(config: dict, folder: Path, kind: str, what: str,
                          unread: tuple[str, ...] = ()) -> None:
    """A :class:`ConfigError` when ``folder`` holds the record of a ``kind`` run (an
    estimate's, a search's) made with other settings, naming the keys that differ: ``what``
    (e.g. "search") wrote its files and record over that one's silently, and one stopped
    there left the old results beside the new one's config and log. The same run again
    there is taken, as a training run is resumed (a relative ``data.root`` compared as the
    folder it named where that run started, :func:`recorded_root`): keys that change only
    how it runs (``sensitivity.workers``) may differ, and the ``unread`` ones (as
    :func:`check_same_run`), and ``name``, which here only labels the folder and the
    logger's group (no analysis reads it, as it reads a training run's experiment): the
    search's default changed from ``<model>-sensitivity`` to ``<model>-search`` (1f17dc5),
    and ``scripts/reproduce.sh`` rerunning a search in its folder made before was refused
    as "differs in name" (found in review). A missing or unreadable record is left to the
    run."""
    try:
        found = read_record(folder / RECORD)
    except (OSError, ValueError):
        return  # none, or unreadable: the run writes its own
    if found.get("kind") == kind and isinstance(found.get("config"), dict):
        check_same_run(found["config"], config, folder / RECORD, unread=("name", *unread),
                       saved_root=recorded_root(found),
                       fix=f"give this {what} a folder of its own (hydra.run.dir=..., or none "
                           f"for the default), or delete that folder")


def same_data(old: dict[str, Any], new: dict[str, Any], saved_root: str | None = None
              ) -> bool:
    """Whether two flattened configs read the same data: the data is what was verified,
    not how its path was written. So the root may change when both check the published
    md5 sums (the files are then the genuine CIFAR-10 wherever they lie), when the data is
    generated (the root is not read), or when both paths resolve to the same folder: the
    saved one as its run resolved it where it started (``saved_root``); without one (a
    record made before it was kept) resolved here, right where the run started here."""
    if old.get("data.name") == new.get("data.name") == "stripes":
        return True
    if old.get("data.verify_md5") and new.get("data.verify_md5"):
        return True
    before = Path(saved_root) if saved_root else absolute_root(str(old["data.root"]))
    return before == absolute_root(str(new["data.root"]))


def recorded_root(record: dict[str, Any]) -> str | None:
    """The folder a saved run's ``data.root`` named where its latest start ran, absolute
    (its record's ``provenance.data.root``, :func:`basisconv.data.data_read`); None where
    the record kept none (generated data, or a record made before it was kept)."""
    provenance = record.get("provenance")
    data = provenance.get("data") if isinstance(provenance, dict) else None
    root = data.get("root") if isinstance(data, dict) else None
    return root if isinstance(root, str) else None  # (a record edited by hand: none)
