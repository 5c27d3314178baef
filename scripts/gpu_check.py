"""Check a GPU machine end to end: ``make gpu-check`` (= ``python3 scripts/gpu_check.py``).

It uses the Python it runs under (a GPU machine's own CUDA build of torch: no ``.venv``
is built, nothing is downloaded) with ``src/`` on the path, and runs, each part a
subprocess with its own time limit:

* ``tests``: the tests that take a device, on ``cuda`` (``pytest --device cuda -m device``:
  basis-layer exactness and gradients in float64, surgery, cost model, sensitivity on
  generated data, training and SIGKILL resume, DDP with NCCL when two GPUs are visible);
* ``smoke``: the whole protocol at smoke scale on CUDA (``scripts/reproduce.sh smoke``:
  training, sensitivity, exhaustive search, speed benchmark, analysis);
* ``paper-epoch``: two epochs of ``profile=paper`` on genuine CIFAR-10 (skipped, and said
  so, when the data is not found: ``--data-root`` or ``CIFAR10_ROOT``): the first pays
  for cuDNN's algorithm search, the second is what the other 29 of a run take;
* ``paper-epoch-graphs``: the same epoch with every step replayed as CUDA graphs
  (``trainer.cuda_graphs=true``), to set its epoch time beside the eager one's;
* ``benchmark``: the layer and model speed benchmark on CUDA (``--quick``, bf16);
* extras, run only when named in ``--parts``: ``benchmark-fused``, the same with
  ``--combine fused`` (the Triton kernel; its files carry
  ``-fused``), to set beside the stacked form and the dense conv;
* ``benchmark-fuse-norm``: the whole model with its basis layers, batch norms and ReLUs
  fused (``--fuse-norm``, files carry ``-fusenorm``), beside the unfused rows.

``tests`` and ``smoke`` take no timing, so they run at the same time, first (a GPU and its
machine's cores take both); each timed part then runs alone. The parts share one time
budget (``--budget-s``, default 300 s: a short GPU slot must get its record back): each
part's limit is the smaller of its own and what is left, and a part that finds the budget
spent is not run, and said so (the check then fails: it did not fit). A part stopped at
its limit is stopped with every process it started (the smoke protocol's runs in the
background too), so none goes on using the GPU while the next part is timed. The record with provenance,
``results/gpu-check-<gpu>.json``, is rewritten after every part (status ``running`` until
the end, and ``passed`` false until then), so a slot that ends mid-check still leaves what
was measured. It ends with one summary line (pass/fail per part). Without CUDA, or with a
budget under 10 s or a folder it cannot write, it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from basisconv.signals import sigterm_stops, stops_let_go  # noqa: E402 (standard library only)

NEEDED = ("hydra", "omegaconf", "tqdm", "pandas", "matplotlib", "pytest", "pytest_timeout")
#: The least time left of the budget in which a part is started (else it is not run).
LEAST_PART_S = 10


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default=str(REPO / "outputs" / "gpu-check"),
                        help="run folders of the check (default outputs/gpu-check)")
    parser.add_argument("--out-dir", default=str(REPO / "results"),
                        help="where the record goes (default results/)")
    parser.add_argument("--data-root", default=os.environ.get("CIFAR10_ROOT", "./data"),
                        help="genuine CIFAR-10 for the paper-profile epoch")
    # the check (issue 10), then extras for the kernel work, run only when named
    parts = ["tests", "smoke", "paper-epoch", "paper-epoch-graphs", "benchmark"]
    extras = ["benchmark-fused", "benchmark-fuse-norm"]
    parser.add_argument("--parts", nargs="+", default=parts, choices=parts + extras)
    parser.add_argument("--budget-s", type=int, default=300,
                        help="seconds for all parts together (default 300)")
    args = parser.parse_args(argv)
    # absolute: the parts run in the repository, this script maybe elsewhere
    for key in ("work_dir", "out_dir", "data_root"):
        setattr(args, key, str(Path(getattr(args, key)).expanduser().absolute()))
    return args


def missing_packages() -> list[str]:
    """The needed packages that do not import here, with why (an import, not a lookup: a
    package whose own dependencies are missing, e.g. omegaconf without PyYAML, counts)."""
    import importlib

    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except ImportError as err:
            missing.append(f"{name} ({err})")
    return missing


def run_parts_together(parts: list[tuple[str, list[str], int]], env: dict,
                       log_dir: Path) -> list[dict]:
    """Start every ``(name, command, limit_s)`` at once and wait for each within its
    limit; each part's output goes to ``<log_dir>/<name>.log``. (The tests and the smoke
    protocol run together: neither is a timing, and a GPU and 16 cores take both, so the
    check fits its few minutes; the timed parts run alone.)"""
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    running = []
    ended: dict[int, tuple[int | None, float]] = {}  # part -> (exit code, seconds)
    # part -> (seconds when its limit was reached, signals sent): stopped without blocking
    # the loop, so another part's end is seen (and timed, and its limit kept) meanwhile
    stopping: dict[int, tuple[float, int]] = {}
    try:
        for name, command, limit_s in parts:
            print(f"== {name} (at most {limit_s} s): {' '.join(command)}", flush=True)
            with open(log_dir / f"{name}.log", "w") as out:
                # its own process group: at the limit every process it started is stopped
                running.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                                                stderr=subprocess.STDOUT,
                                                start_new_session=True))
        while len(ended) < len(parts):
            for i, ((_, _, limit_s), process) in enumerate(zip(parts, running)):
                if i in ended:
                    continue
                seconds = time.perf_counter() - start
                if i in stopping:
                    at, sent = stopping[i]
                    due = at + sum(grace for _, grace in STOP_SIGNALS[:sent])  # the next step's
                    # gone when its whole group is: a process that outlived the top one's
                    # exit on SIGTERM still gets SIGKILL
                    gone = process.poll() is not None and not group_alive(process)
                    if gone or (seconds >= due and sent == len(STOP_SIGNALS)):
                        ended[i] = (None, at)  # (one that outlives SIGKILL's grace is left)
                    elif seconds >= due:
                        stopping[i] = (at, sent + signal_group(process, STOP_SIGNALS[sent][0]))
                elif process.poll() is not None:
                    ended[i] = (process.returncode, seconds)
                elif seconds >= limit_s:
                    stopping[i] = (seconds, signal_group(process, STOP_SIGNALS[0][0]))
            time.sleep(0.2)
    except BaseException:  # the check stopped (Ctrl-C, SIGTERM): its parts stop with it
        stop_all([p for i, p in enumerate(running) if i not in ended])
        raise
    return [part_result(name, *ended[i], log_dir / f"{name}.log")
            for i, (name, _, _) in enumerate(parts)]


def group_alive(process: subprocess.Popen) -> bool:
    """Whether any process of the part's process group is left."""
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_all(processes: list[subprocess.Popen]) -> None:
    """Each part's whole group stopped as at its limit (:data:`STOP_SIGNALS`), at once; a
    second Ctrl-C or SIGTERM meanwhile is let go (it would skip the SIGKILL)."""
    with stops_let_go():
        for sig, grace in STOP_SIGNALS:
            for process in processes:
                signal_group(process, sig)
            end = time.monotonic() + grace
            while time.monotonic() < end and any(
                    process.poll() is None or group_alive(process) for process in processes):
                time.sleep(0.1)


