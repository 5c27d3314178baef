"""What a run or a benchmark writes about itself: the run record (one type for every
producer: training run, sensitivity estimate, exhaustive search, benchmark), its
provenance (commit, versions, hardware, date), and atomic writes, so a results file is
either the old one or the new one, never half of each.

Producers write records here; ``basisconv.analysis`` reads them back (``read_records``)
and never needs the producers themselves."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from dataclasses import dataclass, field
from typing import IO, Any, Callable

import torch

from .errors import (BasisconvError, ConfigError, FolderInUse, PublishError, WriteError,
                     one_line)

log = logging.getLogger(__name__)


#: The code and configs: the whole work tree but the top-level ``results/`` (see git_commit).
_CODE = ["--", ":(top)", ":(top,exclude)results"]
#: Where a new file, not yet added, can change what a run computes: the package, scripts,
#: configs, tests and the top-level build files. Elsewhere an untracked file is what runs
#: wrote (``RESULTS_DIR=myres`` or a run folder inside the checkout), not code.
_NEW_CODE = ["--", ":(top)src", ":(top)scripts", ":(top)configs", ":(top)tests",
             *(f":(top,glob){name}" for name in ("*.py", "*.toml", "*.cfg", "*.txt", "*.yml",
                                                  "*.yaml", "Makefile"))]


def git_commit(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """HEAD commit of the repository around ``cwd`` (this package by default), and whether
    the work tree had uncommitted changes; ``None`` values outside a git checkout, or for a
    copy of the package that the repository around it does not track.

    Changes under the top-level ``results/`` do not count: they are what runs write (a
    protocol publishes its records and tables there while later runs start), not what
    computes them, so ``dirty`` means the code or configs differ from the commit; nor do
    new files outside the code's folders (:data:`_NEW_CODE`: another run folder). A dirty
    tree also gets ``diff_sha256``, the hash of ``git diff HEAD --binary`` of the code and
    configs, so that a record can be matched to the commit whose changes it ran (a copy of a
    checkout whose git metadata is older than its files, as a GPU machine's was, says
    dirty): at the top of a checkout, ``git diff <its commit> <that commit> --binary -- .
    ':(exclude)results' | sha256sum`` gives the same hash."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent

    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True,
                              timeout=10).stdout

    try:
        commit = git("rev-parse", "HEAD").decode().strip()
        if not git("ls-files", "--", ".").strip():
            # a copy the repository around it does not track (copied into another project,
            # installed into a .venv inside a checkout): that commit is not its code's
            return {"commit": None, "dirty": None}
        # new files count (a config or module not yet added), ignored ones (.gitignore) not
        new = _new_files(git)
        if not (new or git("status", "--porcelain", "--untracked-files=no", *_CODE).strip()):
            return {"commit": commit, "dirty": False}
        diff = _diff_with_new_files(git, cwd, new)
        return {"commit": commit, "dirty": True, "diff_sha256": hashlib.sha256(diff).hexdigest()}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _new_files(git: Callable[..., bytes]) -> list[bytes]:
    """The untracked, not ignored files where code lives (:data:`_NEW_CODE`)."""
    return [p for p in git("ls-files", "--others", "--exclude-standard", "-z", "--full-name",
                           *_NEW_CODE).split(b"\0") if p]


def _diff_with_new_files(git: Callable[..., bytes], cwd: Path, new: list[bytes]) -> bytes:
    """``git diff HEAD --binary`` of the code and configs, the ``new`` files
    (:func:`_new_files`) included as additions, as the commit that adds them would show
    them: they are marked intent-to-add in a copy of the index, never in the repository's
    own."""
    if not new:
        return git("diff", "HEAD", "--binary", *_CODE)
    index = Path(cwd, git("rev-parse", "--git-path", "index").decode().strip())
    top = git("rev-parse", "--show-toplevel").decode().strip()
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "index"
        # copy2 keeps the index's mtime, which git's racy-entry check compares file times
        # with: a fresh mtime made a change written in the index's clock tick look clean
        shutil.copy2(index, copy)
        env = {**os.environ, "GIT_INDEX_FILE": str(copy)}
        for args in (["add", "--intent-to-add", "--", *(p.decode() for p in new)],
                     ["diff", "HEAD", "--binary", *_CODE]):
            out = subprocess.run(["git", *args], cwd=top, env=env, capture_output=True,
                                 check=True, timeout=10).stdout
    return out


