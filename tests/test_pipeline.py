"""The experiment pipeline end to end: the train script, its run record and wandb folder,
sweeps, resume after a real SIGKILL, and tracking failures that must not stop training."""

import json
import os
import pickle
import re
import signal
import shlex
import subprocess
import sys
import types
import time
from unittest import mock

import pytest
import torch
from hydra import compose, initialize_config_dir

import basisconv.config  # noqa: F401  (registers the schema)
import basisconv.config_checks
from basisconv import loop, train, training
from basisconv.checkpoint import save_checkpoint
from basisconv.errors import ConfigError, PublishError
from basisconv.layers import basis_layers
from basisconv.models import build_model
from basisconv.network import build_network
from basisconv.tracking import Tracker
from basisconv.train import fit
from interruption import fit_stopped_before, wait_for

TINY = ["data=stripes", "data.synthetic_train=400", "data.synthetic_test=100",
        "model=resnet20", "model.width=0.25", "trainer.batch_size=50", "trainer.progress=false"]
# For a run none of whose checks depends on its scale (how many steps, what it learns): an
# epoch of 2 steps, not 8 (an epoch of a tiny run here: about 1.6 s, not 3 s, on a loaded
# 2-core VM); TINY's 400 images stay where a count of steps is checked
FEW_IMAGES = "data.synthetic_train=100"


def train_line(*overrides):
    """The tiny run's command line with ``overrides``, which replace the tiny run's own
    values of the same keys (a config group given twice is refused: ``model=resnet20
    model=resnet18,resnet8`` would run the last alone)."""
    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m: before the overrides
    values = [o for o in overrides if not o.startswith("-")]
    given = {o.split("=", 1)[0] for o in values}
    return [*flags, *(o for o in TINY if o.split("=", 1)[0] not in given), *values]


def train_command(repo, *overrides):
    return [sys.executable, str(repo / "scripts" / "train.py"), *train_line(*overrides)]


def run(repo, cwd, *overrides, wandb_mode="disabled", starts=None):
    """scripts/train.py with ``overrides``, which must succeed; forked by ``starts`` (the
    ``script_starts`` fixture) where given, else a process started for it alone."""
    env = {**os.environ, "WANDB_MODE": wandb_mode}
    if wandb_mode != "disabled":  # wandb's service writes its logs (else in ~/.cache/wandb)
        env["WANDB_CACHE_DIR"] = str(cwd / "wandb-cache")
    if starts is None:
        # (a forked start's output is flushed as it exits; there, PYTHONUNBUFFERED would
        # only give it an environment of its own, another server: 3 s of CPU to start)
        env["PYTHONUNBUFFERED"] = "1"
        result = subprocess.run(train_command(repo, *overrides), cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=600)
    else:
        result = starts.run(repo / "scripts" / "train.py", train_line(*overrides), cwd=cwd,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_record(folder):
    return json.loads((folder / "run.json").read_text())


def test_train_script_writes_run_record_and_offline_wandb_run(tmp_path, repo):
    out = tmp_path / "run"
    run(repo, tmp_path, "trainer.epochs=2", FEW_IMAGES, f"hydra.run.dir={out}", "name=e2e",
        "logger.tags=[smoke,baseline]", wandb_mode="offline")
    record = read_record(out)
    assert record["status"] == "complete"
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr",
                "epoch_seconds", "forward_seconds_per_step", "backward_seconds_per_step"):
        assert key in record["epochs"][0]
    assert record["epochs"][0]["forward_seconds_per_step"] > 0
    assert record["final"]["test_accuracy"] == record["epochs"][-1]["test_accuracy"]
    # the resolved config, not interpolations
    assert record["config"]["trainer"]["epochs"] == 2
    assert record["config"]["logger"]["group"] == "e2e"
    assert record["model"]["parameters"] == 17326
    prov = record["provenance"]
    assert len(prov["git"]["commit"]) == 40 and prov["versions"]["torch"].startswith("2.")
    assert prov["hardware"]["cpu_count"] >= 1
    assert prov["date"] <= prov["finished"]  # when it started and ended (ISO, both UTC)
    assert "scripts/train.py" in prov["command"] and "sweep_command" not in prov
    # wandb wrote an offline run folder for this run, with the group and tags
    assert record["wandb"]["mode"] == "offline"
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert (out / "checkpoint.pt").exists() and (out / ".hydra" / "config.yaml").exists()


def test_basis_size_sweep_gives_one_record_per_value(tmp_path, repo, script_starts):
    sweep, extra = tmp_path / "sweep", tmp_path / "my configs"
    extra.mkdir()
    run(repo, tmp_path, "-m", f"--config-dir={extra}", "selection=all", "basis.size=0.25,0.5",
        "trainer.epochs=1", FEW_IMAGES, f"hydra.sweep.dir={sweep}", starts=script_starts)
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/run.json"))]
    assert [r["config"]["basis"]["size"] for r in records] == [0.25, 0.5]
    assert all(r["status"] == "complete" for r in records)
    # each job's command reruns that job alone; the sweep's own line is kept beside it
    for record, size in zip(records, ("0.25", "0.5")):
        command, sweep_line = (record["provenance"][k] for k in ("command", "sweep_command"))
        assert f"basis.size={size}" in command.split() and "-m" not in command.split()
        # with the flags it composed with (found in review: without --config-dir or
        # --config-name the line failed, or ran another config)
        assert shlex.split(command)[2] == f"--config-dir={extra}"
        assert "basis.size=0.25,0.5" in sweep_line and "-m" in sweep_line.split()
    # ResNet-20 at width 0.25 has 4-16 channels: at 1/4 the stem (K = 27) saves too
    assert len(records[0]["model"]["basis_layers"]) == 19
    assert records[0]["model"]["parameters"] < records[1]["model"]["parameters"] < 17326
    assert records[0]["model"]["forward_flops"] < records[1]["model"]["forward_flops"]


@pytest.mark.parametrize("debug", ["", "1"])
def test_a_sweep_whose_jobs_are_named_apart_leaves_no_folder_of_a_run_it_did_not_train(
        tmp_path, repo, script_starts, monkeypatch, debug):
    """Found in the sweep review: a sweep over a key its run name carries puts each job
    under its own multirun/<name>/, and Hydra wrote its multirun.yaml under the name of the
    config before the sweep's values: -m experiment=basis_all basis.size=0.125,0.25 left
    multirun/resnet20-basis-all-0.5/<date>/ beside its runs, the folder of a size not swept
    (and -m experiment=basis_selected selection=first_k,last_k one named sensitivity_budget).
    With BASISCONV_DEBUG=1 (Hydra's own reporter) the folder stayed (found in review)."""
    if debug:
        monkeypatch.setenv("BASISCONV_DEBUG", debug)
    else:  # (unset, as "" reads: the environment, and fork server, of the other runs here)
        monkeypatch.delenv("BASISCONV_DEBUG", raising=False)
    run(repo, tmp_path, "-m", "experiment=basis_all", "basis.size=0.125,0.25",
        "trainer.epochs=1", FEW_IMAGES, starts=script_starts)
    assert sorted(p.name for p in (tmp_path / "multirun").iterdir()) == [
        "resnet20-basis-all-0.125", "resnet20-basis-all-0.25"]


def test_a_sweep_preset_started_without_m_is_one_line_naming_m(tmp_path, repo, script_starts):
    """experiment=basis_size_sweep lists its basis sizes as sweep values; without -m Hydra
    ran one job at basis.size=0.5 alone, silently, in a folder named for the sweep."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    result = script_starts.run(repo / "scripts" / "train.py",
                               train_line("experiment=basis_size_sweep", "trainer.epochs=1",
                                          f"hydra.run.dir={tmp_path / 'run'}"),
                               cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the config sweeps basis.size=0.125,0.25,0.5,0.75 (hydra.sweeper.params), "
        "which one run ignores: start it with -m to run the sweep, or give "
        "basis.size=<one value> for one run")
    assert not (tmp_path / "run" / "run.json").exists()


@pytest.mark.parametrize("override", ["basis.size=0.5,1.5", "trainer.epochz=1,2"])
def test_a_refused_sweep_leaves_no_sweep_folder_behind(tmp_path, repo, override,
                                                      script_starts):
    """Found in a newcomer's walk through the README: a sweep refused before any job ran (a
    value out of range, a typo) left `multirun/<name>/<date>/multirun.yaml` behind, one
    dated folder per attempt, where a refused single run leaves none (docs/experiments.md,
    Errors at start)."""
    lines = sweep_failing(script_starts, repo, tmp_path, "selection=all", override)
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert not (tmp_path / "multirun").exists() or not list((tmp_path / "multirun").iterdir())


def test_a_refused_sweep_run_again_in_its_folder_keeps_the_jobs_it_ran(tmp_path, monkeypatch):
    """Found by a mutation test (no test failed with any folder holding a multirun.yaml
    removed): a sweep refused when run again in its folder (extended by a value out of
    range) removes the folder only where it holds Hydra's multirun.yaml alone, never one
    with the earlier jobs' folders in it; an unrun one goes, with an emptied multirun/<name>."""
    from basisconv import sweep_checks

    monkeypatch.chdir(tmp_path)
    ran = tmp_path / "sweep"
    (ran / "0").mkdir(parents=True)
    (ran / "multirun.yaml").write_text("hydra: {}\n")
    sweep_checks.remove_unrun_sweep_folder(ran)
    assert sorted(p.name for p in ran.iterdir()) == ["0", "multirun.yaml"]
    unrun = tmp_path / "multirun" / "resnet20-baseline" / "2024-01-01_00-00-00"
    unrun.mkdir(parents=True)
    (unrun / "multirun.yaml").write_text("hydra: {}\n")
    sweep_checks.remove_unrun_sweep_folder(unrun)
    assert not list((tmp_path / "multirun").iterdir())


