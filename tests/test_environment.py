"""The conda recipe (GPU machines) and the pip pins (CPU machines, CI) must not drift."""

import re

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