def hardware() -> dict[str, Any]:
    """The machine a number was measured on: CPU model and threads, GPU if any, and the
    number of processes when more than one (``torchrun``)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        # The instruction set torch's CPU kernels dispatch on (DEFAULT, AVX2, AVX512, ...):
        # runs repeat bit for bit on one machine, not across instruction sets.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        # the current device: the one this process computes on (a DDP rank's, or cuda:1
        # while cuda:0 belongs to someone else), not always the first one
        info["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    # torchrun's processes (the variable it sets and basisconv.distributed joins by): the
    # epoch times of N processes are not one process's, and the command does not say so
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1:
        info["processes"] = processes
    return info


def measured_on_cpu(hardware: dict, device: str | None = None) -> bool:
    """Whether a measurement ran on the CPU: the machine has no GPU, or ``device`` (what
    was asked for, e.g. a run's ``trainer.device``; ``auto`` takes the GPU) says ``cpu``.
    ``hardware`` lists a machine's GPU whatever ran on it."""
    on_cpu = device is not None and str(device).split(":")[0] == "cpu"
    return on_cpu or not (hardware or {}).get("gpu")


def device_name(hardware: dict, device: str | None = None) -> str:
    """A short device tag for file names: ``cpu``, or the GPU model (``h100``, ``a100``);
    ``device`` as for :func:`measured_on_cpu`."""
    if measured_on_cpu(hardware, device):
        return "cpu"
    gpu = hardware["gpu"]
    words = [w for w in gpu.lower().replace("-", " ").split()
             if w not in {"nvidia", "geforce", "tesla", "pcie", "sxm", "sxm5", "nvl"}]
    return next((w for w in words if any(c.isdigit() for c in w)), words[0] if words else "gpu")


def commit_name(git: dict | None) -> str:
    """A record's commit as tables name it: the short hash, ``-dirty`` after it when the code
    or configs had uncommitted changes (as ``git describe --dirty`` says), "" for none."""
    git = git or {}
    commit = (git.get("commit") or "")[:7]
    return f"{commit}-dirty" if commit and git.get("dirty") else commit


def hardware_name(hardware: dict, device: str | None = None) -> str | None:
    """The GPU, or the CPU with the instruction set its kernels dispatch on (CPU runs repeat
    exactly only on the same instruction set), as tables and plots name the hardware.
    ``device`` is what was measured on, where known: a CPU measurement on a machine that
    also has a GPU is named by its CPU (``hardware`` lists the GPU all the same), so that
    it is not shown, or compared, as the GPU's."""
    if not measured_on_cpu(hardware, device):
        return hardware["gpu"]
    cpu, capability = hardware.get("cpu"), hardware.get("cpu_capability")
    return f"{cpu} ({capability})" if cpu and capability else cpu


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide what a run computes."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    # triton: it compiles the fused kernel (and torch.compile's), so it decides their speed
    for name in ("torch", "torchvision", "triton", "basisconv", "hydra-core", "omegaconf",
                 "wandb", "numpy", "pandas"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def timestamp() -> str:
    """Now, as records write dates: ISO 8601 in UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def this_command() -> dict[str, str]:
    """The command line of this process (``python scripts/train.py seed=1 ...``). In a job
    of a Hydra sweep (``-m``) that line is the whole sweep's, so ``command`` is the one-run
    command of this job (its own overrides) and the sweep's line is kept as ``sweep_command``:
    a reader reruns one job without working out which combination it was. The job's
    overrides are kept as Hydra escapes them (``name=x_$\\{seed\\}`` for ``name=x_${seed}``):
    Hydra reads the escaped form back as the same value, so the line reruns the job as is."""
    line = shlex.join(["python", *sys.argv])
    from hydra.core.hydra_config import HydraConfig  # only a Hydra entry point has a job
    from hydra.types import RunMode
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return {"command": line}
    job = shlex.join(["python", sys.argv[0], *_hydra_flags(sys.argv[1:]),
                      *HydraConfig.get().overrides.task])
    return {"command": job, "sweep_command": line}


#: Hydra's flags that take the next word as their value.
HYDRA_VALUE_FLAGS = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn",
                     "--config-name", "-cd", "--config-dir", "--experimental-rerun"}


def _hydra_flags(argv: list[str]) -> list[str]:
    """The flags of a sweep's command line but ``-m``: which configs a job composes from
    (found in review: a job's command without ``--config-dir`` failed, and without
    ``--config-name`` ran another config, silently)."""
    flags, words = [], iter(argv)
    for word in words:
        if word in ("-m", "--multirun") or not word.startswith("-"):
            continue  # (an override: the job's own are Hydra's task overrides)
        flags.append(word)
        if word in HYDRA_VALUE_FLAGS:
            flags.append(next(words, ""))
    return flags


def provenance(command: str | None = None) -> dict[str, Any]:
    """Everything a reader needs to say where a number came from. Without a ``command``,
    the command that ran (``this_command``)."""
    return {
        "date": timestamp(),
        **({"command": command} if command else this_command()),
        "git": git_commit(),
        "versions": package_versions(),
        "hardware": hardware(),
    }


def wandb_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """A run's provenance as wandb summary keys: the commit, date, CPU and GPU to read in
    wandb's tables, and its whole ``git`` and ``hardware`` as JSON, from which
    :func:`provenance_from_wandb` rebuilds them (a dirty tree, the CPU capability, the
    threads and processes the table's caveats are made of)."""
    git, hardware = provenance["git"], provenance["hardware"]
    return {"provenance/commit": git["commit"], "provenance/date": provenance["date"],
            # the command names the profile a run was made by, which the tables' footers say
            "provenance/command": provenance.get("command"),
            "provenance/cpu": hardware.get("cpu"), "provenance/gpu": hardware.get("gpu"),
            "provenance/git": json.dumps(git, sort_keys=True),
            "provenance/hardware": json.dumps(hardware, sort_keys=True)}


def provenance_from_wandb(summary: dict[str, Any]) -> dict[str, Any]:
    """The provenance :func:`wandb_provenance` logged (of a run logged before it kept the
    whole ``git`` and ``hardware``: the commit, CPU and GPU alone)."""
    def whole(key: str, fallback: dict) -> dict:
        text = summary.get(f"provenance/{key}")
        return json.loads(text) if isinstance(text, str) else fallback

    return {"git": whole("git", {"commit": summary.get("provenance/commit")}),
            "date": summary.get("provenance/date"),
            "command": summary.get("provenance/command"),
            "hardware": whole("hardware", {"cpu": summary.get("provenance/cpu"),
                                           "gpu": summary.get("provenance/gpu")})}


def json_digest(obj: Any, length: int = 12) -> str:
    """A short sha256 of ``obj`` as sorted JSON: the stable name of a set of settings (a
    cache key, a folder of kept work)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 22) -> str:
    """Hex digest of a file's bytes, read in chunks (a dataset file, a checkpoint)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


LOCK = "run.lock"


def make_folder(folder: str | os.PathLike, *, what: str = "run",
                key: str = "hydra.run.dir") -> Path:
    """``folder``, made where missing; one that cannot be (a file in its path, no
    permission) is a :class:`ConfigError` naming ``key``, the config entry that chose it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(folder, what, key, err) from None
    return folder


def _unwritable(folder: Path, what: str, key: str, err: OSError) -> ConfigError:
    return ConfigError(f"cannot write the {what}'s folder {folder} ({err.strerror or err}); "
                       f"point {key} at a folder that can be written")


@contextlib.contextmanager
def folder_lock(folder: Path, *, wait: bool = False, what: str = "run",
                key: str = "hydra.run.dir", name: str = LOCK):
    """Hold an exclusive lock on ``folder`` (``flock`` on ``folder/<name>``, ``run.lock`` by
    default) for the ``with`` block. Another holder means :class:`ConfigError` naming its
    pid and host, or, with ``wait``, waiting for it. The kernel drops the lock when its
    process ends, however it ends, so a crashed or killed run never leaves the folder
    locked; the file stays.
    A folder that cannot be made or written (a file in its path, no permission) is a
    :class:`ConfigError` naming ``key``, the config entry that chose it."""
    folder = make_folder(folder, what=what, key=key)
    path = folder / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise _unwritable(folder, what, key, err) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = one_line(os.pread(fd, 512, 0).decode(errors="replace")) or "unknown"
            if not wait:
                raise FolderInUse(f"{folder} is in use by another {what} ({holder}); wait for "
                                  f"it to finish, or give this one another {key}") from None
            log.warning("%s is in use by another %s (%s); waiting for it", folder, what, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"pid {os.getpid()} on host {socket.gethostname()} since "
                       f"{_dt.datetime.now().isoformat(timespec='seconds')}\n").encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def temporary_beside(path: Path) -> tuple[int, str]:
    """A temporary file in ``path``'s folder (so the rename is atomic), with the
    permissions a plain ``open`` would give (mkstemp's are owner-only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def leftover_temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporary files of :func:`write_atomic` for ``path`` (and for names that begin
    with it, e.g. its ``.sha256``) that a writer killed mid-write (SIGKILL, the OOM killer,
    a lost node) left behind: one a kill, each as big as the file. Only whoever holds the
    folder's lock may delete them; another writer's could be in flight."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *,
                 before_replace: Callable[[Path], Any] | None = None) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then
    rename it over ``path`` atomically: a kill mid-write leaves the previous file intact.
    ``before_replace(temporary path)`` runs once the new bytes are on disk, before the
    rename (a checkpoint records its checksum there). A write the system refuses (a full
    disk, no permission) is a :class:`WriteError` naming ``path``, not a bare ``OSError``
    from a temporary file's descriptor."""
    path = Path(path)
    try:
        fd, tmp = temporary_beside(path)
    except OSError as err:
        raise WriteError.of(path, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(Path(tmp))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, BasisconvError):
            raise WriteError.of(path, err) from err
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and an atomic rename."""
    return write_bytes_atomic(path, text.encode())


def json_text(obj: Any) -> str:
    """``obj`` as standard JSON: a NaN or infinity (the rank correlation of a search whose
    subsets all tie, say) is written ``null``, since strict readers (jq, JavaScript's
    ``JSON.parse``) refuse Python's bare ``NaN``; what is not JSON is written as its text."""
    return json.dumps(finite_or_null(obj), indent=2, sort_keys=False, default=str) + "\n"


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every non-finite number ``None``, and NumPy scalars and 0-d tensors (a
    float32 from pandas, an int64 count) plain Python values, which ``json`` would write
    as their text ("nan", "3")."""
    if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(value) for value in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json_text(obj))


# ----------------------------------------------------------------------------- run records
RECORD = "run.json"
#: What produced a record: a training run, a sensitivity estimate, an exhaustive search,
#: a speed benchmark, a GPU machine check (scripts/gpu_check.py).
KINDS = ("training", "sensitivity", "exhaustive_search", "benchmark", "gpu_check")


@dataclass
class RunRecord:
    """The record of one producer's run: what it was (``kind``, the resolved ``config``),
    where it came from (``provenance``), whether it finished (``status``), and what it
    found (``results``: kind-specific fields, written at the top level beside the others,
    e.g. a training run's ``model``, ``epochs`` and ``final``)."""

    kind: str
    config: dict
    provenance: dict = field(default_factory=provenance)
    status: str = "running"
    results: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"record kind {self.kind!r}; one of {', '.join(KINDS)}")

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "status": self.status, "config": self.config,
                "provenance": self.provenance, **self.results}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        """Read a record back; one written before records had a ``kind`` (before commit
        ``04946d5``) is a training run, the only producer that wrote none."""
        rest = {k: v for k, v in data.items()
                if k not in ("kind", "status", "config", "provenance")}
        return cls(data.get("kind") or "training", data.get("config") or {},
                   data.get("provenance") or {}, data.get("status", "running"), rest)


def write_record(path: str | os.PathLike, record: RunRecord) -> Path:
    """The one writer of records: ``path`` is a run folder (the record goes to its
    ``run.json``) or a ``.json`` file (a benchmark's sidecar); written atomically."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / RECORD
    return write_json_atomic(path, record.as_dict())


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """A record as a plain dict with its ``kind`` always set (see ``RunRecord.from_dict``);
    ``OSError`` or ``ValueError`` when the file cannot be read or parsed."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return RunRecord.from_dict(data).as_dict()


#: What analysis reads of a record of each kind (``basisconv.analysis``), as dotted paths:
#: those every record of the kind holds, and those it holds once complete (a training run
#: in progress has ``final: null``). A record that lacks one is skipped by the analysis
#: and listed as unreadable, as a truncated one is.
REQUIRED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "training": (
        ("config.name", "config.seed", "config.model.name", "config.model.width",
         "config.selection.policy", "config.basis.size", "config.trainer.epochs",
         "config.trainer.amp", "config.data.train_subset", "model.parameters",
         "model.forward_flops", "model.backward_flops", "model.basis_layers", "epochs"),
        ("final.test_accuracy", "final.best_test_accuracy", "final.forward_seconds_per_step",
         "final.backward_seconds_per_step", "final.mean_epoch_seconds", "final.train_seconds")),
    "sensitivity": (
        ("config.model.name", "config.model.width", "config.basis.size",
         "config.selection.policy", "config.trainer.amp", "provenance.hardware",
         "sensitivity.policy", "sensitivity.key", "sensitivity.chosen", "sensitivity.dense",
         "sensitivity.estimate_seconds", "sensitivity.reference.accuracy",
         "sensitivity.pretrained.accuracy", "table", "estimate_provenance.date",
         "estimate_provenance.git", "estimate_provenance.hardware"), ()),
    "exhaustive_search": (
        ("config.model.name", "config.model.width", "config.basis.size", "config.trainer.amp",
         "provenance.hardware", "provenance.date", "provenance.git",
         *(f"search.{key}" for key in (
             "candidates", "subset_size", "subsets", "metric", "fast_choice", "fast_accuracy",
             "fast_rank_by_accuracy", "fast_rank_by_loss", "best_subset", "best_accuracy",
             "median_accuracy", "worst_accuracy", "reference_accuracy", "seconds",
             "spearman_predicted_vs_measured_drop", "spearman_predicted_vs_measured_loss"))),
        ()),
}