def part_result(name: str, code: int | None, seconds: float, log: Path) -> dict:
    status = "pass" if code == 0 else "fail"
    tail = log.read_text(errors="replace").splitlines()[-15:]
    if status == "fail":
        print("\n".join(tail), flush=True)
    return {"part": name, "status": status, "exit_code": code, "seconds": round(seconds, 1),
            "timed_out": code is None, "log": str(log), "output_tail": tail}


#: How a part past its limit is stopped: SIGTERM to its whole process group (runs keep
#: their checkpoints), SIGKILL to what is left after 10 s, given up on 5 s later.
STOP_SIGNALS = ((signal.SIGTERM, 10), (signal.SIGKILL, 5))


def signal_group(process: subprocess.Popen, sig: int) -> int:
    """``sig`` to the part's whole process group; 1 (a signal sent, or none left to take it)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    return 1


#: Seconds one device test may take on the GPU (all of them took 78 s on an H200, 2026-11-30).
TEST_TIMEOUT_S = 120

#: The parts that take no timing: they run at once, before the timed ones (each alone).
UNTIMED = ("tests", "smoke")


def part_command(name: str, args: argparse.Namespace, work: Path) -> tuple[list[str], int]:
    """A part's command and its own time limit in seconds."""
    if name == "tests":
        # a test stuck past 120 s fails with its name and stack, and the others go on (the
        # part's own limit stopped a stuck test with nothing but progress dots to show); -v
        # names each test as it starts, so a part stopped at its limit shows how far it got
        return [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--device",
                "cuda", "-m", "device", f"--timeout={TEST_TIMEOUT_S}"], 240
    if name == "smoke":
        return ["bash", "scripts/reproduce.sh", "smoke"], 300
    if name.startswith("paper-epoch"):
        graphs = ["trainer.cuda_graphs=true"] if name == "paper-epoch-graphs" else []
        return [sys.executable, "scripts/train.py", "profile=paper", "experiment=baseline",
                "trainer.epochs=2", "logger=none", "trainer.resume=false",
                f"data.root={args.data_root}", "trainer.progress=false",
                f"hydra.run.dir={work / name}", *graphs], 240
    # the fused kernel compiles and autotunes per shape: the two sizes the goal names
    fused = {"benchmark-fused": ["--combine", "fused", "--fractions", "0.25", "0.5"],
             "benchmark-fuse-norm": ["--fuse-norm", "--parts", "model",
                                     "--fractions", "0.25", "0.5"]}.get(name, [])
    return [sys.executable, "scripts/benchmark_layers.py", "--device", "cuda", "--amp", "bf16",
            "--quick", *fused, "--out-dir", str(work / "benchmark")], (
        600 if name == "benchmark-fused" else 300)


