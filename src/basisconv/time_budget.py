"""``selection.budget_metric=time``: what each candidate layer saves in measured training
time, on this machine, in the run's settings; measured once and cached.

Why cached: a measured time varies from one measurement to the next (load from other
runs, clocks), so a choice made from it could too. Measured once per machine and setting,
every run of one setting (the seeds of a protocol row, a resumed run, the sensitivity
run that records the timings) chooses the same layers from the same numbers. The cache
sits beside the sensitivity tables (``<sensitivity.cache_dir>/layer-times/``), under a key
of everything that changes a timing: the hardware, the model, the basis options, the
candidate layers and the run's device, batch, layout, precision, threads and flags.
Timed eagerly, each layer alone: ``trainer.compile`` and ``trainer.cuda_graphs`` are not
applied, and are not in the key (a compiled or graphed run chooses from eager times).
``sensitivity.recompute=true`` measures again. A run resumed on another machine keeps the
layers its checkpoint was built with (``basisconv.training``), whatever it would measure there.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any, TYPE_CHECKING

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import distributed, execution
from .data import IMAGE_SHAPE
from .errors import ConfigError, one_line
from .kernels import auto
from .network import architecture_digest, build_dense, to_basis
from .records import (folder_lock, hardware, json_digest, provenance, timing_hardware,
                      write_json_atomic)
from .selection_checks import budget_chooses
from .timing import Runner, layer_time_savings

if TYPE_CHECKING:  # pandas (half a second) is imported where a table is made: a process
    import pandas as pd  # that makes none (most training runs) starts without it

log = logging.getLogger(__name__)

COLUMNS = ["layer", "dense_ms", "basis_ms", "seconds_saved"]


def key_fields(cfg: DictConfig, layers: list[str]) -> dict[str, Any]:
    """Everything that changes the timings of ``layers`` (and nothing else).

    Why it differs from the sensitivity table's key
    (:func:`basisconv.sensitivity_key.key_fields`): a time is this machine's, so its hardware,
    torch version and speed options are in it; the layers are timed in the form the run
    builds (:func:`~basisconv.network.to_basis`: every basis option that shapes it, sharing
    included), unfitted and on random images of one shape, so no ``basis.fit``, no data
    but the classes, and no training recipe (a learning rate does not change a step's time).
    Of the hardware, what :func:`~basisconv.records.timing_hardware` says changes a time
    (TF32's flags for float32 on a GPU; the key of any other setting is as it was)."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    # the thread count the measurement runs with: trainer.threads=null is torch's default
    # in this process (its cores, OMP_NUM_THREADS, a CPU affinity), not one setting
    trainer["threads"] = trainer["threads"] or torch.get_num_threads()
    basis = OmegaConf.to_container(cfg.basis, resolve=True)
    return {
        "hardware": timing_hardware(hardware(), trainer["device"], trainer["amp"]),
        "torch": torch.__version__,
        # the classes size the classifier, a part of the dense step the budget divides
        "model": {"name": cfg.model.name, "width": cfg.model.width,
                  "num_classes": cfg.data.num_classes},
        "basis": {k: basis[k] for k in ("size", "combine", "coefficient_rank", "fuse_norm",
                                        "share_coefficients", "only_where_saves")},
        "layers": list(layers),
        "trainer": {k: trainer[k] for k in ("device", "batch_size", "channels_last", "amp",
                                            "threads", "deterministic")},
        # how a layer is timed: 2 since a folded norm is timed with its layer (a cache of
        # such layers timed alone, before, is not read as this)
        "method": 2,
    }


def readable_key(cfg: DictConfig, fields: dict[str, Any]) -> str:
    """``<model>-w<width>-m<size>-<hash of fields>``: the name a cached timing and a cached
    sensitivity table (:func:`basisconv.sensitivity_key.cache_key`) are kept under, readable at
    a glance. Kept byte for byte: caches and committed records are found by their keys
    (the quick profile's table: ``resnet20-w0.5-m0.5-9b6fd8821cb1``)."""
    return f"{cfg.model.name}-w{cfg.model.width:g}-m{cfg.basis.size:g}-{json_digest(fields)}"


def cache_path(cfg: DictConfig, fields: dict[str, Any]) -> Path:
    """Where the timings of ``fields`` (:func:`key_fields`) are cached."""
    return Path(cfg.sensitivity.cache_dir) / "layer-times" / f"{readable_key(cfg, fields)}.json"


def with_measured_time(cfg: DictConfig, table: pd.DataFrame, dense: dict[str, float]
                       ) -> tuple[pd.DataFrame, dict[str, float]]:
    """For ``selection.budget_metric=time``: the candidate table with what each layer saves
    in training-step time on ``trainer.device`` (``dense_ms``, ``basis_ms``,
    ``seconds_saved``; cached, see the module's doc; the table's ``attrs["measured_time"]``
    names the cache's key and holds the times, for a record), and the dense model's
    measured step as the budget's 100 % (``dense["time"]``). Other budgets: as given.
    Torch's random state and process-wide settings are left as they were."""
    import pandas as pd
    if cfg.selection.budget_metric != "time" or not budget_chooses(cfg.selection):
        return table, dense  # (a count or a threshold chooses: times would decide nothing)
    if distributed.world_size() > 1:
        raise ConfigError("selection.budget_metric=time measures this machine, and each "
                          "torchrun process would measure its own; choose the layers in one "
                          "process (python scripts/sensitivity.py ...) and pass them as "
                          "selection=list selection.layers=[...]")
    names = list(table["layer"])
    fields = key_fields(cfg, names)
    path = cache_path(cfg, fields)
    # one measurement a key
    with folder_lock(path.parent, wait=True, what="layer timing", key="sensitivity.cache_dir"):
        cached = None if cfg.sensitivity.recompute else load(path, names)
        # the key names the model; what it is made of is kept beside the times (files
        # written before carry none and are read as they are), and an edited model file's
        # layers are timed again
        made_of = architecture_digest(cfg)
        if cached is not None and cached.get("architecture", made_of) != made_of:
            log.info("selection: the layer timings %s are of another definition of model %s "
                     "(an edited model file?); measuring again", path, cfg.model.name)
            cached = None
        if cached is None:
            cached = measure(cfg, names)  # (its provenance taken in the run's settings)
            write_json_atomic(path, {**cached, "key_fields": fields, "architecture": made_of})
        else:
            log.info("selection: reusing the layer timings %s", path)
    savings = pd.DataFrame(cached["layers"], columns=COLUMNS)
    log.info("selection: training forward+backward on %s at batch %d, dense model %.1f ms; "
             "per layer (ms dense -> basis): %s", cached.get("device", cfg.trainer.device),
             cfg.trainer.batch_size,
             1e3 * cached["dense_step_seconds"],
             ", ".join(f"{r.layer} {r.dense_ms:.2f} -> {r.basis_ms:.2f}"
                       for r in savings.itertuples()))
    table = table.drop(columns=[c for c in COLUMNS if c != "layer"], errors="ignore")
    timed = table.merge(savings, on="layer", how="left")
    # the device the times are of, for the run's record (its config may say only "auto")
    timed.attrs["measured_on"] = cached.get("device", cfg.trainer.device)
    # what chose the layers, for the records (a sensitivity policy's name its table):
    # the cached timings' key, their device and the times
    timed.attrs["measured_time"] = {
        "key": readable_key(cfg, fields), "device": timed.attrs["measured_on"],
        "dense_step_seconds": cached["dense_step_seconds"],
        "layers": savings.to_dict("records")}
    return timed, {**dense, "time": cached["dense_step_seconds"]}


def load(path: Path, names: list[str]) -> dict | None:
    """The cached timings of the layers ``names`` at ``path``, ``None`` when there are
    none; a damaged file (unreadable, a layer or number missing or not finite) is refused
    with the fix: a missing saving would choose a layer as if it saved time."""
    import pandas as pd
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
        rows = pd.DataFrame(cached["layers"])
        numbers = rows[COLUMNS[1:]].astype(float)
        step = float(cached["dense_step_seconds"])
        if rows["layer"].tolist() != names:
            raise ValueError(f"it times {rows['layer'].tolist()}, not the candidates {names}")
        if not (math.isfinite(step) and np.isfinite(numbers.to_numpy()).all()):
            raise ValueError("a time that is not a finite number")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"the cached layer timings {path} are unreadable "
                          f"({one_line(err)}); delete the file (they are "
                          f"measured again)") from None
    return cached


def measure(cfg: DictConfig, names: list[str]) -> dict:
    """Time ``names`` now, in the run's settings (threads, cudnn and deterministic flags,
    device; eagerly: not compiled nor graphed), each layer dense and in the basis form the
    run would build."""
    trainer = cfg.trainer
    # (with combine=auto the basis forms choose theirs here, kept for the run's own calls;
    # but a record's auto_forms lists the layers the run ran, not every candidate timed)
    with torch.random.fork_rng(), execution.settings_restored(), auto.not_the_runs():
        runtime = execution.setup(trainer, cfg.seed)
        model = build_dense(cfg)
        converted = to_basis(copy.deepcopy(model), cfg, names, convert=False)
        runner = Runner(runtime.device, channels_last=trainer.channels_last, amp=trainer.amp)
        savings, step = layer_time_savings(model, converted, names, runner,
                                           trainer.batch_size, IMAGE_SHAPE)
        made = provenance()  # the threads the layers were timed on, not the process's
    return {"dense_step_seconds": step, "device": str(runtime.device),
            "layers": savings[COLUMNS].to_dict("records"), "provenance": made}