#: The parts of a record whose fields a producer always fills: a null or non-finite value
#: there is missing (hand-edited, or not ours), not a value; a table would count the seed
#: and leave it out of the mean. ``config`` keeps its nulls (``data.train_subset: null``).
MEASURED = ("model", "final")


def missing_fields(record: dict[str, Any]) -> list[str]:
    """The fields of :data:`REQUIRED` that ``record`` (as :func:`read_record` returns it)
    lacks for its kind and status, each named once by its outermost missing part (``final``
    for a missing or null ``final``), and those of :data:`MEASURED` that are null or not a
    finite number; none for the kinds analysis does not read."""
    always, once_complete = REQUIRED.get(record.get("kind"), ((), ()))
    paths = always + (once_complete if record.get("status") == "complete" else ())
    missing: list[str] = []
    for path in paths:
        node: Any = record
        keys = path.split(".")
        for depth, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                # a null or non-object parent is the missing part, else this key
                where = ".".join(keys[:depth + (1 if isinstance(node, dict) else 0)])
                if where not in missing:
                    missing.append(where)
                break
            node = node[key]
        else:
            if keys[0] in MEASURED and (node is None or (
                    isinstance(node, float) and not math.isfinite(node))):
                missing.append(path)
    return missing


def unwritable_folder(folder: str) -> str | None:
    """Why files cannot be written in ``folder`` (made when missing), or ``None`` when they
    can: its nearest existing ancestor is a file, or not writable. Nothing is created."""
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable"
    return None