def test_a_sweep_preset_as_one_job_of_another_sweep_is_one_line_before_any_job_runs(
        tmp_path, repo, script_starts):
    """Found in review: `-m experiment=baseline,basis_size_sweep` ran the sweep preset as
    one job at basis.size=0.5, silently (the check above returned early under -m)."""
    sweep = tmp_path / "sweep"
    lines = sweep_failing(script_starts, repo, tmp_path,
                          "experiment=baseline,basis_size_sweep", f"hydra.sweep.dir={sweep}")
    assert len(lines) == 1 and "experiment=basis_size_sweep" in lines[0]
    assert "its preset sweeps basis.size=0.125,0.25,0.5,0.75 (hydra.sweeper.params)" in lines[0]
    assert "; nothing ran" in lines[0] and not list(sweep.rglob("run.json"))


def test_a_sweep_job_that_failed_in_another_process_is_said_and_summed_up(capsys,
                                                                          monkeypatch):
    """Found in review: under the submitit launcher (SLURM) a job runs in another process,
    so its line went to the job's log and the parent's summary failed on an empty list
    (IndexError); the failure now carries its message, folder and resume override."""
    from hydra.core.utils import JobStatus

    from basisconv import cli

    monkeypatch.setattr(cli, "failed_jobs", [])
    monkeypatch.setattr(cli, "resume_override", [])
    failure = cli.SweepJobFailed("CIFAR-10 not found", "multirun/x/seed=1",
                                 "hydra.sweep.dir=multirun/x")
    job = types.SimpleNamespace(status=JobStatus.FAILED, _return_value=failure)
    assert cli.failed_job_unsaid(job) is None  # (not raised: the later jobs' are read)
    assert capsys.readouterr().err == "error: CIFAR-10 not found\n"
    assert (cli.failed_jobs, cli.resume_override) == (["multirun/x/seed=1"],
                                                      ["hydra.sweep.dir=multirun/x"])
    cli.failed_job_unsaid(job)  # one this process ran said its line already
    assert capsys.readouterr().err == "" and len(cli.failed_jobs) == 1
    # one that diverged there is summed up as diverged here (its fix: a lower trainer.lr)
    monkeypatch.setattr(cli, "diverged_jobs", {})
    diverged = cli.SweepJobFailed("training diverged", "multirun/x/seed=2",
                                  "hydra.sweep.dir=multirun/x", "trainer.lr")
    cli.failed_job_unsaid(types.SimpleNamespace(status=JobStatus.FAILED,
                                                _return_value=pickle.loads(pickle.dumps(diverged))))
    assert cli.diverged_jobs == {"multirun/x/seed=2": "trainer.lr"}
    cli.say_failed_jobs()
    assert ("seed=2 diverged, and the same command diverges again: sweep a lower trainer.lr "
            "instead (a new value). After the fix of seed=1, run the sweep with hydra.sweep.dir="
            "multirun/x: finished jobs are skipped") in capsys.readouterr().err


@pytest.mark.parametrize("launched", [2, 3, None])
def test_a_sweeps_summary_says_the_other_jobs_ran_only_where_there_were_others(
        capsys, monkeypatch, launched):
    """Found in review: a sweep whose every job failed ended "...; the other jobs ran."
    The count is Hydra's: its sweeper returns each batch's job results (None: another
    sweeper's return, which says no count, keeps the line as it was)."""
    from hydra.core.utils import JobReturn

    from basisconv import cli

    monkeypatch.setattr(cli, "failed_jobs", ["multirun/x/0", "multirun/x/1"])
    monkeypatch.setattr(cli, "resume_override", ["hydra.sweep.dir=multirun/x"])
    monkeypatch.setattr(cli, "diverged_jobs", {})
    returned = None if launched is None else [[JobReturn() for _ in range(launched - 1)],
                                              [JobReturn()]]
    assert cli.jobs_launched(returned) == launched
    cli.say_failed_jobs(cli.jobs_launched(returned))
    rest = "no job of the sweep finished" if launched == 2 else "the other jobs ran"
    assert capsys.readouterr().err == (
        f"error: 2 job(s) of the sweep in multirun/x failed, each with its line above (also "
        f"in its train.log): 0, 1; {rest}. After the fix, run the same command with "
        f"hydra.sweep.dir=multirun/x: finished jobs are skipped\n")


SWEEP_OF_FAILING_JOBS = """
import hydra
from basisconv.cli import exit_on_user_error
from basisconv.errors import ConfigError, TrainingDiverged

@hydra.main(version_base="1.3", config_path=None, config_name=None)
@exit_on_user_error
def main(cfg):
    if cfg.job == "refused":
        raise ConfigError("the refused job's own line")
    if cfg.job == "crashed":
        raise RuntimeError("the crashed job's bug")
    if cfg.job.startswith("diverged"):
        raise TrainingDiverged("the diverged job's own line", "test loss", float("nan"),
                               "trainer.lr")
    print("the job", cfg.job, "ran")

main()
"""


