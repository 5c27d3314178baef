"""The conda recipe (GPU machines) and the pip pins (CPU machines, CI) must not drift; the
GPU scripts say at once when there is no GPU."""

import json
import shlex
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml


def pins(lines):
    found = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s#]+)", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_environment_yml_matches_requirements(repo):
    requirements = pins((repo / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((repo / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = pins(pip_section)
    assert requirements["torch"] == "2.13.0"  # the CPU build; unpinned pulls CUDA packages
    assert set(requirements) == set(conda)
    for name, version in requirements.items():
        assert conda[name] == version, name


def test_the_test_extra_names_every_pytest_plugin_the_suite_is_configured_for(repo):
    """Found in review: ``pip install -e .[test]`` then ``pytest`` ran without the 900 s
    timeout ``pyproject.toml`` sets (pytest-timeout was not in the extra) and without
    ``-n``; every pytest package ``requirements.txt`` pins is in the extra."""
    import re
    import tomllib

    extra = tomllib.loads((repo / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["test"]
    named = {re.split(r"[<>=!~ ]", spec)[0].lower() for spec in extra}
    plugins = {name for name in pins((repo / "requirements.txt").read_text().splitlines())
               if name.startswith("pytest")}
    assert plugins >= {"pytest", "pytest-timeout", "pytest-xdist"} and plugins <= named


def test_the_test_extra_names_the_hydra_plugins_the_suite_composes(repo):
    """Found in review: ``pip install -e .[test]`` then ``pytest`` failed
    test_slurm_launcher_composes ("Could not load 'hydra/launcher/submitit_slurm'"): a
    Hydra plugin is never imported, so the import check below does not see it; every one
    ``requirements.txt`` pins is in the extra."""
    import tomllib

    extra = tomllib.loads((repo / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["test"]
    named = {re.split(r"[<>=!~ ]", spec)[0].lower() for spec in extra}
    plugins = {name for name in pins((repo / "requirements.txt").read_text().splitlines())
               if name.startswith("hydra-") and name != "hydra-core"}
    assert plugins == {"hydra-submitit-launcher"} and plugins <= named


#: A release of a dependency that ``pyproject.toml``'s range once admitted and that the
#: package fails on (found in review, each in a venv of these lower bounds, running
#: tests/test_analysis.py and tests/test_speed_report.py): pandas 2.0 has no DataFrame.map
#: (every LaTeX table and the speed report: AttributeError); pandas' Styler refuses jinja2
#: older than 3.1.2 (ImportError); matplotlib 3.7.0 and 3.7.1 raise StopIteration
#: plotting a series with no finite value (the analysis' plots, 64 tests).
FAILING_RELEASES = {"pandas": "2.0.3", "jinja2": "3.1.1", "matplotlib": "3.7.1"}


def test_the_dependency_ranges_admit_no_release_the_package_fails_on(repo):
    """``pip install -e .`` keeps a user's installed release where the range admits it
    (a GPU machine's conda environment, say); the analysis then failed at its first table
    or plot, after the runs. Each range refuses the release found failing, and admits
    the pinned one."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    ranges = {Requirement(spec).name.lower(): Requirement(spec).specifier
              for spec in project["dependencies"]}
    pinned = pins((repo / "requirements.txt").read_text().splitlines())
    for name, failing in FAILING_RELEASES.items():
        assert not ranges[name].contains(failing), (name, str(ranges[name]))
        assert ranges[name].contains(pinned[name]), (name, str(ranges[name]))


def test_every_package_the_code_imports_is_declared_and_pinned(repo):
    """Left at stop 70: numpy (imported by the package), PyYAML and traitlets (by the
    tests) were installed only as other packages' dependencies, so an upgrade of those
    could drop them. Every third-party module imported by src/ and scripts/ is a
    dependency in pyproject.toml, every one the tests import a dependency or in the test
    extra, and each is pinned in requirements.txt (torchvision and triton are optional:
    imported where present)."""
    import ast
    import importlib.metadata
    import tomllib

    def normal(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    distributions = importlib.metadata.packages_distributions()

    def imported(*folders):
        names = set()
        for path in (p for folder in folders for p in (repo / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.partition(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names.add(node.module.partition(".")[0])
        return {normal(d) for name in names - set(sys.stdlib_module_names)
                for d in distributions.get(name, [])} - {"basisconv"}

    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    declared = {normal(re.split(r"[<>=!~ \[]", spec)[0]) for spec in project["dependencies"]}
    extra = {normal(re.split(r"[<>=!~ \[]", spec)[0])
             for spec in project["optional-dependencies"]["test"]}
    optional = {"torchvision", "triton"}
    pinned = {normal(name) for name in pins((repo / "requirements.txt").read_text().splitlines())}
    package, tests = imported("src", "scripts"), imported("tests")
    assert package - declared - optional == set()
    assert tests - declared - extra - optional == set()
    assert package | tests <= pinned


def test_a_venv_cut_off_before_pip_was_set_up_is_built_again(repo, tmp_path):
    """Found in review: the Makefile built .venv only where its python was missing, so a
    ``make env`` stopped while venv set up pip left a python without pip, and every later
    target failed with "No module named pip" until ``make clean``."""
    venv = tmp_path / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    subprocess.run(["bash", "-c", venv_line(repo, venv, sys.executable)], check=True,
                   timeout=300)
    assert subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"],
                          capture_output=True, timeout=60).returncode == 0


def venv_line(repo, venv, python):
    """The Makefile's line that makes ``venv`` (from ``python``) when it needs making, as
    make gives it to the shell."""
    (line,) = [x.strip() for x in (repo / "Makefile").read_text().splitlines()
               if "-m venv" in x and not x.lstrip().startswith("#")]
    for name, value in (("$(VENV_PY)", f"{venv}/bin/python"), ("$(PYTHON)", str(python)),
                        ("$(VENV)", str(venv)), ("$$", "$")):
        line = line.replace(name, value)
    return line


OLD_PYTHON = """#!/bin/sh
# a Python 3.10 as the Makefile's checks see it (it has pip); what else it is asked is logged
case "$*" in
  "-V") echo "Python 3.10.12"; exit 0;;
  "-m pip --version") exit 0;;
  "-c import sys; sys.exit(sys.version_info < (3, 11))") exit 1;;
esac
echo "$*" >> "$(dirname "$0")/asked.txt"
exit 1
"""


def test_a_python_older_than_3_11_is_one_line_naming_python_before_any_venv(repo, tmp_path):
    """Found in review: ``make test`` where python3 is 3.10 (Ubuntu 22.04) made .venv with
    it and stopped at pip's "No matching distribution found for pandas==3.1.1", naming
    neither the Python nor the fix; now one line naming PYTHON=, before .venv is made."""
    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    python.write_text(OLD_PYTHON)
    python.chmod(0o755)
    venv = tmp_path / ".venv"
    result = subprocess.run(["make", "--no-print-directory", "env", f"VENV={venv}",
                             f"PYTHON={python}"], cwd=repo, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (f"make: PYTHON={python} is Python 3.10.12; the pinned packages need Python "
            f"3.11+: name one, e.g. make test PYTHON=python3.11") in result.stderr.splitlines()
    assert not venv.exists() and not (python.parent / "asked.txt").exists()


def test_a_venv_of_a_python_older_than_3_11_is_built_again(repo, tmp_path):
    """Found in review: a .venv made by Python 3.10 (``make test`` where python3 is 3.10,
    or by hand) was kept, as it has pip, so ``make test PYTHON=python3.11`` failed at the
    same pin again until ``make clean``; now it is made again from PYTHON."""
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(OLD_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    subprocess.run(["bash", "-c", venv_line(repo, venv, sys.executable)], check=True,
                   timeout=300)
    version = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == str(tuple(sys.version_info[:2]))
    assert not (venv / "bin" / "asked.txt").exists()


def test_the_readme_states_the_python_the_package_requires(repo):
    """A fresh machine's Python that the README allows must install the package (3.11.4
    was required while the README said 3.11+: Debian 12's 3.11.2 failed in make)."""
    required = re.search(r'requires-python = ">=([\d.]+)"',
                         (repo / "pyproject.toml").read_text()).group(1)
    stated = re.search(r"with Python ([\d.]+)\+", (repo / "README.md").read_text()).group(1)
    assert stated == required
    # and the Makefile refuses (and rebuilds a .venv of) a Python older than that one
    checked = set(re.findall(r"sys\.version_info < \((\d+), (\d+)\)",
                             (repo / "Makefile").read_text()))
    assert checked == {tuple(required.split("."))}


#: What a GPU machine's own python3 has (docs/gpu.md, step 1), with what these require.
GPU_PYTHON_HAS = ("torch", "numpy", "pandas", "matplotlib", "pytest", "triton")


def test_the_gpu_wheels_carry_all_a_gpu_machines_python_lacks(repo):
    """Found in review: ``make gpu-wheels`` left out PyYAML, which omegaconf (and so every
    script, and the tests' collection) imports, and which none of torch, numpy, pandas,
    matplotlib, pytest and triton brings. What the package needs (wandb is optional) and
    the GPU scripts' pytest-timeout, with everything those require, is either on such a
    machine or among the wheels the target makes."""
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement

    def normal(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    def closure(names):
        found, todo = set(), list(names)
        while todo:
            name = normal(todo.pop())
            if name in found:
                continue
            found.add(name)
            for spec in importlib.metadata.requires(name) or []:
                requirement = Requirement(spec)
                if not requirement.marker or requirement.marker.evaluate({"extra": ""}):
                    todo.append(requirement.name)
        return found

    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    needed = {re.split(r"[<>=!~ \[]", spec)[0] for spec in project["dependencies"]}
    needed = needed - {"wandb"} | {"pytest-timeout", "PyYAML"}
    recipe = (repo / "Makefile").read_text().partition("\ngpu-wheels:")[2].partition("\n\n")[0]
    carried = {normal(name) for group in re.findall(r"\^\(?([A-Za-z0-9_.|-]+)\)?==", recipe)
               for name in group.split("|")}
    carried |= {normal(name) for name in re.findall(r"\s([A-Za-z0-9_.-]+)==\d", recipe)}
    assert closure(needed) - closure(GPU_PYTHON_HAS) - carried == set()


def test_the_tests_see_pythonpath_as_absolute_paths():
    """The runs the tests start in their own folders find what PYTHONPATH names (the next
    test runs this one under a relative PYTHONPATH)."""
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    assert all(os.path.isabs(entry) for entry in entries if entry), entries


def test_a_relative_pythonpath_reaches_the_runs_the_tests_start_elsewhere(repo):
    """Found in review: on a GPU machine the package is not installed, and docs/gpu.md's
    ``PYTHONPATH=/tmp/site:src`` is relative: every run a test started in its own folder
    (the killed-run test's train.py, in tmp_path) failed with "No module named
    'basisconv'", which the second GPU slot saw as that test waiting 300 s for a record.
    tests/conftest.py makes the entries absolute for the tests' subprocesses."""
    test = "tests/test_environment.py::test_the_tests_see_pythonpath_as_absolute_paths"
    relative = os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             test], cwd=repo, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": relative})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [["scripts/gpu_check.py"], ["scripts/gpu_speed.sh"]],
                         ids=["gpu-check", "gpu-speed"])
def test_gpu_scripts_say_in_one_line_that_there_is_no_cuda_and_exit_2(repo, command):
    program = [sys.executable] if command[0].endswith(".py") else ["bash"]
    result = subprocess.run([*program, *command], cwd=repo, capture_output=True, text=True,
                            env={**os.environ, "PY": sys.executable},
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0], lines


@pytest.mark.parametrize("script", ["gpu_check.py", "gpu_speed.sh"])
def test_gpu_scripts_say_in_one_line_that_torch_does_not_import(repo, tmp_path, script):
    """A Python without torch (python3 on a machine whose CUDA torch lives elsewhere) once
    gave a traceback (and then, from gpu_speed.sh, "no CUDA device is visible", which is
    not what is wrong)."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')  # no site-packages
    python.chmod(0o755)
    command = [str(python)] if script.endswith(".py") else ["bash"]
    result = subprocess.run([*command, f"scripts/{script}"], cwd=repo, capture_output=True,
                            text=True, env={**os.environ, "PY": str(python)}, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "torch does not import" in lines[0], lines
    assert "No module named 'torch'" in lines[0]
    assert "GPU_PYTHON=" in lines[0]  # found in review: `make gpu-speed PY=...` has no effect


@pytest.mark.parametrize("variable", ["BUDGET", "STEP_LIMIT"])
def test_gpu_speed_refuses_a_budget_or_limit_that_is_not_whole_seconds(repo, variable):
    """BUDGET=10m once failed the budget's test at every step ("integer expression
    expected") and ran every step, the slot's budget ignored."""
    result = subprocess.run(["bash", "scripts/gpu_speed.sh", "quick"], cwd=repo,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PY": sys.executable, variable: "10m"})
    assert result.returncode == 2, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines == [f"gpu-speed: {variable}=10m: give whole seconds (e.g. {variable}=600)"]


#: The steps scripts/gpu_speed.sh runs (a step added there is counted here).
GPU_SPEED_STEPS = 34


def test_gpu_speed_reads_its_budget_in_base_10(repo, tmp_path):
    """Found in review: BUDGET=0900 was a bad octal number to bash, every step ended at the
    budget's arithmetic, nothing ran, and the script exited 0."""
    done = fake_gpu_speed(repo, tmp_path, "echo h200; exit 0", BUDGET="0900",
                          STEP_LIMIT="0300")
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0 and "value too great" not in err, out + err
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert sum("scripts/benchmark_" in call for call in calls) == GPU_SPEED_STEPS, calls


def test_gpu_speeds_training_records_name_their_warmup_as_the_benchmarks_own_names_do(
        repo, tmp_path):
    """Found in review: its records (``--warmup 10``) were named ``...-s60.json``, the name
    ``benchmark_train.py --steps 60`` gives a run at the default 3 warm-up steps, which then
    replaced one of its records with a step the speed report compares on other terms."""
    from basisconv.bench.throughput_options import ThroughputOptions

    done = fake_gpu_speed(repo, tmp_path, "echo h200; exit 0")
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, out + err
    trains = [call.split() for call in (tmp_path / "calls.txt").read_text().splitlines()
              if "benchmark_train.py" in call]
    assert trains
    for call in trains:
        warmup, steps = (int(call[call.index(flag) + 1]) for flag in ("--warmup", "--steps"))
        named = ThroughputOptions(warmup=warmup, steps=steps).tag  # e.g. -w10-s60
        assert call[call.index("--out") + 1].endswith(f"{named}.json"), call


FAKE_GPU_PY = """#!/usr/bin/env bash
# a GPU machine's python3 as gpu_speed.sh sees it: CUDA there, the package probe answered
# as the test says, and each step logged ({{calls}}) with its pid, then sleeping as long as
# STEP_SLEEP says
case "$*" in
  "-c import torch") exit 0;;
  *torch.cuda.is_available*) exit 0;;
  *"device_name(hardware())"*) {probe};;
esac
echo "$$ $*" >> {calls}
if [ -n "${{STEP_KILLED:-}}" ]; then kill -KILL $$; fi
exec sleep "${{STEP_SLEEP:-0}}"
"""


def fake_gpu_speed(repo, tmp_path, probe, mode="quick", **env):
    """scripts/gpu_speed.sh in ``mode``, copied into ``tmp_path`` (its results/ is then
    there), with a stand-in python; returns the process, started."""
    (tmp_path / "scripts").mkdir(exist_ok=True)
    (tmp_path / "scripts" / "gpu_speed.sh").write_text(
        (repo / "scripts" / "gpu_speed.sh").read_text())
    python = tmp_path / "python"
    python.write_text(FAKE_GPU_PY.format(probe=probe, calls=tmp_path / "calls.txt"))
    python.chmod(0o755)
    return subprocess.Popen(["bash", str(tmp_path / "scripts" / "gpu_speed.sh"), mode],
                            env={**os.environ, "PY": str(python), **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def test_gpu_speeds_kernels_mode_tests_the_kernels_on_cuda_then_times_them(repo, tmp_path):
    """The first minutes of a slot for issue 13: the kernels' device tests first (a kernel
    that does not compile there would otherwise show as a slow step), then the graphed
    dense step and the folded kernels' steps, each profiled, and the whole model."""
    done = fake_gpu_speed(repo, tmp_path, "echo h200; exit 0", mode="kernels")
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, out + err
    calls = [call.split(" ", 1)[1] for call in (tmp_path / "calls.txt").read_text().splitlines()]
    assert calls[0].startswith("-m pytest --device cuda -m device") and calls[0].endswith(
        "tests/test_fused_norm_kernels.py tests/test_kernels.py tests/test_auto_norm.py")
    assert "--timeout=120" in calls[0] and " -v " in calls[0]  # (as gpu_check's, below)
    trains = [call for call in calls if "benchmark_train.py" in call]
    assert len(trains) == 6 and "--basis-size" not in trains[0]
    assert all("--cuda-graphs" in call and "--profile" in call for call in trains[:4])
    assert sum("--combine fused --fuse-norm" in call for call in trains) == 3
    assert "--cuda-graphs" in trains[5] and "--combine auto --fuse-norm" in trains[5]
    layers = [call for call in calls if "benchmark_layers.py" in call]
    assert len(layers) == 3 and all("--fuse-norm --combine fused" in call for call in layers[:2])
    assert "--fuse-norm --combine auto" in layers[2] and "--parts" not in layers[2]
    assert len(calls) == 10
    unknown = subprocess.run(["bash", "scripts/gpu_speed.sh", "kernel"], cwd=repo,
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == ("unknown mode 'kernel': use full, quick or kernels "
                                      "(--help: what each runs)")


@pytest.mark.parametrize("option", ["--help", "-h"])
def test_gpu_speeds_help_is_its_header_and_runs_no_python(repo, tmp_path, option):
    """Found in review: ``scripts/gpu_speed.sh --help`` said "unknown mode '--help'" and
    exited 2, so what each mode runs, and the variables it reads, could be read only in the
    script. The help is the header comment, given before any Python (or GPU) is looked for,
    from any folder."""
    result = subprocess.run(["bash", str(repo / "scripts" / "gpu_speed.sh"), option],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PY": str(tmp_path / "no-python")})
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("The GPU speed measurements behind docs/speed.md")
    assert "  scripts/gpu_speed.sh [quick|full|kernels]" in lines[2]
    assert all(word in result.stdout for word in ("STEP_LIMIT", "BUDGET", "OUT_DIR", "PY"))
    assert not any(line.startswith(("#", "set -")) for line in lines)


def test_gpu_speed_names_its_folder_by_the_gpu_alone_and_stops_at_a_missing_package(
        repo, tmp_path):
    """Found in review: a warning torch printed while the GPU's name was read became part
    of the output folder's name; and without the carried wheels (omegaconf) the probe,
    which imported one module, passed, and every step then failed alone."""
    warned = tmp_path / "warned"
    warned.mkdir()
    done = fake_gpu_speed(repo, warned, "echo \"UserWarning: Can't initialize NVML\" >&2; "
                                        "echo h200; exit 0")
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, out + err
    assert [p.name for p in (warned / "results").iterdir()] == ["gpu-h200"]
    assert len((warned / "calls.txt").read_text().splitlines()) == GPU_SPEED_STEPS
    bare = tmp_path / "bare"
    bare.mkdir()
    refused = fake_gpu_speed(repo, bare, "echo \"ModuleNotFoundError: No module named "
                                         "'omegaconf'\" >&2; exit 1")
    out, err = refused.communicate(timeout=120)
    assert refused.returncode == 2 and not (bare / "calls.txt").exists()
    assert err.strip().splitlines() == [
        "gpu-speed: the package does not import under " + str(bare / "python") +
        " (ModuleNotFoundError: No module named 'omegaconf'); install requirements.txt "
        "without torch, or carry wheels (make gpu-wheels) and put them on PYTHONPATH"]
    # found in review: an output folder that cannot be made was not checked, so every step
    # "failed" (a line a step, each naming a log that does not exist)
    (tmp_path / "a-file").write_text("")
    unwritable = fake_gpu_speed(repo, bare, "echo h200; exit 0",
                                OUT_DIR=str(tmp_path / "a-file" / "x"))
    out, err = unwritable.communicate(timeout=120)
    assert unwritable.returncode == 2 and not (bare / "calls.txt").exists()
    assert err.strip().splitlines() == [
        f"gpu-speed: cannot write {tmp_path / 'a-file' / 'x'}/logs; set OUT_DIR to a folder "
        f"that can be written"]


def test_gpu_speed_stopped_stops_its_running_step(repo, tmp_path):
    """Found in review: timeout runs each step in a process group of its own, so a SIGTERM
    to the script (a slot ending) left the step running on the GPU."""
    import signal
    import time

    started = fake_gpu_speed(repo, tmp_path, "echo h200; exit 0", STEP_SLEEP="60")
    calls = tmp_path / "calls.txt"
    deadline = time.monotonic() + 60
    # a whole line: the shell creates the file, then writes it
    while (not (calls.exists() and calls.read_text().endswith("\n"))
           and time.monotonic() < deadline):
        time.sleep(0.1)
    step = int(calls.read_text().split()[0])
    os.killpg(started.pid, signal.SIGTERM)
    out, err = started.communicate(timeout=60)
    assert started.returncode == 143, out + err
    assert "gpu-speed: stopped" in err
    time.sleep(0.5)
    stat = Path(f"/proc/{step}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1][0] == "Z"
    assert len(calls.read_text().splitlines()) == 1  # no later step started


@pytest.fixture
def gpu_check(load_script):
    """scripts/gpu_check.py as a module."""
    return load_script("gpu_check")


def test_the_gpu_check_tests_part_names_a_stuck_test(gpu_check, tmp_path, repo):
    """On an H200 the tests part was stopped at its limit, twice at the same test, leaving
    only progress dots: its command gives each test a time limit of its own (pytest-timeout),
    so a stuck test fails with its name and the others go on. The command must parse here
    (the plugin installed: a missing one is a usage error), and its limit be below the
    part's."""
    command, limit = gpu_check.part_command("tests", gpu_check.arguments([]), tmp_path)
    assert f"--timeout={gpu_check.TEST_TIMEOUT_S}" in command
    assert gpu_check.TEST_TIMEOUT_S < limit
    assert "pytest_timeout" in gpu_check.NEEDED
    collected = subprocess.run([*command, "--collect-only", "tests/test_kernels.py"],
                               cwd=repo, capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]


def test_a_gpu_check_tests_part_stopped_at_its_limit_names_the_test_it_was_in(gpu_check,
                                                                             tmp_path):
    """Found in review: the tests part ran pytest with -q, so a part stopped at its limit
    (the device tests, Triton's compiled on first use among them, outgrowing its 240 s)
    left progress dots alone, naming neither the tests that ran nor the one it was in.
    The part's command (less the device options, which this file's conftest lacks) on a
    quick test and one slower than the part's limit."""
    tests = tmp_path / "test_part.py"
    tests.write_text("import time\n\ndef test_quick():\n    pass\n\n"
                     "def test_slow():\n    time.sleep(300)\n")
    command, _ = gpu_check.part_command("tests", gpu_check.arguments([]), tmp_path)
    at = command.index("--device")
    command = [*command[:at], *command[at + 4:], "-o", "addopts=", str(tests)]
    assert command[at - 1] != "-m" and "device" not in command
    # buffered as on a GPU machine (stopped, a process loses what it held back); in file
    # order (a CI run's PYTEST_ADDOPTS=--random-order put the slow test first: found so)
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONUNBUFFERED", "PYTEST_ADDOPTS")}
    (result,) = gpu_check.run_parts_together([("tests", command, 15)], env, tmp_path / "logs")
    assert result["timed_out"], result
    log = "\n".join(result["output_tail"])
    assert "test_part.py::test_quick PASSED" in log and "test_part.py::test_slow" in log, log


def test_gpu_check_names_the_wheels_target_when_a_package_is_missing(gpu_check, monkeypatch):
    """Found in review: a GPU machine's python3 without the carried wheels was told to
    "carry their wheels" without the target that makes them (gpu_speed.sh names it)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "missing_packages",
                        lambda: ["hydra (No module named 'hydra')"])
    problem = gpu_check.environment_problem()
    assert problem.startswith("gpu-check: hydra (No module named 'hydra'): not importable in ")
    assert "make gpu-wheels" in problem and "docs/gpu.md" in problem
    assert "\n" not in problem


def test_a_gpu_check_part_stopped_at_its_limit_takes_its_background_processes_along(
        gpu_check, tmp_path):
    """A part past its limit is stopped with every process it started (the smoke
    protocol's runs go on in the background), so none keeps the GPU busy while the next
    part is timed."""
    marker = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {marker}; wait"
    (result,) = gpu_check.run_parts_together([("slow", ["bash", "-c", script], 2)],
                                             dict(os.environ), tmp_path)
    assert result["status"] == "fail" and result["timed_out"] and result["seconds"] < 30
    stat = f"/proc/{int(marker.read_text())}/stat"
    # gone, or a zombie left for init to reap: not running either way
    assert not os.path.exists(stat) or Path(stat).read_text().split(") ")[1][0] == "Z"


def test_a_gpu_check_part_stopped_at_its_limit_takes_along_what_ignores_sigterm(
        gpu_check, tmp_path, monkeypatch):
    """Found in review: a part whose top process exited on SIGTERM counted as stopped, and
    a process of its group that ignored SIGTERM never got SIGKILL."""
    monkeypatch.setattr(gpu_check, "STOP_SIGNALS", ((signal.SIGTERM, 2), (signal.SIGKILL, 5)))
    marker = tmp_path / "straggler.pid"
    script = f"(trap '' TERM; sleep 60) & echo $! > {marker}; sleep 60"
    (result,) = gpu_check.run_parts_together([("slow", ["bash", "-c", script], 1)],
                                             dict(os.environ), tmp_path)
    assert result["timed_out"]
    stat = f"/proc/{int(marker.read_text())}/stat"
    assert not os.path.exists(stat) or Path(stat).read_text().split(") ")[1][0] == "Z"


def test_a_stopped_gpu_check_stops_its_parts(gpu_check, tmp_path, monkeypatch):
    """Found in review: the parts run in sessions of their own, so Ctrl-C (or a SIGTERM to
    the check) left them running on the GPU."""
    import signal
    import time

    marker = tmp_path / "part.pid"
    sleeps, sleep = [], time.sleep

    def interrupted(seconds):  # Ctrl-C while the check waits for its parts, and again
        sleeps.append(seconds)  # while it stops them (a second Ctrl-C skipped the SIGKILL)
        if len(sleeps) == 5:
            raise KeyboardInterrupt
        if len(sleeps) == 8:
            os.kill(os.getpid(), signal.SIGINT)
        sleep(seconds)

    monkeypatch.setattr(gpu_check.time, "sleep", interrupted)
    monkeypatch.setattr(gpu_check, "STOP_SIGNALS", ((signal.SIGTERM, 2), (signal.SIGKILL, 5)))
    part = f"trap '' TERM; echo $$ > {marker}; sleep 60"  # it takes SIGKILL to stop it
    with pytest.raises(KeyboardInterrupt):
        gpu_check.run_parts_together([("part", ["bash", "-c", part], 120)], dict(os.environ),
                                     tmp_path)
    stat = f"/proc/{int(marker.read_text())}/stat"
    assert not os.path.exists(stat) or Path(stat).read_text().split(") ")[1][0] == "Z"


def test_gpu_check_takes_its_folders_from_where_it_was_started(gpu_check, tmp_path,
                                                               monkeypatch):
    """Found in review: a relative --data-root was found from the caller's folder by the
    check but read from the repository by its parts."""
    monkeypatch.chdir(tmp_path)
    args = gpu_check.arguments(["--data-root", "data", "--work-dir", "w", "--out-dir", "~/o"])
    assert (args.data_root, args.work_dir) == (str(tmp_path / "data"), str(tmp_path / "w"))
    assert args.out_dir == str(Path.home() / "o")


def test_gpu_check_runs_its_untimed_parts_at_once_and_times_each(gpu_check, tmp_path):
    """The tests and the smoke protocol run together (each part here waits for the other's
    mark, so run one after the other both would hit their limit); each part still has its
    own limit, log and time."""
    wait_for = "for i in $(seq 100); do [ -f {mark} ] && break; sleep 0.1; done; [ -f {mark} ]"
    a, b = tmp_path / "a", tmp_path / "b"
    parts = [("first", ["bash", "-c", f"touch {a}; " + wait_for.format(mark=b)], 60),
             ("second", ["bash", "-c", f"touch {b}; " + wait_for.format(mark=a) + " && exit 3"], 60),
             ("stuck", ["sleep", "60"], 1)]
    results = gpu_check.run_parts_together(parts, dict(os.environ), tmp_path)
    assert [(r["part"], r["status"], r["exit_code"], r["timed_out"]) for r in results] == [
        ("first", "pass", 0, False), ("second", "fail", 3, False), ("stuck", "fail", None, True)]
    assert results[2]["seconds"] < 30 and (tmp_path / "second.log").exists()


def test_a_part_being_stopped_does_not_hold_up_the_others(gpu_check, tmp_path):
    """A part that takes its SIGTERM grace (10 s) to stop does not delay seeing another
    part's end: that part's time is its own, not the stopped one's grace added to it."""
    parts = [("slow-to-stop", ["bash", "-c", "trap '' TERM; sleep 60"], 1),
             ("quick", ["bash", "-c", "sleep 2; exit 3"], 60)]
    results = gpu_check.run_parts_together(parts, dict(os.environ), tmp_path)
    assert [(r["status"], r["exit_code"], r["timed_out"]) for r in results] == [
        ("fail", None, True), ("fail", 3, False)]
    assert results[0]["seconds"] < 8 and results[1]["seconds"] < 8, results  # not 11+


def checked_on_a_seeming_h100(gpu_check, tmp_path, monkeypatch, *more_args: str) -> int:
    """``gpu_check.main``'s status on a CPU machine that torch takes for one with an H100
    (its parts' runner replaced by the test), without CIFAR-10, writing into ``tmp_path``
    (``more_args``: options after these, which argparse takes over them)."""
    for name, value in (("is_available", lambda: True), ("current_device", lambda: 0),
                        ("device_count", lambda: 1),
                        ("get_device_name", lambda *args: "NVIDIA H100 80GB HBM3")):
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91900)
    return gpu_check.main(["--data-root", str(tmp_path / "no-cifar"), "--out-dir",
                           str(tmp_path), "--work-dir", str(tmp_path / "work"), *more_args])


def test_gpu_check_groups_its_parts_and_writes_its_record(gpu_check, tmp_path, monkeypatch,
                                                         capsys):
    """The whole check as a GPU machine would run it, its parts' commands recorded instead
    of run: tests and smoke together first, then each timed part alone; the paper epochs
    are skipped without CIFAR-10; the record says which passed."""
    groups = []

    def recorded(parts, env, log_dir):
        groups.append([(name, command[1:3], limit) for name, command, limit in parts])
        # a record is on disk while any part runs, the first too (a slot killed then)
        assert json.loads((tmp_path / "gpu-check-h100.json").read_text())["status"] == "running"
        return [{"part": name, "status": "pass", "seconds": 1.0} for name, _, _ in parts]

    monkeypatch.setattr(gpu_check, "run_parts_together", recorded)
    code = checked_on_a_seeming_h100(gpu_check, tmp_path, monkeypatch)
    assert code == 0
    assert [[name for name, _, _ in group] for group in groups] == [["tests", "smoke"],
                                                                   ["benchmark"]]
    assert groups[0][1][1] == ["scripts/reproduce.sh", "smoke"] and groups[0][0][2] <= 240
    record = json.loads((tmp_path / "gpu-check-h100.json").read_text())
    assert record["passed"] and record["status"] == "complete"
    assert [(p["part"], p["status"]) for p in record["parts"]] == [
        ("tests", "pass"), ("smoke", "pass"), ("paper-epoch", "skipped"),
        ("paper-epoch-graphs", "skipped"), ("benchmark", "pass")]
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "gpu-check PASSED on NVIDIA H100 80GB HBM3: tests pass, smoke pass, paper-epoch skipped")


def test_a_gpu_check_that_did_not_run_all_its_parts_is_not_recorded_as_passed(
        gpu_check, tmp_path, monkeypatch, capsys):
    """Found in review: the record of a check still running (a slot that ends with SIGKILL
    leaves it so) or stopped by SIGTERM said ``"passed": true`` once the parts done so far
    had passed, though the parts left were never run ("not run is not passed")."""
    seen = []

    def stopped_at_benchmark(parts, env, log_dir):
        seen.append(json.loads((tmp_path / "gpu-check-h100.json").read_text())["passed"])
        if parts[0][0] == "benchmark":
            err = KeyboardInterrupt()
            err.signum = signal.SIGTERM  # as sigterm_stops raises it
            raise err
        return [{"part": name, "status": "pass", "seconds": 1.0} for name, _, _ in parts]

    monkeypatch.setattr(gpu_check, "run_parts_together", stopped_at_benchmark)
    code = checked_on_a_seeming_h100(gpu_check, tmp_path, monkeypatch)
    assert code == 128 + signal.SIGTERM
    record = json.loads((tmp_path / "gpu-check-h100.json").read_text())
    assert record["status"] == "stopped" and [p["status"] for p in record["parts"]] == [
        "pass", "pass", "skipped", "skipped"]
    assert seen == [False, False] and record["passed"] is False


@pytest.mark.parametrize("option, value, said", [
    ("--budget-s", "5", "--budget-s must be >= 10 (no part is started with less left), got 5"),
    ("--out-dir", "{blocked}", "--out-dir {blocked} cannot be written ({file} is not a folder); "
                               "give another folder"),
    ("--work-dir", "{blocked}", "--work-dir {blocked} cannot be written ({file} is not a "
                                "folder); give another folder")],
    ids=["budget", "out-dir", "work-dir"])
def test_gpu_check_refuses_its_bad_options_in_one_line_before_any_part(
        gpu_check, tmp_path, monkeypatch, capsys, option, value, said):
    """Found in the scripts' audit: an --out-dir that could not be written ended in a
    traceback (the record's first write), and a budget under 10 s ran no part and recorded
    the check as failed, with no word of why."""
    file = tmp_path / "record.txt"
    file.write_text("")
    names = {"blocked": file / "sub", "file": file}  # a folder below a file
    monkeypatch.setattr(gpu_check, "run_parts_together", lambda *args: pytest.fail("ran"))
    code = checked_on_a_seeming_h100(gpu_check, tmp_path, monkeypatch, option,
                                     value.format(**names))
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [f"gpu-check: {said.format(**names)}"]
    assert not (tmp_path / "gpu-check-h100.json").exists()


@pytest.mark.timeout(60)  # (it hung before)
def test_gpu_check_takes_relative_folders_not_made_yet(gpu_check, tmp_path, monkeypatch):
    """Found in review of the check above: ``unwritable_folder`` walked a relative folder
    up as given, and one whose first part did not exist (``--out-dir new/sub``) reached
    ``""``, which never exists: the check never returned."""
    monkeypatch.chdir(tmp_path)
    assert gpu_check.arguments_problem(gpu_check.arguments(
        ["--out-dir", "new/sub", "--work-dir", "newer"])) is None


def test_gpu_check_keeps_the_paper_epochs_cold_and_warm_times(gpu_check, tmp_path):
    """The first epoch pays for cuDNN's algorithm search (and a graphed one for its
    capture); the second is what the rest of a run takes, so both are recorded."""
    epochs = [{"epoch_seconds": 3.1, "eval_seconds": 0.5, "test_accuracy": 0.4},
              {"epoch_seconds": 1.6, "eval_seconds": 0.2, "test_accuracy": 0.6}]
    (tmp_path / "run.json").write_text(json.dumps({"epochs": epochs}))
    assert gpu_check.paper_epoch_details(tmp_path) == {
        "epoch_seconds": 3.1, "eval_seconds": 0.5, "second_epoch_seconds": 1.6,
        "second_eval_seconds": 0.2,
        "test_accuracy": 0.6}
    assert gpu_check.paper_epoch_details(tmp_path / "absent") == {}


@pytest.mark.parametrize("script", ["benchmark_layers", "benchmark_train", "speed_report"])
def test_a_scripts_help_states_its_purpose_in_whole_sentences(load_script, capsys, script):
    # Found by review: --help showed the docstring's first line only, cut mid-sentence
    # ("... every distinct", "... producing the"). (In-process: a start of each script was
    # 2 s of CPU, and --help is argparse's alone.)
    with pytest.raises(SystemExit) as stop:
        load_script(script).main(["--help"])
    assert stop.value.code == 0
    description = capsys.readouterr().out.split("\n\n")[1]
    assert description.rstrip().endswith((".", ":", "``")), description


def test_each_tests_changes_to_the_import_path_are_undone():
    """conftest puts ``sys.path`` back after every test, as the torch and RNG state: the
    gpu_check test above runs scripts/gpu_check.py in-process, which puts the repository's
    src/ first on the path, and every later test ran with it there."""
    from conftest import _global_state, _restore_global_state

    state = _global_state()
    sys.path.insert(0, "/nowhere")
    _restore_global_state(state)
    assert "/nowhere" not in sys.path


def test_what_a_test_compiled_is_dropped_after_it():
    """conftest resets torch.compile's dynamo after a test that compiled and did not reset
    it (found by an audit: test_auto_form's compiled model left dynamo's frame count and
    compiled code to every later test of its process)."""
    from torch._dynamo import convert_frame

    from conftest import _global_state, _restore_global_state

    state = _global_state()
    torch.compile(lambda x: x + 1, backend="eager")(torch.zeros(1))
    assert convert_frame.FRAME_COUNTER > 0  # (else the check below proves nothing)
    _restore_global_state(state)
    assert convert_frame.FRAME_COUNTER == 0 and not list(convert_frame.output_codes.seen)


def test_the_excepthook_a_process_group_wraps_is_put_back(tmp_path):
    """conftest puts back ``sys.excepthook``: torch.distributed's process group wraps it
    (a "[rank0]: " before each line) and leaves it wrapped when destroyed, so every test
    that joined a group of one in-process (test_surgery's DistributedDataParallel ones)
    added a prefix to what an uncaught exception printed later in the process."""
    import torch.distributed as dist

    from conftest import _global_state, _restore_global_state

    before, state = sys.excepthook, _global_state()
    dist.init_process_group("gloo", rank=0, world_size=1,
                            init_method=f"file://{tmp_path / 'store'}")
    dist.destroy_process_group()
    assert sys.excepthook is not before  # (else this test proves nothing)
    _restore_global_state(state)
    assert sys.excepthook is before


def test_the_gpus_generators_are_put_back_where_cuda_started_within_the_session(monkeypatch):
    """conftest took the CUDA generators' state only where CUDA had started before the
    first test; on a GPU machine CUDA starts in a test, and every later test's unseeded
    draws on the GPU came from what the earlier ones left (found by an audit). Then they
    are set back to one seed after each test. (CUDA's functions stand in for a GPU here.)"""
    import conftest

    state = conftest._global_state()
    state.pop("cuda_rng", None)  # as on a GPU machine whose first test started CUDA
    seeded = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    conftest._restore_global_state(state)
    assert len(seeded) == 1 and seeded[0] == conftest._UNSEEDED


def test_gpu_speed_calls_a_step_killed_early_failed_not_stopped_at_its_limit(repo, tmp_path):
    """Found in review: a step killed by SIGKILL (out of memory) at once was reported as
    stopped at its limit (timeout passes the child's 137 on)."""
    done = fake_gpu_speed(repo, tmp_path, "echo h200; exit 0", STEP_KILLED="1")
    out, err = done.communicate(timeout=120)
    assert "stopped at its" not in out and "== train-bf16: FAILED after" in out, out + err


@pytest.mark.parametrize("mode", ["full", "quick", "kernels"])
def test_every_step_of_gpu_speed_passes_its_scripts_option_checks(repo, tmp_path, mode,
                                                                  load_script, monkeypatch):
    """A step whose options a script refuses costs its place in a short GPU slot: each
    command gpu_speed.sh runs (recorded by a stand-in Python) is given to its script with
    CUDA taken as present and the measuring replaced, up to the point of measuring; the
    kernels mode's tests (the mode a slot runs first) are collected with its options."""
    log = tmp_path / "commands"
    python = tmp_path / "python"
    python.write_text('#!/bin/bash\nif [ "$1" = -c ]; then\n'
                      '  case "$2" in *device_name*) echo fake-gpu;; esac\n  exit 0\nfi\n'
                      f'printf "%q " "$@" >> {log}\necho >> {log}\n')
    python.chmod(0o755)
    result = subprocess.run(["bash", "scripts/gpu_speed.sh", mode], cwd=repo, text=True,
                            capture_output=True, timeout=120,
                            env={**os.environ, "PY": str(python), "OUT_DIR": str(tmp_path / "out")})
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [shlex.split(line) for line in log.read_text().splitlines()]
    assert len(commands) == result.stdout.count("== ") == (
        10 if mode == "kernels" else GPU_SPEED_STEPS)
    for command in [c for c in commands if c[:2] == ["-m", "pytest"]]:
        collected = subprocess.run([sys.executable, *command, "--collect-only"], cwd=repo,
                                   capture_output=True, text=True, timeout=300)
        assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    commands = [c for c in commands if c[:2] != ["-m", "pytest"]]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    class Measuring(Exception):
        pass

    def measure(*args, **kwargs):
        raise Measuring
    for script, *args in commands:
        module = load_script(Path(script).stem)
        monkeypatch.setattr(module, "run", measure)
        with pytest.raises(Measuring):
            module.main(args)


@pytest.mark.parametrize("part", ["benchmark", "benchmark-fused", "benchmark-fuse-norm",
                                  "paper-epoch", "paper-epoch-graphs"])
def test_every_timed_part_of_gpu_check_passes_its_scripts_option_checks(
        gpu_check, load_script, repo, tmp_path, part, monkeypatch):
    """As gpu_speed.sh's steps above (a part refused costs its place in a short GPU slot):
    each benchmark command gpu_check.py builds is given to its script with CUDA taken as
    present, up to the point of measuring, and the paper epochs' overrides compose into a
    config that validates (as their run's own check would, before training)."""
    from hydra import compose, initialize_config_dir

    from basisconv.config_checks import validate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = gpu_check.arguments(["--data-root", str(tmp_path / "cifar"), "--parts", part])
    (python, script, *options), _ = gpu_check.part_command(part, args, tmp_path)
    assert python == sys.executable and (repo / script).is_file()
    if Path(script).name == "train.py":
        with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
            cfg = compose("train", overrides=options, return_hydra_config=True)
        validate(cfg)
        assert (cfg.trainer.epochs, cfg.trainer.cuda_graphs) == (2, part.endswith("graphs"))
        assert cfg.data.root == str(tmp_path / "cifar") and cfg.logger.backend == "none"
        return

    class Measuring(Exception):
        pass

    def measure(*args, **kwargs):
        raise Measuring
    module = load_script(Path(script).stem)
    monkeypatch.setattr(module, "run", measure)
    with pytest.raises(Measuring):
        module.main(options)


def test_what_the_protocol_sets_aside_and_makes_is_kept_out_of_git(repo):
    """Found in review: records set aside as ``<name>.rejected`` showed as new files in the
    results folder a user commits; they, the run folders, the caches and the half-written
    temporaries of killed writers are ignored, the records themselves not."""
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["results/quick/runs/baseline-s0.json.rejected", "outputs/x/run.json",
             "results/quick/cache/x.pt", "results/quick/.index.json.k3x9.tmp",
             "results/quick/runs/baseline-s0.json"]
    result = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=repo,
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == paths[:4]


def test_no_recipe_echoes_a_comment(repo):
    """A ``#`` line inside a recipe is handed to the shell and echoed by make on every build
    (``make env`` printed four lines of the Makefile's reasons): comments stay above rules."""
    echoed = [line for line in (repo / "Makefile").read_text().splitlines()
              if line.startswith("\t#")]
    assert echoed == []


#: The make targets that run a script with the Python the Makefile picks (PY).
PY_TARGETS = ("test", "reproduce", "smoke", "analyze", "train", "benchmark",
              "benchmark-layers", "speed-report")


@pytest.mark.parametrize("target", PY_TARGETS)
def test_a_python_named_with_py_runs_as_it_is_with_nothing_installed_into_it(repo, tmp_path,
                                                                               target):
    """Found in review: docs/reproducing.md lists ``PY`` (``PY=python3``, a GPU machine's
    own Python) among the variables ``make reproduce`` passes on, but ``make reproduce
    PY=python3`` pip-installed requirements.txt into that Python (its CUDA torch replaced by
    the pin) and then failed to touch ``.venv/.installed``: a named PY runs the target and
    no ``.venv`` is built or installed into (``make -n``: what make would run)."""
    python = tmp_path / "bin" / "python3"
    result = subprocess.run(["make", "-n", "--no-print-directory", target, f"PY={python}",
                             f"VENV={tmp_path / '.venv'}"], cwd=repo, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install" not in result.stdout and "venv" not in result.stdout, result.stdout
    assert "scripts/reproduce.sh" in result.stdout or str(python) in result.stdout, result.stdout


@pytest.mark.parametrize("spelling", ["absolute", "dotted"])
def test_py_spelled_as_the_venvs_own_python_builds_the_venv(repo, spelling):
    """Found in review: ``PY`` named ``.venv``'s own Python by another spelling (``$PWD/
    .venv/bin/python``, ``./.venv/bin/python``) was taken for another Python, so ``.venv``
    was neither built nor brought up to the pins before the target ran it (``make -n``:
    what make would run; the venv folder named here is never made)."""
    venv = "no-such-venv-for-this-test"
    python = {"absolute": f"{repo}/{venv}/bin/python", "dotted": f"./{venv}/bin/python"}
    result = subprocess.run(["make", "-n", "--no-print-directory", "test", f"VENV={venv}",
                             f"PY={python[spelling]}"], cwd=repo, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f'-m venv --clear "{venv}"' in result.stdout, result.stdout


def test_a_folder_with_a_space_is_one_word_to_the_shell(repo, tmp_path):
    """Found in review: ``make clean`` ran ``rm -rf $(VENV)`` unquoted, so ``VENV='<dir>/a
    b'`` removed ``<dir>/a`` and ``./b``; the Python given to the scripts, which take it as
    one word, was split so too. A target that runs PY itself keeps it unquoted: a command
    with its options (``PY="python3 -X dev"``) runs as before (``make -n``: what make would
    run; nothing is removed)."""
    venv, python = tmp_path / "a b", tmp_path / "my env" / "bin" / "python"
    for target, variable, said in (("clean", f"VENV={venv}", f'rm -rf "{venv}" '),
                                   ("reproduce", f"PY={python}", f'PY="{python}" scripts/'),
                                   ("gpu-speed", f"GPU_PYTHON={python}", f'PY="{python}" '),
                                   ("train", "PY=python3 -X dev", "python3 -X dev scripts/")):
        result = subprocess.run(["make", "-n", "--no-print-directory", target, variable],
                                cwd=repo, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert said in result.stdout, result.stdout


def made_venv(tmp_path, stamp_time=None):
    """A folder as make leaves its environment: ``bin/`` and the stamp of its last install,
    which is newer than the requirements unless ``stamp_time`` (seconds) says otherwise."""
    venv = tmp_path / "env"
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()
    if stamp_time is not None:
        os.utime(venv / ".installed", (stamp_time, stamp_time))
    return venv


@pytest.mark.parametrize("target", PY_TARGETS)
def test_every_target_runs_the_python_of_the_venv_make_is_given(repo, tmp_path, target):
    """Found in review: ``make reproduce VENV=<folder>`` (and ``make smoke``) brought that
    folder up to the pins and then ran ``scripts/reproduce.sh``, which runs
    ``.venv/bin/python`` unless given ``PY``: every target runs the given folder's Python
    (``make -n``: what make would run; the folder's stamp is newer than the pins)."""
    venv = made_venv(tmp_path)
    result = subprocess.run(["make", "-n", "--no-print-directory", target, f"VENV={venv}"],
                            cwd=repo, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"{venv}/bin/python" in result.stdout, result.stdout
    assert ".venv" not in result.stdout, result.stdout


def test_the_folder_venv_names_is_makes_own_and_says_so(repo, tmp_path):
    """Found in review: ``make VENV=<an existing environment>`` pip-installs the pins into
    it once requirements.txt is newer than its stamp, which neither the Makefile nor the
    README said. The folder VENV names is make's own, as ``.venv`` is (brought up to the
    pins, removed by ``make clean``), and both say so, naming ``PY=<folder>/bin/python``
    for an environment of one's own, which make leaves as it is."""
    venv = made_venv(tmp_path, stamp_time=0)  # older than requirements.txt
    for target, owned in (("test", f'"{venv}/bin/python" -m pip install'),
                          ("clean", f'rm -rf "{venv}"')):
        result = subprocess.run(["make", "-n", "--no-print-directory", target,
                                 f"VENV={venv}"], cwd=repo, capture_output=True, text=True,
                                timeout=60)
        assert owned in result.stdout, result.stdout + result.stderr
    makefile = " ".join((repo / "Makefile").read_text().replace("#", " ").split())
    readme = " ".join((repo / "README.md").read_text().split())
    assert "VENV=<folder> (default .venv) is the environment folder make owns" in makefile
    assert "name its Python instead: PY=<folder>/bin/python" in makefile
    assert "`make VENV=<folder>` keeps the environment in that folder" in readme
    assert "name its Python instead: `make test PY=<folder>/bin/python`" in readme