def paper_epoch_details(run_dir: Path) -> dict:
    from basisconv.records import read_record

    try:
        epochs = read_record(run_dir / "run.json")["epochs"]
    except (OSError, ValueError, KeyError):
        return {}
    if not epochs:
        return {}
    # epoch_seconds: the first epoch's training time (the field records before the second
    # epoch was added hold); the second's, and its evaluation, without cuDNN's search
    details = {"epoch_seconds": epochs[0]["epoch_seconds"],
               "eval_seconds": epochs[0]["eval_seconds"],
               "test_accuracy": epochs[-1]["test_accuracy"]}
    if len(epochs) > 1:
        details.update(second_epoch_seconds=epochs[1]["epoch_seconds"],
                       second_eval_seconds=epochs[1]["eval_seconds"])
    return details


def environment_problem() -> str | None:
    """Why the Python this runs under cannot run the check, as one line naming the fix
    (torch does not import, no CUDA device is visible, a needed package does not import);
    ``None`` when it can."""
    try:
        import torch
    except ImportError as err:  # not "no CUDA device", which sends the user to the wrong fix
        return (f"gpu-check: torch does not import under {sys.executable} ({err}); run it with "
                f"the Python of the GPU machine's CUDA torch (GPU_PYTHON=... make gpu-check)")
    if not torch.cuda.is_available():
        return (f"gpu-check: no CUDA device is visible to {sys.executable} (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda}); run it on a GPU machine")
    missing = missing_packages()
    if missing:
        return (f"gpu-check: {'; '.join(missing)}: not importable in {sys.executable}; install "
                f"the pins of requirements.txt without torch (or carry their wheels, made by make "
                f"gpu-wheels, pip install --no-index --no-deps --target DIR them, and put DIR on "
                f"PYTHONPATH: docs/gpu.md)")
    return None


def arguments_problem(args: argparse.Namespace) -> str | None:
    """Why the check cannot run with these arguments, as one line naming the fix (asked
    once :func:`environment_problem` found none); ``None`` when it can. Said before any part
    runs: a budget under :data:`LEAST_PART_S` ran no part and recorded the check as failed,
    and a folder that cannot be written ended in a traceback (found in the scripts' audit)."""
    from basisconv.bench import flag_below_minimum
    from basisconv.records import unwritable_folder

    below = flag_below_minimum((("--budget-s", args.budget_s, LEAST_PART_S,
                                 "no part is started with less left"),))
    if below:
        return f"gpu-check: {below}"
    for flag, folder in (("--out-dir", args.out_dir), ("--work-dir", args.work_dir)):
        if blocker := unwritable_folder(folder):
            return f"gpu-check: {flag} {folder} cannot be written ({blocker}); give another folder"
    return None