def publish(record: dict[str, Any], path: str | os.PathLike | None,
            kept_in: str | os.PathLike) -> dict[str, Any]:
    """Also write a *complete* record to ``path`` (a ``.json`` file; nothing when ``None``)
    and return it. ``scripts/reproduce.sh`` publishes every finished run into the tracked
    ``results/<profile>/runs/``, so records accumulate across machines: the tables are
    built from them anywhere, and a protocol cut off on one machine goes on on the next
    without redoing what is there. Checkpoints are never published.

    ``kept_in`` is the run folder that already holds the record: a write that fails at the
    end of a long run (a full disk, a folder removed meanwhile; the folder was checked
    writable at the start) says where the result is, in one line, not with a trace."""
    if path is not None and record.get("status") == "complete":
        try:
            write_record(Path(path), RunRecord.from_dict(record))
        except OSError as err:
            kept = Path(kept_in) / RECORD
            raise PublishError(f"the run finished, but its record could not be published to "
                               f"{path} ({err.strerror or err}); it is kept in {kept}: once "
                               f"that is fixed, copy it to {path}") from err
    return record


#: What ``scripts/reproduce.sh`` publishes into ``results/<profile>/runs/``: a folder per
#: row of training runs (``<row>/seed<k>.json``) and the records of the protocol's other
#: steps (tests/test_reproduce.py holds these to the script's).
PROTOCOL_ROWS = ("baseline", "basis-all-0.5", "basis-all-0.125", "basis-all-0.25",
                 "basis-all-0.75", "selected-sensitivity_budget-0.5", "selected-random-0.5",
                 "selected-first_k-0.5", "selected-last_k-0.5")
