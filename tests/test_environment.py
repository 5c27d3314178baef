"""The conda recipe (GPU machines) and the pip pins (CPU machines, CI) must not drift; the
GPU scripts say at once when there is no GPU."""

import os
import re
import subprocess
import sys

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


def test_a_gpu_check_part_stopped_at_its_limit_takes_its_background_processes_along(
        repo, tmp_path):
    """A part past its limit is stopped with every process it started (the smoke
    protocol's runs go on in the background), so none keeps the GPU busy while the next
    part is timed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", repo / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    marker = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {marker}; wait"
    result = gpu_check.run_part("slow", ["bash", "-c", script], dict(os.environ), 2, tmp_path)
    assert result["status"] == "fail" and result["timed_out"] and result["seconds"] < 30
    stat = f"/proc/{int(marker.read_text())}/stat"
    # gone, or a zombie left for init to reap: not running either way
    assert not os.path.exists(stat) or open(stat).read().split(") ")[1][0] == "Z"