def test_a_sweep_says_a_crashed_job_after_one_refused(tmp_path, script_starts):
    """Found in the CLI sweep review: Hydra's sweeper reads each job's result in order and
    stops at the first that raises, so a job refused with a user error (its line said)
    hid a later job's crash: the sweep's last line said "1 job(s) of the sweep failed
    ...; the other jobs ran", and the crash's error was said nowhere, not in its log."""
    script = tmp_path / "app.py"
    script.write_text(SWEEP_OF_FAILING_JOBS)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    result = script_starts.run(script, ["-m", "+job=refused,crashed,fine",
                                        f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                               cwd=tmp_path, env=env, timeout=120)
    assert "the job fine ran" in result.stdout
    assert "error: the refused job's own line" in result.stderr
    assert "1 job(s) of the sweep" in result.stderr, result.stderr
    assert "RuntimeError: the crashed job's bug" in result.stderr, result.stderr
    assert result.returncode == 1


@pytest.mark.parametrize("jobs", ["diverged,fine", "diverged,refused,diverged2"])
def test_a_sweeps_summary_says_a_diverged_job_needs_a_lower_lr_not_the_same_command(
        tmp_path, script_starts, jobs):
    """A learning-rate sweep's summary told a diverged job, as a crashed one, to run the
    same command again after the fix: that command diverges again. It names the diverged
    jobs and the fix, a lower ``trainer.lr``, keeping the rerun line for the others."""
    script = tmp_path / "app.py"
    script.write_text(SWEEP_OF_FAILING_JOBS)
    sweep = tmp_path / "sweep"
    result = script_starts.run(script, ["-m", f"+job={jobs}", f"hydra.sweep.dir={sweep}"],
                               cwd=tmp_path, env={**os.environ, "WANDB_MODE": "disabled"},
                               timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # (the jobs' folders: their numbers)
    if jobs == "diverged,fine":
        assert ("(also in its train.log): 0; the other jobs ran. 0 diverged, and the same "
                "command diverges again: sweep a lower trainer.lr instead (a new value). After "
                f"the fix, run the sweep with hydra.sweep.dir={sweep}: finished jobs are "
                "skipped") == last.split(" each with its line above ")[1], last
    else:
        # every job failed (found in review: the line said the other jobs ran)
        assert ("; no job of the sweep finished. 0, 2 diverged, and the same command "
                "diverges again: sweep a lower trainer.lr instead (a new value). After the "
                "fix of 1, run the sweep with") in last, last


def test_a_run_in_its_own_folder_is_refused(tmp_path, repo, script_starts):
    """hydra.job.chdir=true moved every relative path (publish, data.root, the cache) into
    the run folder, silently: a protocol's records were never found again. One line, no
    record; reproduce.sh refuses it in OVERRIDES before any run starts."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    result = script_starts.run(repo / "scripts" / "train.py",
                               train_line("hydra.job.chdir=true", "publish=pub/x.json",
                                          f"hydra.run.dir={tmp_path / 'run'}"),
                               cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: hydra.job.chdir=true")
    assert not list(tmp_path.rglob("x.json")) and not (tmp_path / "run" / "run.json").exists()
    from basisconv.reproduce import check_overrides
    with pytest.raises(SystemExit):
        check_overrides("smoke", ["hydra.job.chdir=true"])
    check_overrides("smoke", ["hydra.job.chdir=false"])


def test_overrides_that_give_a_group_a_list_of_its_configs_are_refused(capsys):
    """Found in review: reproduce.sh's OVERRIDES="basis=[scratch,warmup]" passed its check
    and every run trained the merge of the two configs (the last one's values), silently."""
    from basisconv.reproduce import check_overrides

    with pytest.raises(SystemExit):
        check_overrides("smoke", ["basis=[scratch,warmup]"])
    assert capsys.readouterr().err.startswith(
        "error: OVERRIDES: basis=[scratch,warmup]: basis is a config group and takes one")


def test_a_sweep_run_again_extended_skips_its_finished_jobs(tmp_path, repo, script_starts):
    # each job's folder is named by its own overrides, not its number: the job
    # selection.count=2 is #0 of the first sweep and #1 of the second, and is found again
    sweep = tmp_path / "sweep"
    common = ["-m", "selection=first_k", "trainer.epochs=1", FEW_IMAGES,
              f"hydra.sweep.dir={sweep}"]
    run(repo, tmp_path, *common, "selection.count=2", starts=script_starts)
    again = run(repo, tmp_path, *common, "selection.count=3,2", starts=script_starts)
    assert (again.stdout + again.stderr).count("already complete; not training again") == 1
    records = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/run.json")}
    assert sorted(r["config"]["selection"]["count"] for r in records.values()) == [2, 3]
    assert all("selection.count=" in name and "," in name for name in records)


def sweep_failing(starts, repo, cwd, *overrides):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    result = starts.run(repo / "scripts" / "train.py",
                        train_line("-m", "trainer.epochs=1", *overrides), cwd=cwd, env=env,
                        timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()


def test_a_value_out_of_range_in_a_sweeps_last_job_is_one_line_before_any_job_runs(
        tmp_path, repo, script_starts):
    sweep = tmp_path / "sweep"
    lines = sweep_failing(script_starts, repo, tmp_path, "selection=all", "basis.size=0.5,1.5",
                          f"hydra.sweep.dir={sweep}")
    assert len(lines) == 1 and "basis.size=1.5" in lines[0] and "nothing ran" in lines[0]
    assert not list(sweep.glob("*/run.json"))


@pytest.mark.parametrize("overrides", [
    ("selection=list", "selection.layers=[layer1.0.conv1],[layer1.0.conv]"),
    ("selection=first_k", "selection.count=2", "sensitivity.layers=[all],[layer9.*]")])
def test_a_misspelt_layer_name_in_a_sweeps_last_job_is_one_line_before_any_job_runs(
        tmp_path, repo, overrides, script_starts):
    """Found in review: a layer name the model lacks was checked only as its job started,
    so the jobs before it trained first (docs/experiments.md: every job's values are
    checked before the first job runs)."""
    sweep = tmp_path / "sweep"
    lines = sweep_failing(script_starts, repo, tmp_path, *overrides, f"hydra.sweep.dir={sweep}")
    assert len(lines) == 1 and "nothing ran" in lines[0], lines
    assert "matches no convolution" in lines[0] or "unknown layer 'layer1.0.conv'" in lines[0]
    assert not list(sweep.glob("*/run.json"))


def test_a_basis_too_large_for_a_sweeps_last_model_is_one_line_before_any_job_runs(
        tmp_path, repo, script_starts):
    """Found in review: ResNet-8's layers (at most 64 channels) cannot take a basis of 100
    filters, ResNet-18's can; the ResNet-8 job was refused only after ResNet-18's trained."""
    sweep = tmp_path / "sweep"
    lines = sweep_failing(script_starts, repo, tmp_path, "selection=all",
                          "model=resnet18,resnet8", "basis.size=100", f"hydra.sweep.dir={sweep}")
    assert len(lines) == 1 and "nothing ran" in lines[0], lines
    assert "model=resnet8" in lines[0] and "basis.size=100 is more than" in lines[0]
    assert not list(sweep.glob("*/run.json"))


def test_sweep_jobs_that_would_publish_to_one_file_are_refused_before_any_runs(tmp_path, repo,
                                                                              script_starts):
    # Found by audit: every job wrote the same file, so the sweep kept only its last record
    sweep, published = tmp_path / "sweep", tmp_path / "published.json"
    lines = sweep_failing(script_starts, repo, tmp_path, *TINY[:3], "seed=0,1",
                          f"publish={published}", f"hydra.sweep.dir={sweep}")
    assert len(lines) == 1 and lines[0].startswith(
        f"error: publish={published} is the same file for 2 jobs of the sweep")
    assert "seed${seed}" in lines[0] and not published.exists()


def test_sweep_jobs_that_publish_to_one_file_written_two_ways_are_refused(tmp_path,
                                                                         monkeypatch):
    # Found in review: publish paths were compared as text, so -m publish=a.json,./a.json
    # let two jobs write one file (each job writes it from the folder the sweep started in)
    from omegaconf import OmegaConf

    from basisconv.sweep_checks import check_published_apart
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    jobs = [([f"publish={path}"], OmegaConf.create({"publish": path}))
            for path in ["a.json", "./a.json", "runs/../a.json", "b.json"]]
    with pytest.raises(ConfigError, match=r"^publish=a\.json is the same file for 3 jobs of "
                                          r"the sweep \(written \./a\.json, runs/\.\./a\.json "
                                          r"too\)"):
        check_published_apart(jobs)
    check_published_apart([jobs[0], jobs[3]])


def test_a_sweep_that_lists_a_job_twice_is_refused_before_any_runs(tmp_path, repo,
                                                                   script_starts):
    """Found in review: ``-m seed=0,0`` gave two jobs one folder (named by the overrides),
    the second finding the first complete, or racing it under a parallel launcher."""
    sweep = tmp_path / "sweep"
    lines = sweep_failing(script_starts, repo, tmp_path, "seed=0,0", f"hydra.sweep.dir={sweep}")
    assert len(lines) == 1 and "lists the job" in lines[0] and "seed=0 twice (" in lines[0]
    assert not list(sweep.glob("*/run.json"))


@pytest.mark.parametrize("swept, job", [("seed=0,00", "seed=0"),
                                         ("basis.size=0.5,0.50", "basis.size=0.5")])
def test_a_sweep_that_lists_one_value_in_two_spellings_is_refused_before_any_runs(
        tmp_path, repo, script_starts, swept, job):
    """Found in review: ``-m seed=0,00`` passed the check above (Hydra writes 00 as given,
    0.50 as 0.5), and trained one run twice, in two folders."""
    sweep = tmp_path / "sweep"
    lines = sweep_failing(script_starts, repo, tmp_path, "selection=all", swept,
                          f"hydra.sweep.dir={sweep}")
    assert len(lines) == 1 and "lists the job" in lines[0] and "nothing ran" in lines[0], lines
    assert f"{job} twice" in lines[0] or f"{job} and" in lines[0], lines
    # found by a mutation test: the second spelling, where Hydra keeps it (00; 0.50 it
    # writes 0.5), named after "twice, as", was not checked (the line elides its middle)
    end = {"seed=0,00": "seed=00: seed=0 and seed=00 make the same config",
           "basis.size=0.5,0.50": "basis.size=0.5 twice (a value given twice"}
    assert end[swept] in lines[0], lines
    assert not sweep.exists() or not list(sweep.iterdir())


def test_sweep_jobs_apart_only_in_hydras_settings_are_refused_as_one_run(tmp_path, repo,
                                                                         script_starts):
    """Found in review: a preset sweeping ``hydra.sweep.subdir`` alone (``hydra.sweeper.
    params``; on the command line Hydra refuses it) gave two jobs of one run, refused as "a
    value repeated, e.g. seed=0,0", which the user had not written."""
    presets = tmp_path / "configs" / "experiment"
    presets.mkdir(parents=True)
    (presets / "two_folders.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      hydra.sweep.subdir: a,b\n")
    sweep = tmp_path / "sweep"
    lines = sweep_failing(script_starts, repo, tmp_path,
                          f"hydra.searchpath=[file://{presets.parent}]",
                          "experiment=two_folders", f"hydra.sweep.dir={sweep}")
    assert len(lines) == 1 and "differ only in Hydra's settings" in lines[0], lines
    assert "hydra.sweep.subdir=b, hydra.sweep.subdir=a" in lines[0], lines
    assert "the same run" in lines[0] and "repeated" not in lines[0], lines
    assert not sweep.exists() or not list(sweep.iterdir())


def test_sweep_jobs_that_publish_to_their_own_files_run(tmp_path, repo, script_starts):
    """The refusal above names the fix, ``publish='runs/seed${seed}.json'``: a sweep given it
    runs, each job publishing its own record (found at stop 72: the check of the sweep's
    unread keys, added after the publish check, was handed the publish count, a trace)."""
    sweep, runs = tmp_path / "sweep", tmp_path / "runs"
    run(repo, tmp_path, "-m", *TINY[:3], "trainer.epochs=1", FEW_IMAGES, "seed=0,1",
        f"publish={runs}/seed${{seed}}.json", f"hydra.sweep.dir={sweep}", starts=script_starts)
    assert sorted(p.name for p in runs.glob("*.json")) == ["seed0.json", "seed1.json"]


def test_a_job_that_fails_does_not_stop_the_sweeps_other_jobs(tmp_path, repo, script_starts):
    # lr=1e6 diverges in its first epoch: a failure no check of the config can foresee (a
    # count above the candidates, used here before, is now refused before any job runs)
    sweep = tmp_path / "sweep"
    lines = sweep_failing(script_starts, repo, tmp_path, "trainer.lr=1e6,0.1", FEW_IMAGES,
                          f"hydra.sweep.dir={sweep}", "trainer.resume=false")
    records = [json.loads(p.read_text()) for p in sweep.glob("*/run.json")]
    status = {r["config"]["trainer"]["lr"]: r["status"] for r in records}
    # the diverged job's record says so, for the analysis to name it (it had none)
    assert status == {0.1: "complete", 1e6: "diverged"}, status
    assert lines[0].startswith("error: training diverged in epoch 1 of 1"), lines
    assert lines[-1].startswith(f"error: 1 job(s) of the sweep in {sweep} failed")
    assert len(lines) == 2, lines  # found in review: Hydra added a line naming the first
    assert "trainer.lr=1000000.0" in lines[-1] and "hydra.sweep.dir=" in lines[-1]
    # found in review: without trainer.resume=true the same command trained them all again
    assert f"hydra.sweep.dir={sweep} trainer.resume=true: finished jobs are skipped" in lines[-1]
    # the same command diverges again: the fix is a lower lr (a new sweep value)
    assert "diverged, and the same command diverges again: sweep a lower trainer.lr" in lines[-1]


def test_a_sweep_whose_jobs_have_other_names_is_run_again_in_each_jobs_folder(tmp_path, repo,
                                                                              script_starts):
    # Found by audit: the default folder multirun/${name}/<date> resolves per job, so jobs
    # whose names differ (here by selection.policy) land in one folder each, and the line
    # that says how to go on named one of them: run with it, the finished job trained again.
    # The sensitivity_budget job fails as its estimate loads the source checkpoint (not one)
    (tmp_path / "dense.pt").write_text("not a checkpoint")
    sweep = ["experiment=basis_selected", "selection=sensitivity_budget,all",
             f"sensitivity.source_checkpoint={tmp_path / 'dense.pt'}", "sensitivity.val_size=50",
             FEW_IMAGES]
    lines = sweep_failing(script_starts, repo, tmp_path, *sweep)
    assert any("dense.pt is not a checkpoint.pt" in line for line in lines), lines
    override = lines[-1].split("run the same command with ")[1].split(": finished jobs")[0]
    (override,) = shlex.split(override)  # quoted: the shell would expand ${name}
    assert override.startswith(f"hydra.sweep.dir={tmp_path}/multirun/${{name}}/"), override
    (done,) = (tmp_path / "multirun").glob("*/*/*/run.json")
    assert done.parent.parent.parent.name == "resnet20-basis-all-0.5"
    again = script_starts.run(repo / "scripts" / "train.py",
                              train_line("-m", "trainer.epochs=1", *sweep, override),
                              cwd=tmp_path, env={**os.environ, "WANDB_MODE": "disabled"},
                              timeout=600)
    assert again.returncode == 2, again.stderr[-3000:]
    assert "already complete; not training again" in again.stdout + again.stderr
    assert list((tmp_path / "multirun").glob("*/*/*/run.json")) == [done]  # not trained again


@pytest.mark.slow
@pytest.mark.device
def test_killed_run_resumes_to_the_same_final_metrics(tmp_path, repo, device, script_starts):
    settings = ["trainer.epochs=4", "trainer.deterministic=true",
                "trainer.threads=1", f"trainer.device={device}"]
    if device.type == "cuda":  # (an epoch of the default 400 images may end before the kill)
        settings.append("data.synthetic_train=1000")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    # the uninterrupted reference trains beside the interrupted run (one thread each,
    # deterministic: the same numbers as alone, in less wall-clock time)
    straight = tmp_path / "straight"
    with open(tmp_path / "straight.err", "w") as straight_err:
        reference_run = subprocess.Popen(
            train_command(repo, *settings, f"hydra.run.dir={straight}"), cwd=tmp_path,
            env=env, stdout=subprocess.DEVNULL, stderr=straight_err)
    try:
        resumed = killed_and_resumed(repo, tmp_path, settings, env, script_starts)
        reference_run.wait(timeout=600)
    finally:
        if reference_run.poll() is None:
            reference_run.kill()
            reference_run.wait()
    assert reference_run.returncode == 0, (tmp_path / "straight.err").read_text()[-3000:]
    reference = read_record(straight)
    assert resumed["status"] == "complete"
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert resumed["final"][key] == pytest.approx(reference["final"][key], rel=1e-6), key


def test_waiting_for_a_run_fails_at_once_with_its_words_when_it_ended():
    """A waiting test whose run failed as it started waited out its whole timeout with
    nothing to show (the GPU machine's test part stopped there, twice, with no name or
    reason); now it fails at once with the run's error output."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit('no GPU here')"],
                               stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="(?s)exit 1.*no GPU here"):
        wait_for(lambda: False, process, "its first record", lambda: process.communicate()[1])
    assert time.monotonic() - started < 60
    # and one that never gets there is killed at the timeout, with what it said
    process = subprocess.Popen([sys.executable, "-c", "import time; print('slow', flush=True)"
                                "; time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    with pytest.raises(pytest.fail.Exception, match="(?s)within 0.5 s.*slow"):
        wait_for(lambda: False, process, "its first record", lambda: process.communicate()[0],
                 timeout=0.5)
    assert process.returncode is not None
    # and one whose wait is cut short (pytest-timeout's limit, a Ctrl-C) is not left running
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])

    def cut_short():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        wait_for(cut_short, process, "its first record", lambda: "")
    assert process.returncode is not None


def killed_and_resumed(repo, tmp_path, settings, env, starts):
    """The run of ``settings`` killed (SIGKILL) after its first checkpoint, then the same
    command again (forked by ``starts``: the killed run is a process of its own, which a
    signal can stop): the resumed run's record."""
    interrupted = tmp_path / "interrupted"
    errors = tmp_path / "interrupted.err"
    with open(errors, "w") as err:
        process = subprocess.Popen(
            train_command(repo, *settings, f"hydra.run.dir={interrupted}"), cwd=tmp_path,
            env=env, stdout=subprocess.DEVNULL, stderr=err)
    # run.json, not checkpoint.pt: the record is written after the checkpoint, so a kill
    # between the two would leave no record to read here (the run resumes all the same)
    wait_for((interrupted / "run.json").exists, process, "its first record",
             errors.read_text)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = read_record(interrupted)
    assert killed_at["status"] == "running", "the run finished before it could be killed"
    # the epochs it resumes from are the checkpoint's: a kill between a checkpoint and the
    # record written after it (this test stalled for an epoch) leaves the record one behind
    import torch

    saved = len(torch.load(interrupted / "checkpoint.pt", weights_only=False)["record"]["epochs"])
    assert 1 <= saved < 4 and len(killed_at["epochs"]) in (saved, saved - 1)

    run(repo, tmp_path, *settings, f"hydra.run.dir={interrupted}", starts=starts)
    resumed = read_record(interrupted)
    assert resumed["provenance"]["resumed_from_epoch"] == saved
    return resumed


def compose_tiny(repo, *overrides):
    with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
        return compose("train", overrides=[*TINY, "logger=none", *overrides])


def test_complete_run_is_not_trained_again_and_changed_config_is_refused(tmp_path, repo):
    cfg = compose_tiny(repo, "trainer.epochs=1")
    first = fit(cfg, tmp_path)
    again = fit(cfg, tmp_path)
    assert again["final"] == first["final"]
    with pytest.raises(ConfigError, match=r"different config \(differs in trainer.lr\)"):
        fit(compose_tiny(repo, "trainer.epochs=1", "trainer.lr=0.3"), tmp_path)


def test_a_complete_run_publishes_its_record_and_an_unfinished_one_does_not(tmp_path, repo):
    published = tmp_path / "results" / "runs" / "baseline" / "seed0.json"
    cfg = compose_tiny(repo, "trainer.epochs=1", f"publish={published}")
    record = fit(cfg, tmp_path / "run")
    assert json.loads(published.read_text()) == read_record(tmp_path / "run")
    assert record["status"] == "complete" and not list(published.parent.parent.rglob("*.pt"))
    # a run that is already complete publishes again (a lost copy comes back)
    published.unlink()
    fit(cfg, tmp_path / "run")
    assert json.loads(published.read_text())["final"] == record["final"]
    from basisconv.records import publish

    unfinished = tmp_path / "unfinished.json"
    publish({**record, "status": "running"}, unfinished, tmp_path / "run")
    assert not unfinished.exists()
    # a write that fails at the end (the folder was checked at the start) says, in one
    # error the entry points print as a line, where the finished record is kept
    (tmp_path / "gone").write_text("a file where the folder was")
    kept = tmp_path / "run" / "run.json"
    with pytest.raises(PublishError, match=r"could not be published to .*gone/seed0.json "
                                           r"\(.*\); it is kept in " + re.escape(str(kept))
                                           + ": once that is fixed, copy it to"):
        publish(record, tmp_path / "gone" / "seed0.json", tmp_path / "run")


def test_an_auto_run_records_the_form_each_shape_ran(tmp_path, repo):
    from basisconv.kernels import auto

    auto.forget()
    try:
        record = fit(compose_tiny(repo, "trainer.epochs=1", FEW_IMAGES, "experiment=basis_all",
                                  "basis.combine=auto"), tmp_path)
        # a second run in the process lists its own shapes alone (found in review: a
        # sweep's later jobs listed every shape of the jobs before)
        other = fit(compose_tiny(repo, "trainer.epochs=1", FEW_IMAGES, "experiment=basis_all",
                                 "basis.combine=auto", "basis.size=0.25"), tmp_path / "other")
    finally:
        auto.forget()
    forms = record["auto_forms"]
    assert forms and {f["form"] for f in forms} <= {"stacked", "dense"}
    assert {f["backward"] for f in forms} == {True, False}  # training and evaluation calls
    assert all(set(f["ms_per_call"]) == {"stacked", "dense"} for f in forms)
    assert read_record(tmp_path)["auto_forms"] == forms
    assert len(other["auto_forms"]) == len(forms)  # the same layers, at half the basis
    assert max(f["basis_weight"][0] for f in other["auto_forms"]) == \
        max(f["basis_weight"][0] for f in forms) // 2


def test_wandb_failure_does_not_stop_training(tmp_path, repo, monkeypatch, caplog):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("wandb service unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    cfg = compose_tiny(repo, "trainer.epochs=1", "logger=wandb", "logger.mode=offline")
    record = fit(cfg, tmp_path)
    assert record["status"] == "complete" and record["wandb"] is None
    assert "wandb could not start" in caplog.text


def test_wandb_waits_are_bounded_by_the_logger_config(tmp_path, repo, monkeypatch):
    # wandb's defaults wait 90 s to start and for ever for the last uploads: a network
    # lost mid-run would hang the run, and the sweep behind it, at its end.
    import wandb

    # A real (offline) wandb in this process: its service writes its logs (else in
    # ~/.cache/wandb), replaces sys.excepthook, adds an import hook and outlives the run.
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "meta_path", sys.meta_path[:])
    cfg = compose_tiny(repo, "logger=wandb", "logger.mode=offline", "logger.init_timeout_s=7",
                       "logger.finish_timeout_s=11")
    tracker = Tracker(cfg.logger, {}, tmp_path, name="bounded")
    try:
        assert tracker.working
        assert (tracker.run.settings.init_timeout, tracker.run.settings.finish_timeout) == (7, 11)
    finally:
        tracker.finish()
        wandb.teardown()  # (its service process)
    assert tracker.run is None


def test_an_offline_wandb_run_starts_without_a_warning(tmp_path, repo, monkeypatch, capfd):
    """Found in review: the record's URL of an offline run was asked of wandb, which has
    none and printed "wandb: WARNING URL not available in offline run" in every run of the
    default logger."""
    import wandb

    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "meta_path", sys.meta_path[:])
    cfg = compose_tiny(repo, "logger=wandb", "logger.mode=offline")
    tracker = Tracker(cfg.logger, {}, tmp_path, name="quiet")
    try:
        assert tracker.working and tracker.info["url"] is None
    finally:
        tracker.finish()
        wandb.teardown()
    assert "WARNING" not in "".join(capfd.readouterr())


@pytest.mark.parametrize("override, message", [
    ("logger.init_timeout_s=0", "logger.init_timeout_s must be a number of seconds > 0"),
    ("logger.finish_timeout_s=-1", "logger.finish_timeout_s must be a number of seconds >= 0"),
])
def test_bad_wandb_timeouts_are_named(repo, override, message):
    with pytest.raises(ConfigError, match=message):
        basisconv.config_checks.validate(compose_tiny(repo, "logger=wandb", override))


def test_basis_run_records_its_layers_and_costs(tmp_path, repo):
    record = fit(compose_tiny(repo, "trainer.epochs=1", "experiment=basis_blocks",
                              "basis.size=0.5"), tmp_path)
    model = record["model"]
    assert model["basis_layers"] == [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3)
                                     for b in range(3) for c in (1, 2)]
    assert all(row["num_basis"] * 2 == row["out_channels"] for row in model["basis_report"])
    assert model["backward_flops"] == model["grad_input_flops"] + model["grad_weight_flops"]
    assert record["config"]["name"] == "resnet20-basis-blocks-0.5"


@pytest.mark.slow
@pytest.mark.device
def test_dense_warmup_converts_and_resumes_in_basis_form(tmp_path, repo, device):
    overrides = ["experiment=basis_warmup", "basis.dense_warmup_epochs=1", "trainer.epochs=3",
                 "trainer.deterministic=true", "basis.coefficient_update_every=2",
                 "basis.coefficient_l1=1e-4", f"trainer.device={device}", FEW_IMAGES]
    straight = fit(compose_tiny(repo, *overrides), tmp_path / "straight")
    assert len(straight["model"]["basis_layers"]) == 19
    errors = [row["reconstruction_error"] for row in straight["model"]["basis_report"]]
    assert all(0 < e < 1 for e in errors)  # fitted to the warmed-up weights

    # stopped right after the conversion epoch: its checkpoint already holds the basis
    # model, so the resumed run must build basis layers, not convert again
    fit_stopped_before(2, compose_tiny(repo, *overrides), tmp_path / "resumed")
    resumed = fit(compose_tiny(repo, *overrides), tmp_path / "resumed")
    assert resumed["provenance"]["resumed_from_epoch"] == 1
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert resumed["final"][key] == pytest.approx(straight["final"][key], rel=1e-6), key
    # Found by audit: the resumed record described layers fitted to the random init (the
    # rebuilt model's), not the warmed-up weights its checkpoint holds
    assert resumed["model"] == straight["model"]


@pytest.mark.parametrize("overrides, message", [
    (["selection=all", "basis.size=64"], r"^basis.size=64 is more than the output channels of "
                                         r"every selected layer \(at most"),
    (["selection=all", "basis.coefficient_rank=3"], r"basis.coefficient_rank must be an int in"),
    (["selection=list", "selection.layers=[layer9.conv1]"], r"layer9.conv1"),
], ids=["size", "rank", "layer"])
def test_a_warm_up_run_refuses_a_bad_basis_option_before_it_trains(tmp_path, repo, monkeypatch,
                                                                   overrides, message):
    # Found in review: a dense warm-up converts after its epochs, and only then were these
    # refused; the warm-up epochs were trained and lost (the conversion precedes the
    # epoch's checkpoint)
    trained, run_epoch = [], loop.run_epoch
    monkeypatch.setattr(loop, "run_epoch",
                        lambda *args, **kwargs: trained.append(args[0]) or run_epoch(*args, **kwargs))
    with pytest.raises(ConfigError, match=message):
        fit(compose_tiny(repo, "basis=warmup", "basis.dense_warmup_epochs=1", "trainer.epochs=2",
                         *overrides), tmp_path)
    assert trained == []


def test_coefficient_skip_training_after_a_warm_up_counts_from_the_conversion(tmp_path, repo,
                                                                             monkeypatch):
    # Found in review: the schedule counted the run's steps, warm-up included, so after a
    # warm-up of W steps an N above the basis steps never trained the coefficients
    steps = []
    monkeypatch.setattr(training.CoefficientSkipSchedule, "__call__",
                        lambda self, step: steps.append(step))
    fit(compose_tiny(repo, "basis=warmup", "basis.dense_warmup_epochs=1", "trainer.epochs=2",
                     "selection=all", "basis.coefficient_update_every=100", FEW_IMAGES), tmp_path)
    # 100 images at batch 50: the basis epoch's 2 steps (counted from the warm-up's: 2, 3)
    assert steps == list(range(2))


def test_a_skip_training_record_states_the_backward_flops_a_skipped_step_saves(tmp_path, repo):
    """Skip-training's saving was in no record: the FLOPs were those of a step that trains
    the coefficients. On a skipped step no coefficient's weight gradient is computed: for
    the stacked combination, a 1x1 conv of m basis maps into C_out channels, that is
    2*m*C_out multiply-adds' worth of FLOPs per output pixel of each basis layer."""
    record = fit(compose_tiny(repo, "trainer.epochs=1", FEW_IMAGES, "selection=all",
                              "basis.coefficient_update_every=4"), tmp_path)
    model = record["model"]
    pixels = {"conv1": 32 * 32, "layer1": 32 * 32, "layer2": 16 * 16, "layer3": 8 * 8}
    coefficient_grads = sum(2 * pixels[row["name"].split(".")[0]] * row["num_basis"]
                            * row["out_channels"] for row in model["basis_report"])
    assert len(model["basis_report"]) == 19 and coefficient_grads > 0  # the stem's too
    assert model["coefficient_update_every"] == 4
    assert model["skipped_step_backward_flops"] == model["backward_flops"] - coefficient_grads
    assert model["mean_backward_flops"] == round(
        (model["backward_flops"] + 3 * model["skipped_step_backward_flops"]) / 4)
    # without skip-training there is nothing to state
    plain = fit(compose_tiny(repo, "trainer.epochs=1", FEW_IMAGES, "selection=all"),
                tmp_path / "plain")
    assert "skipped_step_backward_flops" not in plain["model"]
    assert plain["model"]["backward_flops"] == model["backward_flops"]


def test_a_warm_up_run_counts_its_fused_norm_model_as_in_training(tmp_path, repo):
    """Found in review: the dense warm-up converts right after an evaluation, in eval mode,
    where a folded norm is counted with running statistics (no moments, less backward):
    the record undercounted the model, and a resume (counting it in training mode) then
    said a skipped step costs more than a trained one."""
    fused = ["selection=all", "basis.fuse_norm=true", "basis.coefficient_update_every=2",
             FEW_IMAGES]
    warmed = fit(compose_tiny(repo, "basis=warmup", "basis.dense_warmup_epochs=1",
                              "trainer.epochs=2", *fused), tmp_path / "warmed")["model"]
    scratch = fit(compose_tiny(repo, "trainer.epochs=1", *fused), tmp_path / "scratch")["model"]
    counts = ("forward_flops", "backward_flops", "skipped_step_backward_flops",
              "mean_backward_flops")
    assert {k: warmed[k] for k in counts} == {k: scratch[k] for k in counts}
    # under fuse_norm the folded norm's backward needs the combination's gradient anyway
    assert warmed["skipped_step_backward_flops"] == warmed["backward_flops"]


def test_convert_from_a_trained_checkpoint(tmp_path, repo):
    fit(compose_tiny(repo, "trainer.epochs=1", FEW_IMAGES), tmp_path / "baseline")
    source = tmp_path / "baseline" / "checkpoint.pt"
    overrides = ("trainer.epochs=2", FEW_IMAGES, "selection=all", "basis=convert",
                 f"basis.source_checkpoint={source}", "basis.size=0.5")
    # the converted run, stopped after its first epoch (its record as it converted)
    fit_stopped_before(2, compose_tiny(repo, *overrides), tmp_path / "resumed")
    record = read_record(tmp_path / "resumed")
    errors = [row["reconstruction_error"] for row in record["model"]["basis_report"]]
    assert errors and all(0 < e < 1 for e in errors)
    # Found by audit: a resume read the source checkpoint again (to fit layers that the
    # run's own checkpoint then overwrote), so with the source gone it could not go on
    source.unlink()
    resumed = fit(compose_tiny(repo, *overrides), tmp_path / "resumed")
    assert resumed["status"] == "complete" and resumed["provenance"]["resumed_from_epoch"] == 1
    assert resumed["model"] == record["model"]  # as fitted when it converted
    with pytest.raises(ConfigError, match="does not exist"):
        fit(compose_tiny(repo, "trainer.epochs=1", "selection=all", "basis=convert",
                         f"basis.source_checkpoint={tmp_path / 'nope.pt'}"), tmp_path / "x")


def test_a_sweep_run_again_in_its_folder_needs_no_source_checkpoint(
        tmp_path, repo, script_starts):
    """Found in review: the sweep's check that a source checkpoint is a file refused a
    sweep run again in its folders once the baseline's checkpoint was removed, though each
    job resumes (or is complete) from its own checkpoint and reads no source (as above)."""
    source = tmp_path / "baseline" / "checkpoint.pt"  # (a dense model's: untrained will do)
    source.parent.mkdir()
    save_checkpoint(source, {"model": build_model("resnet20", width=0.25).state_dict()})
    sweep = ("-m", "trainer.epochs=1", FEW_IMAGES, "selection=all", "basis=convert",
             f"basis.source_checkpoint={source}", "seed=0", f"hydra.sweep.dir={tmp_path / 's'}")
    run(repo, tmp_path, *sweep, starts=script_starts)
    source.unlink()
    again = run(repo, tmp_path, *sweep, starts=script_starts)
    said = again.stdout + again.stderr
    assert "is already complete; not training again" in said, said[-2000:]


def test_a_dense_warm_up_starts_from_the_source_checkpoint(tmp_path, repo):
    # Found by audit: with basis.source_checkpoint and basis.dense_warmup_epochs both set,
    # the warm-up started from the random init and the source was never read: it was
    # loaded only into a model built in basis form, which a warm-up builds later
    trained = build_model("resnet20", width=0.25)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # weights no init draws
    source = tmp_path / "checkpoint.pt"
    save_checkpoint(source, {"model": trained.state_dict()})
    cfg = compose_tiny(repo, "trainer.epochs=2", "selection=all", "basis=warmup",
                       "basis.dense_warmup_epochs=1", f"basis.source_checkpoint={source}")
    model = build_network(cfg, "all")
    assert not basis_layers(model)  # dense until the warm-up ends
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    source.unlink()  # a resumed warm-up restores its own checkpoint, not the source
    build_network(cfg, "all", restoring=True)


def test_the_wandb_summary_describes_the_model_a_warm_up_converted(tmp_path, repo, monkeypatch):
    # Found by audit: the summary's model/* (what analyze.py source=wandb rebuilds the
    # record's model from) was written once, before the dense warm-up, so a warm-up run
    # read back as a dense model with no basis layers
    summary = {}

    class Recording(Tracker):
        def summary(self, values):
            summary.update(values)

    monkeypatch.setattr(training, "Tracker", Recording)
    record = fit(compose_tiny(repo, "trainer.epochs=2", "selection=all", "basis=warmup",
                              "basis.dense_warmup_epochs=1", "data.synthetic_train=100"),
                 tmp_path)
    model = record["model"]
    assert model["basis_layers"]
    assert summary["model/basis_layer_names"] == " ".join(model["basis_layers"])
    for key in ("parameters", "forward_flops", "backward_flops"):
        assert summary[f"model/{key}"] == model[key], key


@pytest.mark.parametrize("overrides", [
    ["selection=all"],
    ["selection=list", "selection.layers=[conv1]"],
    ["selection=all", "basis=warmup", "basis.dense_warmup_epochs=1"],
], ids=["all", "list", "after-warm-up"])
def test_a_basis_run_whose_layers_all_stay_dense_says_so(tmp_path, repo, caplog, overrides):
    # Found in review: at a basis size where no chosen layer saves compute
    # (basis.only_where_saves), `all` or a `list` trained the dense model with only INFO
    # lines, so a sweep's row passed for a basis result; a policy choosing none warned
    cfg = compose_tiny(repo, "trainer.epochs=2", "basis.size=1.0", *overrides)
    with caplog.at_level("WARNING", logger="basisconv"):
        record = fit(cfg, tmp_path)
    assert not record["model"]["basis_layers"]
    assert "converted no layer" in caplog.text and "stays dense" in caplog.text


def test_a_basis_run_that_converts_layers_does_not_say_it_stays_dense(tmp_path, repo, caplog):
    # the control of the test above (once, not for each of its cases)
    with caplog.at_level("WARNING", logger="basisconv"):
        record = fit(compose_tiny(repo, "trainer.epochs=1", "selection=all"), tmp_path)
    assert record["model"]["basis_layers"]
    assert "stays dense" not in caplog.text and "converted no layer" not in caplog.text


def test_a_finished_run_without_a_checkpoint_is_not_trained_again(tmp_path, repo):
    # Found by audit: with no checkpoint.pt (trainer.checkpoint=false, or one deleted to
    # save disk) the same command trained the run again from epoch 1, and its first new
    # epoch overwrote the complete record
    cfg = compose_tiny(repo, "trainer.epochs=1", "trainer.checkpoint=false")
    first = fit(cfg, tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()
    with mock.patch.object(loop, "run_epoch", side_effect=AssertionError("trained again")):
        again = fit(compose_tiny(repo, "trainer.epochs=1"), tmp_path)  # checkpoint: execution
    assert again["final"] == first["final"] and again["provenance"] == first["provenance"]
    with pytest.raises(ConfigError, match=r"run.json was written by a different config "
                                          r"\(differs in trainer.epochs\)"):
        fit(compose_tiny(repo, "trainer.epochs=2", "trainer.checkpoint=false"), tmp_path)


@pytest.mark.parametrize("damaged", [{"status": "complete"},
                                     {"status": "complete", "config": [1]},
                                     "final"], ids=["status-only", "config-a-list", "no-final"])
def test_a_damaged_complete_record_without_a_checkpoint_is_one_line(tmp_path, repo, damaged):
    # Found in review: a run.json that says complete but holds nothing else was taken as
    # the finished run (not trained, exit 0, published as a record with no results), one
    # whose config is no object ended in an AttributeError trace from check_same_run
    cfg = compose_tiny(repo, "trainer.epochs=1", "trainer.checkpoint=false")
    first = fit(cfg, tmp_path)
    if damaged == "final":
        damaged = {**first, "final": None}
    (tmp_path / "run.json").write_text(json.dumps(damaged))
    with mock.patch.object(loop, "run_epoch", side_effect=AssertionError("trained again")), \
            pytest.raises(ConfigError, match=r"run.json says the run is complete but is damaged "
                                             r"\(it lacks .*\).*delete it to train the run again"):
        fit(cfg, tmp_path)


def test_a_stopped_run_without_a_checkpoint_starts_over_as_its_stop_says(tmp_path, repo):
    """A run with trainer.checkpoint=false stopped after epoch 1 leaves only its running
    run.json: its stop says the same command starts it over, and that command trains it
    from epoch 1 to the end (not refused, not taken as finished). This path (an unfinished
    record and no checkpoint) ran in no test before the coverage review."""
    from basisconv.errors import Stopped

    cfg = compose_tiny(repo, "trainer.epochs=2", "trainer.checkpoint=false",
                       "data.synthetic_train=100", "data.synthetic_test=50")
    run_epoch = loop.run_epoch

    def stopped_in_epoch_2(number, *args, **kwargs):
        if number == 2:
            raise KeyboardInterrupt
        return run_epoch(number, *args, **kwargs)

    with mock.patch.object(loop, "run_epoch", stopped_in_epoch_2), \
            pytest.raises(Stopped) as err:
        fit(cfg, tmp_path)
    assert str(err.value) == (f"the run in {tmp_path} stopped after epoch 1 of 2; "
                              f"trainer.checkpoint=false, so the same command starts it over")
    assert read_record(tmp_path)["status"] == "running"
    assert not (tmp_path / "checkpoint.pt").exists()
    record = fit(cfg, tmp_path)
    assert record["status"] == "complete" and [e["epoch"] for e in record["epochs"]] == [1, 2]
    assert "resumed_from_epoch" not in record["provenance"]


def test_a_complete_runs_lost_or_damaged_record_is_rebuilt_from_its_checkpoint(tmp_path, repo,
                                                                              caplog):
    cfg = compose_tiny(repo, "trainer.epochs=1")
    first = fit(cfg, tmp_path)
    expected = read_record(tmp_path)
    for damage in ("missing", "truncated"):
        if damage == "missing":
            (tmp_path / "run.json").unlink()
        else:
            (tmp_path / "run.json").write_text((tmp_path / "run.json").read_text()[:100])
        assert fit(cfg, tmp_path)["final"] == first["final"]
        assert read_record(tmp_path) == expected
    assert "rewrote it from the complete run's checkpoint" in caplog.text


def test_under_torchrun_a_complete_run_is_said_and_repaired_by_rank_0_alone(tmp_path, repo,
                                                                            caplog, monkeypatch):
    """Found in review: a finished run started again with ``torchrun --nproc_per_node=2``
    said "already complete; not training again" once per process, and with its run.json
    lost every process rewrote it (rank 1 outside the folder's lock), warning each time:
    the place a run starts was read before Training quieted the other ranks. Rank 1 still
    finds the run complete from the same checkpoint, so it does not train either."""
    import logging

    cfg = compose_tiny(repo, "trainer.epochs=1")
    first = fit(cfg, tmp_path)
    (tmp_path / "run.json").unlink()
    (tmp_path / "checkpoint.pt.sha256").unlink()  # (its "loaded it unverified" is said too)
    package = logging.getLogger("basisconv")
    level = package.level
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets them for rank 1
    monkeypatch.setenv("RANK", "1")
    try:
        with caplog.at_level(logging.INFO), \
                mock.patch.object(train, "start_training", side_effect=AssertionError("trained")):
            assert fit(cfg, tmp_path)["final"] == first["final"]
    finally:
        package.setLevel(level)  # (rank 1 quiets the package for the rest of its process)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("basisconv")] == []
    assert not (tmp_path / "run.json").exists()  # rank 0's to rewrite, holding the lock
    monkeypatch.setenv("RANK", "0")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert fit(cfg, tmp_path)["final"] == first["final"]
    assert "already complete; not training again" in caplog.text
    assert "rewrote it from the complete run's checkpoint" in caplog.text


HOLD_LOCK = """
import sys, time
from pathlib import Path
from basisconv.records import folder_lock
with folder_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_process_in_a_run_folder_is_refused_and_a_dead_ones_lock_is_not(tmp_path,
                                                                                 repo):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        cfg = compose_tiny(repo, "trainer.epochs=1")
        with pytest.raises(ConfigError, match=rf"^{tmp_path} is in use by another run "
                                              rf"\(pid {holder.pid} on host .+\)") as err:
            fit(cfg, tmp_path)
        assert "\n" not in str(err.value) and not (tmp_path / "run.json").exists()
    finally:
        holder.kill()  # SIGKILL: no clean-up; the lock file stays behind
        holder.wait()
    assert (tmp_path / "run.lock").exists()
    assert fit(cfg, tmp_path)["status"] == "complete"


def test_a_refused_second_run_writes_nothing_into_the_first_runs_log(tmp_path, repo,
                                                                      script_starts):
    """Found in review: two runs started in the same second share Hydra's dated folder; the
    second was refused, but its refusal line went into the first run's train.log. (The
    first run's lock is held here, the second run forked: a process of its own, whose
    flock the test's conflicts with as another run's would.)"""
    from basisconv.records import folder_lock

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "train.log").write_text("the first run's line\n")
    with folder_lock(folder):
        result = script_starts.run(repo / "scripts" / "train.py",
                                   train_line("trainer.epochs=1", f"hydra.run.dir={folder}"),
                                   cwd=tmp_path, env={**os.environ, "WANDB_MODE": "disabled"},
                                   timeout=600)
    assert result.returncode == 2 and "is in use by another run" in result.stderr
    assert (folder / "train.log").read_text() == "the first run's line\n"


def test_a_checkpoint_damaged_inside_is_one_clear_error(tmp_path, repo):
    cfg = compose_tiny(repo, "trainer.epochs=1")
    fit(cfg, tmp_path)
    path = tmp_path / "checkpoint.pt"
    assert (tmp_path / "checkpoint.pt.sha256").read_text().split()[0] == \
        __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit inside the saved tensors
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=rf"^checkpoint {path} does not match its checksum "
                                          r"file checkpoint.pt.sha256: it is damaged.*delete "
                                          r"it \(and "
                                          r"its .sha256\): the run is complete") as err:
        fit(cfg, tmp_path)  # (trainer.resume=false, advised once, would train it again)
    assert "\n" not in str(err.value) and "trainer.resume" not in str(err.value)
    path.unlink()  # as it says: the finished run stays finished
    with mock.patch.object(loop, "run_epoch", side_effect=AssertionError("trained again")):
        assert fit(cfg, tmp_path)["status"] == "complete"
    running = json.loads((tmp_path / "run.json").read_text()) | {"status": "running"}
    (tmp_path / "run.json").write_text(json.dumps(running))
    path.write_bytes(bytes(data))  # an unfinished run's: start over, or resume=false
    with pytest.raises(ConfigError, match=r"is damaged.*to start over, or set "
                                          r"trainer.resume=false$"):
        fit(cfg, tmp_path)


@pytest.mark.parametrize("sidecar", ["text", "directory"])
def test_a_damaged_sha256_beside_a_sound_checkpoint_is_named_as_the_damage(tmp_path, repo,
                                                                           sidecar):
    """A .sha256 that held something else was reported as a damaged checkpoint (whose
    deletion it advised); one that could not be read was a traceback. The message names
    the sidecar, and deleting it (as it says) loads the checkpoint; a new save replaces a
    damaged sidecar."""
    from basisconv.checkpoint import RUN_STATE, load_checkpoint, save_checkpoint

    def state(epoch):
        return {key: epoch for key in RUN_STATE}

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state(1))
    sums = tmp_path / "checkpoint.pt.sha256"
    sums.unlink()
    if sidecar == "text":
        sums.write_text("oops, edited\n")
    else:
        sums.mkdir()
    with pytest.raises(ConfigError, match=rf"^{sums}, the sha256 of checkpoint {path}, is "
                                          rf"damaged \(it .*\); delete checkpoint.pt.sha256 "
                                          rf"to load checkpoint.pt unverified, or delete both "
                                          rf"to start over$") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    if sidecar == "text":
        save_checkpoint(path, state(2))  # the damaged sidecar is replaced
        assert load_checkpoint(path) == state(2)
        sums.unlink()
    else:
        sums.rmdir()
    assert load_checkpoint(path) in (state(1), state(2))


def test_a_damaged_sha256_beside_a_complete_runs_checkpoint_does_not_promise_a_start_over(
        tmp_path, repo):
    """Found in review: it said "or delete both to start over", but a complete run's
    run.json keeps it finished without its checkpoint (as the checkpoint's own damage says)."""
    cfg = compose_tiny(repo, "trainer.epochs=1")
    fit(cfg, tmp_path)
    (tmp_path / "checkpoint.pt.sha256").write_text("oops, edited\n")
    with pytest.raises(ConfigError, match=r"to load checkpoint.pt unverified, or delete both "
                                          r"\(the run is complete: its run.json keeps it so\)$"):
        fit(cfg, tmp_path)
    for name in ("checkpoint.pt", "checkpoint.pt.sha256"):  # as it says
        (tmp_path / name).unlink()
    assert fit(cfg, tmp_path)["status"] == "complete"
    assert not (tmp_path / "checkpoint.pt").exists()  # not trained again


def test_a_file_in_place_of_the_runs_checkpoint_is_one_clear_error(tmp_path, repo):
    """A bare state_dict (or anything else) saved as checkpoint.pt once stopped the resume
    with KeyError: 'config' (a list: TypeError); a run's state whose config or record is of
    another shape, with an AttributeError or TypeError."""
    import torch

    from basisconv.checkpoint import LATER_STATE, RUN_STATE

    cfg = compose_tiny(repo, "trainer.epochs=1")
    fit(cfg, tmp_path)
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    # what resuming checks for is what a run saves (and what it reads if there)
    assert tuple(state) == RUN_STATE + LATER_STATE
    (tmp_path / "checkpoint.pt.sha256").unlink()
    for content, problem in [(state["model"], r"is not a basisconv run's checkpoint \(it "
                                              r"lacks config, record, model, optimizer"),
                             ([1, 2], "holds a list, not a checkpoint"),
                             # found in review: its parts of another shape ended the resume
                             # in an AttributeError or TypeError trace
                             ({**state, "config": 1}, r"is not a basisconv run's checkpoint "
                                                      r"\(its config or run record"),
                             ({**state, "record": "x"}, r"is not a basisconv run's checkpoint "
                                                        r"\(its config or run record")]:
        torch.save(content, path)
        with pytest.raises(ConfigError, match=rf"^checkpoint {path} {problem}.*delete it "
                                              r"\(and its .sha256\): the run is complete"):
            fit(cfg, tmp_path)  # (its run.json is complete: deleting keeps it finished)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_a_run_with_one_line_that_says_how_to_resume(tmp_path, repo, signum,
                                                                     status):
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    # A shell without job control starts background commands (`cmd &`, CI runners) with
    # SIGINT ignored, and a child inherits that; the run must see the default disposition.
    process = subprocess.Popen(train_command(repo, "trainer.epochs=50", FEW_IMAGES,
                                             f"hydra.run.dir={out}"),
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for((out / "checkpoint.pt").exists, process, "its first checkpoint",
             lambda: process.communicate()[1])
    process.send_signal(signum)
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr
    import torch  # the epochs the checkpoint holds (run.json is written just after it)

    done = len(torch.load(out / "checkpoint.pt", weights_only=False)["record"]["epochs"])
    line = stderr.strip().splitlines()[-1]
    # where it stopped: after an epoch, or (this test stalled for an epoch: found in review,
    # not seen) while the next one's checkpoint was written
    where = {f"stopped after epoch {done} of 50 (checkpoint saved)",
             f"stopped while saving epoch {done + 1} of 50; its checkpoint is of epoch {done}"}
    assert line in {f"stopped by {signal.Signals(signum).name}: the run in {out} {stop}; run "
                    f"the same command again with hydra.run.dir={out} to resume it"
                    for stop in where}, line
    assert line in (out / "train.log").read_text()


def test_a_refused_start_changes_nothing_in_the_run_folder(tmp_path, repo, script_starts):
    out = tmp_path / "run"
    run(repo, tmp_path, "trainer.epochs=1", FEW_IMAGES, f"hydra.run.dir={out}",
        starts=script_starts)
    files = ["config.yaml", "hydra.yaml", "overrides.yaml"]
    before = {name: (out / ".hydra" / name).read_bytes() for name in files}
    record = (out / "run.json").read_bytes()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    result = script_starts.run(repo / "scripts" / "train.py",
                               train_line("trainer.epochs=1", FEW_IMAGES, "trainer.lr=0.3",
                                          f"hydra.run.dir={out}"), cwd=tmp_path, env=env,
                               timeout=600)
    assert result.returncode == 2 and "differs in trainer.lr" in result.stderr
    assert {name: (out / ".hydra" / name).read_bytes() for name in files} == before
    assert (out / "run.json").read_bytes() == record


class _RunsCode:
    """An object whose unpickling runs a command (a crafted checkpoint's)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_cannot_run_code_as_it_is_read(tmp_path):
    """Found in review: a checkpoint named as the weights to start from may be someone
    else's, and one holding a crafted object ran its code as it was loaded (weights_only
    was off); it is refused now, in one line naming the object, and never unpickled. A run's
    own checkpoint is read the same way (and its rows for a stop message)."""
    import torch

    from basisconv.checkpoint import load_checkpoint, load_source_weights, saved_epoch_rows
    from basisconv.models import build_model

    model = build_model("resnet8", width=0.25)
    marker = tmp_path / "ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "record": {"epochs": [{"epoch": 1}],
                                                        "note": _RunsCode(marker)}}, path)
    with pytest.raises(ConfigError, match=r"^basis.source_checkpoint=.* it holds a Python "
                                          r"object \(posix.system\) besides tensors and plain "
                                          r"values, which could run code as it is read\); "
                                          r"point basis.source_checkpoint at"):
        load_source_weights(model, str(path))
    with pytest.raises(ConfigError, match=r"^checkpoint .* cannot be read \(it holds a Python"):
        load_checkpoint(path)
    assert saved_epoch_rows(path) == []
    assert not marker.exists()


def test_a_source_checkpoint_that_is_not_one_says_where_to_point_it(tmp_path):
    """basis.source_checkpoint=<a run.json> once said 'delete it (and its .sha256) to start
    over, or set trainer.resume=false': advice for a run's own checkpoint, not a source."""
    import torch

    from basisconv.checkpoint import load_source_weights, save_checkpoint
    from basisconv.models import build_model

    model = build_model("resnet20", width=0.25)
    run = tmp_path / "baseline"
    run.mkdir()
    (run / "run.json").write_text('{"kind": "training"}')
    save_checkpoint(run / "checkpoint.pt", {"model": model.state_dict()})
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    fix = r"point basis.source_checkpoint at the checkpoint.pt of a trained dense run$"
    cases = {
        run / "run.json": rf"is not a checkpoint.pt \(it cannot be read as one: it is not a "
                          rf"file torch.save writes: it begins b'\{{\"kind\": \"training\"}}'\); "
                          rf"{fix}",
        tmp_path / "tensor.pt": rf"holds a Tensor, not a checkpoint; {fix}",
        run: rf"is a directory; name its checkpoint.pt "
             rf"\(basis.source_checkpoint={run / 'checkpoint.pt'}\)$",
        tmp_path: r"is a directory; name its checkpoint.pt$",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=rf"^basis.source_checkpoint={path} {message}") as err:
            load_source_weights(model, str(path))
        assert "delete" not in str(err.value) and "trainer.resume" not in str(err.value)
    # another model's checkpoint: the message says which model its record holds
    other = tmp_path / "other.pt"
    save_checkpoint(other, {"model": build_model("resnet8").state_dict(), "record": {
        "config": {"model": {"name": "resnet8", "width": 1.0}},
        "model": {"basis_layers": ["layer1.0.conv1"]}}})
    with pytest.raises(ConfigError, match=r"does not fit model CifarResNet \(Missing key\(s\) "
                                          r"in state_dict: \"layer1.1.conv1.weight\".*\.\.\.\); "
                                          r"it holds model=resnet8 width=1.0 with 1 basis "
                                          r"layers; it must be a dense checkpoint of the same"):
        load_source_weights(model, str(other))
    with pytest.raises(ConfigError, match=r"^sensitivity.source_checkpoint=.* is not a "
                                          r"checkpoint.pt .*; point sensitivity.source_checkpoint "
                                          r"at"):
        load_source_weights(model, str(run / "run.json"), "sensitivity.source_checkpoint")
    data = bytearray((run / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (run / "checkpoint.pt").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=rf"^basis.source_checkpoint=.* does not match its "
                                          rf"checksum file checkpoint.pt.sha256: it is damaged, "
                                          rf"or was copied .*; {fix}"):
        load_source_weights(model, str(run / "checkpoint.pt"))


def test_a_converted_models_weights_as_a_source_say_so_and_how_to_make_them_dense(tmp_path):
    """Found in review: a converted model's bare state dict (no run record) as the source
    was torch's key mismatch alone (conv weights missing), which does not say why; its
    basis layers are named from its keys, and the fix, to_dense, is named."""
    import torch

    from basisconv.checkpoint import load_source_weights
    from basisconv.models import build_model
    from basisconv.dense_form import to_dense
    from basisconv.surgery import apply_basis

    small = apply_basis(build_model("resnet8", width=0.25), "layer1.*", 0.5)
    path = tmp_path / "small.pt"
    torch.save(small.state_dict(), path)
    with pytest.raises(ConfigError, match=r"does not fit model CifarResNet \(Missing key\(s\) "
                                          r"in state_dict: \"layer1.0.conv1.weight\".*\); it "
                                          r"holds 2 basis layers; it must be a dense checkpoint "
                                          r"of the same model and width \(a converted model's "
                                          r"dense weights are to_dense\(model\).state_dict\(\)\)$"):
        load_source_weights(build_model("resnet8", width=0.25), str(path))
    torch.save({"model": to_dense(small).state_dict()}, path)  # the fix it names
    load_source_weights(build_model("resnet8", width=0.25), str(path))


@pytest.mark.parametrize("script, held, message", [
    ("sensitivity.py", "training", "holds the record (run.json) of a training run, which the "
                                   "sensitivity estimate would overwrite"),
    ("exhaustive_search.py", "sensitivity", "holds the record (run.json) of a sensitivity "
                                            "estimate, which the exhaustive search would "
                                            "overwrite"),
])
def test_a_folder_that_holds_another_kind_of_run_is_refused_not_overwritten(
        tmp_path, repo, script, held, message, script_starts):
    """Found in review: ``scripts/sensitivity.py hydra.run.dir=<a finished training run's
    folder>`` (say, beside the baseline it fine-tunes from) replaced that run's run.json, the
    record the analysis reads, with its own, silently (the exhaustive search the estimate's
    likewise); train.py refuses a folder whose record another config wrote."""
    folder = tmp_path / "run"
    folder.mkdir()
    record = json.dumps({"kind": held, "status": "complete", "config": {"name": "other"}})
    (folder / "run.json").write_text(record)
    done = script_starts.run(repo / "scripts" / script,
                             ["profile=smoke", "logger=none", "model=resnet8",
                              "sensitivity.search_subset_size=1",
                              f"sensitivity.cache_dir={tmp_path / 'cache'}",
                              f"hydra.run.dir={folder}"], cwd=os.getcwd(),
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {folder} {message}; give it a folder of its own"), \
        done.stderr
    assert (folder / "run.json").read_text() == record and not (tmp_path / "cache").exists()


def test_a_resumed_auto_run_keeps_the_forms_its_earlier_epochs_ran(tmp_path, repo, monkeypatch):
    """Found in review: a resumed run (a new process) chooses its forms again and may
    choose others; its record's ``auto_forms`` then named the new process's alone, and
    what the epochs before the resume ran was lost with the old process."""
    from basisconv.kernels import auto
    from interruption import fit_stopped_before

    fastest = {"form": "stacked"}
    monkeypatch.setattr(auto, "_time", lambda form, args, backward: (
        0.0 if form == fastest["form"] else 1.0))
    cfg = compose_tiny(repo, "trainer.epochs=2", "experiment=basis_all", "basis.combine=auto",
                       FEW_IMAGES)
    auto.forget()
    try:
        fit_stopped_before(2, cfg, tmp_path)
        auto.forget()  # as in a new process, whose timings now favour the other form
        fastest["form"] = "dense"
        record = fit(cfg, tmp_path)
    finally:
        auto.forget()
    assert {f["form"] for f in record["auto_forms"]} == {"dense"}
    (earlier,) = record["auto_forms_earlier"]
    assert earlier and {f["form"] for f in earlier} == {"stacked"}


def test_jobs_whose_overrides_differ_but_make_one_config_are_told_which_they_are():
    """Found in the sweeps review: two jobs whose overrides differ but make one config
    (``seed=0,00``, or two configs of a group alike) were told of "a value repeated, e.g.
    seed=0,0, or written two ways, e.g. seed=0,00", examples that fit neither: the line
    names the overrides that differ; jobs Hydra writes alike keep the examples."""
    from basisconv.sweep_checks import same_run_line

    line = same_run_line(["profile=smoke", "selection=all", "seed=0"],
                         ["profile=smoke", "selection=all_alike", "seed=0"])
    assert line.endswith(": selection=all and selection=all_alike make the same config: keep "
                         "one of them; nothing ran"), line
    assert "seed=0,0" not in line, line
    line = same_run_line(["profile=smoke", "seed=0"], ["profile=smoke", "seed=0"])
    assert "seed=0 twice (a value given twice, e.g. seed=0,0, or in spellings Hydra " in line


def test_jobs_apart_in_a_value_too_are_not_said_apart_only_in_hydras_settings():
    """Found by a mutation test (``all`` → ``any``): two jobs of one run whose overrides
    differ in a value's spelling as well as in a Hydra setting repeat that value, and are
    told so; only jobs apart in Hydra's settings alone are said to be."""
    from basisconv.sweep_checks import same_run_line

    line = same_run_line(["seed=0", "hydra.sweep.subdir=a"], ["seed=00", "hydra.sweep.subdir=b"])
    assert "twice, as seed=00 hydra.sweep.subdir=b: seed=0 and seed=00 make" in line, line
    line = same_run_line(["seed=0", "+hydra.sweep.subdir=a"], ["seed=0", "+hydra.sweep.subdir=b"])
    assert "differ only in Hydra's settings (+hydra.sweep.subdir=b, +hydra.sweep.subdir=a)" in line