def part_groups(names: list[str]) -> list[list[str]]:
    """The parts in the order they run: the untimed ones together first, then each timed
    part alone (a group of none, when no untimed part is named, is dropped)."""
    groups = [[n for n in names if n in UNTIMED]] + [[n] for n in names if n not in UNTIMED]
    return list(filter(None, groups))


def not_run(group: list[str], budget_s: int) -> list[dict]:
    """The results of a group the budget left no time for: not run is not passed (the
    check did not fit its budget)."""
    results = []
    for name in group:
        print(f"== {name}: not run (the {budget_s} s budget is spent)", flush=True)
        results.append({"part": name, "status": "not run", "reason":
                        f"the {budget_s} s budget was spent (--budget-s)"})
    return results


def run_group(group: list[str], args: argparse.Namespace, work: Path, env: dict,
              limit: Callable[[int], int]) -> list[dict]:
    """One group's parts run (:func:`run_parts_together`), each within ``limit(its own
    limit)``, and their results; a paper-epoch part is skipped, and said so, when
    CIFAR-10 is not found, and run in a fresh run folder when it is."""
    from basisconv.cifar10_location import find_cifar10
    from basisconv.errors import DatasetError

    if group[0].startswith("paper-epoch"):
        try:
            find_cifar10(args.data_root)
        except DatasetError as err:
            print(f"== {group[0]}: skipped ({err})", flush=True)
            return [{"part": group[0], "status": "skipped", "reason": str(err)}]
        # a fresh run folder: an earlier check's run.json (kept by trainer.resume=false
        # when this one stops before its first epoch) would lend it its epoch times
        shutil.rmtree(work / group[0], ignore_errors=True)
    commands = [(name, *part_command(name, args, work)) for name in group]
    results = run_parts_together([(name, command, limit(own)) for name, command, own in commands],
                                 env, work)
    for result in results:
        if result["part"].startswith("paper-epoch"):
            result.update(paper_epoch_details(work / result["part"]))
    return results


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    problem = environment_problem() or arguments_problem(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from basisconv.records import (RunRecord, device_name, provenance, script_command,
                                   write_record)

    work = Path(args.work_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "WANDB_MODE": "disabled", "PY": sys.executable, "OUTPUTS": str(work / "outputs")}
    parts: list[dict] = []
    deadline = time.perf_counter() + args.budget_s
    prov = provenance(script_command(__file__, argv))
    path = Path(args.out_dir) / f"gpu-check-{device_name(prov['hardware'])}.json"

    def write(status: str) -> None:  # passed: a check that ran to its end, its parts passing
        write_record(path, RunRecord("gpu_check", vars(args), prov, status,
                                     {"parts": parts, "passed": status == "complete"}))

    def limit(own: int) -> int:  # a part's own limit, or what is left of the budget
        return int(min(own, deadline - time.perf_counter()))

    try:
        with sigterm_stops():
            for group in part_groups(args.parts):  # the record written between them
                # before the first part too: a slot killed (SIGKILL) during it keeps a
                # record saying the check ran, with the parts done so far
                write("running")
                if deadline - time.perf_counter() < LEAST_PART_S:
                    parts.extend(not_run(group, args.budget_s))
                else:
                    parts.extend(run_group(group, args, work, env, limit))
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (a slot ending): what ran is kept
        signum = getattr(err, "signum", signal.SIGINT)
        write("stopped")
        print(f"gpu-check stopped by {signal.Signals(signum).name}; its parts were stopped "
              f"too; record {path}", file=sys.stderr)
        return 128 + signum
    passed = all(p["status"] in ("pass", "skipped") for p in parts)
    write("complete" if passed else "failed")
    summary = ", ".join(f"{p['part']} {p['status']}" for p in parts)
    print(f"gpu-check {'PASSED' if passed else 'FAILED'} on {prov['hardware']['gpu']}: "
          f"{summary}; record {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