PROTOCOL_RECORDS = ("sensitivity.json", "exhaustive-search-resnet8.json")
#: A row's published record of one seed, ``seed<k>.json``.
SEED_FILE = re.compile(r"seed(\d+)\.json")


def missing_protocol_runs(runs_dir: str | os.PathLike) -> list[str]:
    """The protocol's runs a folder of published records has no record of (a protocol cut
    off before them), each row for every seed that some row has, as ``<row> (seed <k>)``,
    then the other steps' records; [] for a folder that holds no published protocol record
    (run folders, or records of other experiments)."""
    root = Path(runs_dir)
    seeds = sorted({int(m[1]) for row in PROTOCOL_ROWS for path in (root / row).glob("seed*.json")
                    if (m := SEED_FILE.fullmatch(path.name))})
    steps = [name for name in PROTOCOL_RECORDS if (root / name).is_file()]
    if not seeds and not steps:
        return []
    missing = [f"{row} (seed {seed})" if seeds else row for row in PROTOCOL_ROWS
               for seed in (seeds or [None]) if not (root / row / f"seed{seed}.json").is_file()]
    return missing + [name for name in PROTOCOL_RECORDS if name not in steps]


def protocol_slot(path: str | os.PathLike) -> str | None:
    """Which place of the protocol's published records ``path`` is (``<row>/seed<k>.json``
    of a row of :data:`PROTOCOL_ROWS`, or one of :data:`PROTOCOL_RECORDS`), or None."""
    path = Path(path)
    if path.parent.name in PROTOCOL_ROWS and SEED_FILE.fullmatch(path.name):
        return f"{path.parent.name}/{path.name}"
    return path.name if path.name in PROTOCOL_RECORDS else None


