"""What a sensitivity estimate or an exhaustive search has finished, kept on disk as it
finishes, so that one stopped (a Ctrl-C, a kill, a GPU slot's end) resumes where it
stopped instead of starting over: the briefly trained dense model every fine-tune starts
from (``dense.pt``), and each fine-tune's result (one small JSON file per job).

Kept in the sensitivity cache folder of the table's key, under what else shapes a
fine-tune's numbers (the basis options a probe applies, the trainer's recipe and speed
options, the device, the thread count, the torch version, basisconv's own code; the
dense model under all of these but the basis options, which it does not read), and, for
the results, under the digest of the dense weights they started from. So a resumed
estimate gives the table an uninterrupted one gives on that machine, and nothing measured
from another dense start or on another device is mixed in. The search finds the estimate's dense
model and reference there (the same probe: it pretrained them again before).

A damaged or unreadable kept file is logged and computed again: this is a cache of work
done, never a source of truth. ``sensitivity.recompute=true`` clears it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import WriteError, one_line
from .records import STALE_AFTER_S, json_digest, leftover_temporaries, write_atomic
from .signals import stops_held

log = logging.getLogger(__name__)

FOLDER = "progress"
DENSE = "dense.pt"
#: Trainer settings that shape no fine-tune (how a training run saves, shows, resumes).
NOT_IN_A_FINETUNE = ("epochs", "progress", "checkpoint", "checkpoint_every_s", "resume",
                     "collective_timeout_s")
#: The basis options a probe converts layers with (``Probe.converted`` passes these, by
#: their ``apply_basis`` names, so a new one is part of the conditions too).
PROBE_BASIS = ("size", "combine", "coefficient_rank", "fuse_norm", "share_coefficients", "fit")


def weights_digest(model: torch.nn.Module) -> str:
    """The digest of a model's weights and buffers, by their bytes."""
    sha = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        sha.update(name.encode())
        sha.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return sha.hexdigest()[:16]


@functools.cache
def code_digest(package: Path = Path(__file__).parent) -> str:
    """The digest of the package's code that computes (every ``.py`` file but the
    analysis's, which only reads records): work kept by other code is not reused, so a
    resume after a ``git pull`` does not mix two versions' numbers in one table."""
    sha = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] != "analysis":
            sha.update(str(relative).encode() + b"\0" + path.read_bytes())
    return sha.hexdigest()[:16]


code_digest()  # at import: the code this process runs, not what a later git pull brings


def conditions(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """What shapes a fine-tune's numbers beyond the table's cache key. Why more than that
    key (:func:`basisconv.sensitivity_key.key_fields`), which leaves out the machine and the
    speed options: kept results are mixed into one table, so only those of the device,
    threads, torch, code and options (every trainer setting but :data:`NOT_IN_A_FINETUNE`,
    every basis option a probe applies) that this fine-tune runs with are read back."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    # (with how a fine-tune decays the basis layers' weights, which is not a conversion's)
    return {"basis": {**{k: cfg.basis.get(k) for k in PROBE_BASIS},
                      "frobenius_decay": bool(cfg.basis.get("frobenius_decay"))},
            "trainer": {k: v for k, v in trainer.items() if k not in NOT_IN_A_FINETUNE},
            "device": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "code": code_digest()}


class Progress:
    """The kept work of one probe: under ``folder/progress/<conditions>/``."""

    def __init__(self, folder: str | Path, cfg: DictConfig, device: torch.device):
        kept = conditions(cfg, device)
        self.root = Path(folder) / FOLDER / json_digest(kept, 16)
        # the dense start, under all but the basis options (no dense model reads them): a
        # search with other options than its estimate's (share_coefficients) found none
        # and pretrained the same model again
        self.dense_root = Path(folder) / FOLDER / "dense" / json_digest(
            {k: v for k, v in kept.items() if k != "basis"}, 16)
        self.jobs: Path | None = None  # known once the dense start is (start_from)
        self.write_failed = False

    # ------------------------------------------------------------------ the dense start
    def dense(self, model: torch.nn.Module) -> tuple[dict, float] | None:
        """The kept dense weights for ``model`` and how long their pretraining took, or
        ``None``. Weights that do not fit ``model`` (other names or shapes) are refused
        before anything is loaded: ``load_state_dict`` copies what fits before it raises."""
        path = self.dense_root / DENSE
        if not path.exists():
            return None
        try:
            kept = torch.load(path, map_location="cpu", weights_only=True)
            state, seconds = kept["state_dict"], float(kept["seconds"])
            expected = {k: v.shape for k, v in model.state_dict().items()}
            if {k: v.shape for k, v in state.items()} != expected:
                raise ValueError(f"its weights are not {type(model).__name__}'s")
            return state, seconds
        except Exception as err:  # any damage: pretrain again
            log.warning("sensitivity: the kept dense model %s is unreadable (%s); "
                        "pretraining again", path, one_line(err)[:200])
            return None

    def keep_dense(self, model: torch.nn.Module, seconds: float) -> None:
        """Keep the dense start, first deleting the half-written copies of estimates
        killed while writing it (each as big as the model: before the write, not after it
        as every atomic write does, to leave room for the new copy). Estimates under the
        same conditions share this folder and hold no lock on it, so only copies no one has
        written for an hour go: a writer in flight writes its copy in seconds."""
        path = self.dense_root / DENSE
        for leftover in leftover_temporaries(path, untouched_for_s=STALE_AFTER_S):
            leftover.unlink(missing_ok=True)
            log.info("sensitivity: removed %s, left half written by an estimate killed "
                     "while writing it", leftover)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        with stops_held():  # a stop raised inside torch.save became torch's RuntimeError
            self._write(path, lambda f: torch.save({"state_dict": state, "seconds": seconds},
                                                   f))

    def start_from(self, model: torch.nn.Module) -> None:
        """Results from here on are those of fine-tunes starting from ``model``."""
        self.jobs = self.root / weights_digest(model)

    # ------------------------------------------------------------------ fine-tunes
    def _job_path(self, names: list[str], batch_seed: int | None) -> Path:
        return self.jobs / f"{json_digest([list(names), batch_seed], 16)}.json"

    def result(self, names: list[str], batch_seed: int | None) -> dict[str, Any] | None:
        """The kept result of this fine-tune, or ``None``."""
        path = self._job_path(names, batch_seed)
        if not path.exists():
            return None
        try:
            kept = json.loads(path.read_text())
            if kept["job"] == [list(names), batch_seed] and isinstance(kept["result"], dict):
                return kept["result"]
            raise ValueError("it holds another job")
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("sensitivity: the kept result %s is unreadable (%s); computing it again",
                        path, err)
            return None

    def keep(self, names: list[str], batch_seed: int | None, result: dict[str, Any]) -> None:
        path = self._job_path(names, batch_seed)
        self._write(path, lambda f: f.write(json.dumps(
            {"job": [list(names), batch_seed], "result": result}).encode()))

    def _write(self, path: Path, write) -> None:
        """A write that fails (a full disk) costs a resume, not the estimate: a warning,
        once (a search of 200 subsets would say it 200 times)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, write)
        except (OSError, WriteError) as err:
            if not self.write_failed:
                log.warning("sensitivity: could not keep %s (%s); a stopped estimate will "
                            "compute it again", path, err)
            self.write_failed = True


def clear(folder: str | Path) -> None:
    """Forget every kept dense model and result of this cache folder."""
    shutil.rmtree(Path(folder) / FOLDER, ignore_errors=True)
