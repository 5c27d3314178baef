"""``scripts/reproduce.sh`` on the smoke profile: runs at once (``JOBS=2``), records that
accumulate in ``results/<profile>/runs/`` and let a protocol cut off on one machine go on
on another, and failed runs named at the end."""

import json
import os
import shutil
import subprocess
import sys

ROWS = ["baseline", "basis-all-0.5", "basis-all-0.125", "basis-all-0.25", "basis-all-0.75",
        "selected-sensitivity_budget-0.5", "selected-random-0.5", "selected-first_k-0.5",
        "selected-last_k-0.5"]


def reproduce(repo, machine, jobs=2):
    """The smoke protocol as a machine of its own would run it: its own outputs and cache."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PY": sys.executable, "JOBS": str(jobs),
           "OUTPUTS": str(machine / "outputs"), "SENSITIVITY_CACHE": str(machine / "cache")}
    return subprocess.run(["bash", str(repo / "scripts" / "reproduce.sh"), "smoke"], env=env,
                          capture_output=True, text=True, timeout=900)


def test_runs_at_once_publish_records_that_a_new_machine_continues_from(repo, tmp_path):
    first = tmp_path / "first"
    result = reproduce(repo, first)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    runs = first / "outputs" / "smoke" / "results" / "runs"
    for row in ROWS:
        record = json.loads((runs / row / "seed0.json").read_text())
        assert record["status"] == "complete" and record["kind"] == "training"
        assert (first / "outputs" / "smoke" / "logs" / f"{row}-seed0.log").stat().st_size > 0
    assert json.loads((runs / "sensitivity.json").read_text())["cache"]["table_sha256"]
    assert json.loads((runs / "exhaustive-search-resnet8.json").read_text())["search"]
    index = json.loads((runs.parent / "index.json").read_text())
    assert len(index["runs"]) == len(ROWS)

    # A new machine with the published records only (the protocol was cut off before two
    # runs finished): it trains those two, restores the sensitivity table from its record
    # instead of estimating it again, and builds the tables from all the records.
    second = tmp_path / "second"
    shutil.copytree(runs, second / "outputs" / "smoke" / "results" / "runs")
    mine = second / "outputs" / "smoke" / "results" / "runs"
    for row in ("basis-all-0.25", "selected-sensitivity_budget-0.5"):
        (mine / row / "seed0.json").unlink()
    result = reproduce(repo, second)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    started = [line for line in result.stdout.splitlines() if line.endswith(")")
               and ": started" in line]
    assert len(started) == 2, result.stdout
    assert "sensitivity: record in" in result.stdout
    log = (second / "outputs" / "smoke" / "logs" / "selected-sensitivity_budget-0.5-seed0.log")
    assert "restored from the published record" in log.read_text()
    for row in ("basis-all-0.25", "selected-sensitivity_budget-0.5"):
        again = json.loads((mine / row / "seed0.json").read_text())
        before = json.loads((runs / row / "seed0.json").read_text())
        assert again["model"]["basis_layers"] == before["model"]["basis_layers"]
    index = json.loads((mine.parent / "index.json").read_text())
    assert len(index["runs"]) == len(ROWS)

    # A run that fails is named at the end, the others still finish, the exit status is 1.
    (mine / "baseline" / "seed0.json").unlink()
    (mine / "basis-all-0.5" / "seed0.json").unlink()
    broken = second / "outputs" / "smoke" / "baseline" / "seed0" / "checkpoint.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    result = reproduce(repo, second)
    assert result.returncode == 1
    assert "failed runs" in result.stderr and "baseline-seed0" in result.stderr
    assert "basis-all-0.5-seed0" not in result.stderr
    assert (mine / "basis-all-0.5" / "seed0.json").exists()
