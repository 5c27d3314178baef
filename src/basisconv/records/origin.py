"""Where a result comes from: the code's commit (and whether the work tree was clean),
the machine, the package versions, the date and the command that made it. Every record
and benchmark table carries it, so a number can be traced to a run."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable


#: The code and configs: the whole work tree but the top-level ``results/`` (see git_commit).
_CODE = ["--", ":(top)", ":(top,exclude)results"]
#: Where a new file, not yet added, can change what a run computes: the package, scripts,
#: configs, tests and the top-level build files. Elsewhere an untracked file is what runs
#: wrote (``RESULTS_DIR=myres`` or a run folder inside the checkout), not code.
_NEW_CODE = ["--", ":(top)src", ":(top)scripts", ":(top)configs", ":(top)tests",
             *(f":(top,glob){name}" for name in ("*.py", "*.toml", "*.cfg", "*.txt", "*.yml",
                                                  "*.yaml", "Makefile"))]


#: git's setting that keeps a read from writing: ``git status`` and ``git diff`` otherwise
#: refresh the repository's index, under ``.git/index.lock``, whenever a file's times
#: changed; a run killed meanwhile (Ctrl-C twice, a kill, a torchrun peer's SIGKILL) left
#: that lock in the user's repository, and their next ``git commit`` failed on it ("Another
#: git process seems to be running"; found when a test's killed run left one here), and a
#: commit made while a run started could fail so too. The environment's form of
#: ``--no-optional-locks`` (git 2.15+): a git older than that refused the option (every
#: record said commit None, found in review) and ignores the variable.
READ_ONLY = {"GIT_OPTIONAL_LOCKS": "0"}


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
        return subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **READ_ONLY},
                              capture_output=True, check=True, timeout=10).stdout

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
    """The machine a number was measured on: CPU model and threads, GPU if any, whether
    float32 may run in TF32, and the number of processes when more than one
    (``torchrun``)."""
    # imported here, not with the module: the records are read and written without torch
    # (scripts/reproduce.sh's checks and its session log start in a fraction of a second)
    import torch

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
        # Whether float32 matmuls and cuDNN convs may round their inputs to TF32 (10 bits of
        # mantissa): on an Ampere or later GPU an fp32 step's speed and rounding depend on
        # it (torch's defaults: convs yes, matmuls no). Said on every device (the flags
        # exist on a CPU too); the benchmarks leave them as the caller set them
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
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


#: :func:`hardware`'s flags that say whether float32 may run in TF32
TF32_FLAGS = ("cuda_matmul_allow_tf32", "cudnn_allow_tf32", "float32_matmul_precision")


def timing_hardware(hardware: dict, device: str | None = None, amp: str = "none") -> dict:
    """What of ``hardware`` changes a time measured on ``device`` (as for
    :func:`measured_on_cpu`) at ``trainer.amp`` ``amp``: the CPU and its instruction set,
    the GPU, CUDA and cuDNN, and for float32 on the GPU the TF32 flags the record has
    (elsewhere they change nothing that runs, and a record from before they were kept has
    none: so keys and comparisons of those are as they were). The one list of them: the
    layer timings' cache key, a resumed run's warning."""
    fields = {k: hardware.get(k) for k in ("cpu", "cpu_capability", "gpu", "cuda", "cudnn")}
    if tf32_applies(hardware, device, amp):
        fields.update({k: hardware[k] for k in TF32_FLAGS if k in hardware})
    return fields


def tf32_applies(hardware: dict, device: str | None = None, amp: str | None = "none") -> bool:
    """Whether the TF32 flags change what runs on ``device`` (as for :func:`measured_on_cpu`)
    at ``trainer.amp`` ``amp``: float32 on a GPU (bf16 and fp16 do not compute in float32,
    a CPU has no TF32)."""
    return amp == "none" and not measured_on_cpu(hardware, device)


def tf32_name(hardware: dict, device: str | None = None, amp: str | None = "none") -> str | None:
    """Whether a float32 GPU measurement could run in TF32, as tables say it: ``on`` (cuDNN's
    convolutions and the matmuls both), ``convs`` (cuDNN's convolutions alone: torch's
    default), ``matmuls`` (the matmuls alone), ``off`` (neither); "-" for a record from
    before :func:`hardware` kept the flags (commit 1c3199a). ``None`` where they change
    nothing that runs (:func:`tf32_applies`). The fused Triton convolution follows cuDNN's
    flag too (``kernels/triton_conv.py``)."""
    if not tf32_applies(hardware, device, amp):
        return None
    convs, matmuls = hardware.get("cudnn_allow_tf32"), hardware.get("cuda_matmul_allow_tf32")
    if not (isinstance(convs, bool) and isinstance(matmuls, bool)):
        return "-"
    return {(True, True): "on", (True, False): "convs", (False, True): "matmuls",
            (False, False): "off"}[convs, matmuls]


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


def threads_name(threads: int | str | None) -> str:
    """A measurement's CPU threads as plots and tables say them: ``1 thread``,
    ``2 threads`` (a title once said "1 threads")."""
    return f"{threads} thread{'' if threads == 1 else 's'}"


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
    (a job's command without ``--config-dir`` fails, and without ``--config-name`` runs
    another config, silently)."""
    flags, words = [], iter(argv)
    for word in words:
        if word in ("-m", "--multirun") or not word.startswith("-"):
            continue  # (an override: the job's own are Hydra's task overrides)
        flags.append(word)
        if word in HYDRA_VALUE_FLAGS:
            flags.append(next(words, ""))
    return flags


def script_command(script: str, argv: list[str] | None = None) -> str:
    """``python scripts/<name> <arguments>`` of an entry point, quoted as a shell reads it
    back (``" ".join`` recorded ``out_dir='my results'`` as two words, a command that does
    not rerun; found in review): ``script`` is its ``__file__``, ``argv`` its arguments (by
    default this process's). The script's path is the checkout's, wherever it ran from."""
    return shlex.join(["python", f"scripts/{Path(script).name}",
                       *(sys.argv[1:] if argv is None else argv)])


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


