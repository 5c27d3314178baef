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