def misplaced(record: dict[str, Any], path: str | os.PathLike) -> str | None:
    """Why a published ``record`` does not belong at ``path``, or None: it was published to
    another of the protocol's places (a copy of another row's record), or a
    ``seed<k>.json`` holds another seed's run. A record published under a name of the
    user's own, or gathered into a folder of another name, is where it may be."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    publish = config.get("publish")
    theirs, mine = (protocol_slot(publish) if publish else None), protocol_slot(path)
    if theirs and mine and theirs != mine:
        return f"it was published as {theirs}, not {mine}"
    seed = SEED_FILE.fullmatch(Path(path).name)
    if seed and config.get("seed") is not None and config.get("seed") != int(seed[1]):
        return f"it holds seed {config.get('seed')}'s run"
    return None


def search_table_found(record: dict[str, Any], folder: Path) -> bool:
    """Whether an exhaustive search's subsets can be read: in its record, or in the
    ``search.csv`` beside an older one (before ``04946d5``; a published copy of one has
    none); true of every other kind of record."""
    return (record.get("kind") != "exhaustive_search" or "table" in record
            or (folder / "search.csv").is_file())


def unusable(record: dict[str, Any], path: str | os.PathLike) -> str | None:
    """Why the analysis cannot use ``record``, read from ``path``, or None: a field it
    reads is missing (:func:`missing_fields`), a published copy is in another run's place
    (:func:`misplaced`), or a search's table is not found. One rule for the analysis,
    which leaves such a record out, and for ``scripts/reproduce.sh``, which must then not
    skip its run (:func:`set_aside_foreign_records`)."""
    path = Path(path)
    missing = missing_fields(record)
    if missing:
        return f"a {record.get('kind')} record without {', '.join(missing)}"
    problem = misplaced(record, path) if path.name != RECORD else None
    if problem is not None:  # a copy of another row's or seed's record
        return problem
    if not search_table_found(record, path.parent):
        return ("an exhaustive_search record without its table (no table field and no "
                "search.csv beside it)")
    return None


def made_by_profile(record: dict[str, Any]) -> str | None:
    """The protocol profile (``paper``, ``quick``, ``smoke``) a record's command named, or
    None (a command without one, or none recorded). A record does not hold its profile
    otherwise (a profile only sets other keys), and ``scripts/reproduce.sh`` always names
    it."""
    command = (record.get("provenance") or {}).get("command")
    try:
        words = shlex.split(command) if isinstance(command, str) else []
    except ValueError:  # unbalanced quotes: not a command this code wrote
        return None
    profiles = [m[1] for word in words if (m := re.fullmatch(r"\+{0,2}profile=(\S+)", word))]
    return profiles[-1] if profiles and profiles[-1] != "null" else None


def set_aside_foreign_records(records_dir: str | os.PathLike,
                              profile: str | None = None) -> list[Path]:
    """For ``scripts/reproduce.sh``, before it skips the runs whose records are published:
    a file in a run's place (:func:`protocol_slot`) that is not that run's finished record
    (unreadable or cut off, not complete, lacking what the analysis reads, another row's
    or seed's, or made by another ``profile``'s protocol) is renamed ``<name>.rejected``
    and said, one line each, so that the run is trained again; else the protocol would
    skip it for good and the tables would leave its row out, or show another protocol's
    run in it. Returns the files set aside."""
    root = Path(records_dir)
    slots = [*root.glob("*.json"), *root.glob("*/seed*.json")] if root.is_dir() else []
    rejected = []
    for path in sorted(slots):
        if protocol_slot(path) is None:  # a file of the user's own: no run stands there
            continue
        try:
            record = read_record(path)
            made_by = made_by_profile(record)
            problem = (f"its status is {record.get('status')!r}"
                       if record.get("status") != "complete" else unusable(record, path)
                       or (f"it was made by profile {made_by}, not {profile}"
                           if profile and made_by not in (None, profile) else None))
        except (OSError, ValueError) as err:
            problem = f"unreadable: {one_line(err)[:200]}"
        if problem is None:
            continue
        aside = path.with_name(path.name + ".rejected")
        try:
            os.replace(path, aside)
        except OSError as err:  # (a read-only folder) the run would be skipped for good
            raise SystemExit(f"{path} is not the record of the run it stands for ({problem}), "
                             f"and could not be set aside ({err.strerror or err}): remove it")
        print(f"{path} is not the record of the run it stands for ({problem}); set aside as "
              f"{aside.name}, the run is made again", file=sys.stderr)
        rejected.append(aside)
    return rejected


#: Where ``scripts/reproduce.sh`` logs its invocations, in the profile's results folder.
SESSIONS = "sessions.json"


def log_session(results_dir: str | os.PathLike, records_dir: str | os.PathLike, profile: str,
                started: float | str, exit_code: int | str, jobs: int | str,
                overrides: str = "") -> Path:
    """Add one invocation of ``scripts/reproduce.sh`` to ``<results_dir>/sessions.json``:
    when it ran, for how long, how it ended, on what machine, and which records it
    published. A protocol cut off when a GPU slot ends goes on in another session,
    elsewhere, so its wall-clock is the sum over sessions; the analysis sums them
    (``index.json``). A log that no longer reads is set aside (``.unreadable``), not lost."""
    started, now = float(started), _dt.datetime.now(_dt.timezone.utc)
    begun = _dt.datetime.fromtimestamp(started, _dt.timezone.utc)
    records = Path(records_dir)
    published = sorted(str(p.relative_to(records)) for p in records.rglob("*.json")
                       if p.stat().st_mtime >= started) if records.is_dir() else []
    path = Path(results_dir) / SESSIONS
    try:
        sessions = read_sessions(path)
    except ValueError:
        path.replace(path.with_name(SESSIONS + ".unreadable"))
        sessions = []
    sessions.append({
        "started": begun.isoformat(timespec="seconds"),
        "ended": now.isoformat(timespec="seconds"),
        "seconds": round((now - begun).total_seconds(), 1), "exit_code": int(exit_code),
        "profile": profile, "jobs": int(jobs), "overrides": overrides, "published": published,
        "provenance": provenance(f"scripts/reproduce.sh {profile}")})
    return write_json_atomic(path, sessions)


def read_sessions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The sessions :func:`log_session` wrote (none when the file is not there); a
    ValueError when it is not such a log."""
    path = Path(path)
    if not path.exists():
        return []
    sessions = json.loads(path.read_text())
    if not isinstance(sessions, list) or not all(isinstance(s, dict) for s in sessions):
        raise ValueError(f"{path} is not a list of sessions")
    return sessions
