"""From run records to tables and plots: the comparison over seeds, the wandb source (with
a stand-in for wandb's API), the files analyze.py writes, and the results notebook."""

import functools
import json
import logging
import os
import re
import time

import pandas as pd
import pytest
from omegaconf import OmegaConf

from basisconv.analysis.notes import timing_line
from basisconv.analysis.report import write_report
from basisconv.analysis.comparison import compare, distinct_curves
from basisconv.analysis.record_sources import read_records, training_records, wandb_records
from basisconv.analysis.runs import curves_frame, run_row, runs_frame
from basisconv.analysis.sensitivity import chosen_table
from basisconv.analysis.tables import display_table, latex
from basisconv.records import device_name
from basisconv.errors import ConfigError


def record(selection="none", size=0.5, seed=0, accuracy=0.9, params=1000, flops=100,
           epoch_seconds=10.0, step=(0.1, 0.2), gpu=None, amp="none"):
    """A run record as Training writes it (only what analysis reads)."""
    epochs = [{"epoch": e, "test_accuracy": accuracy * e / 2, "train_loss": 2.0 / e,
               "epoch_seconds": epoch_seconds} for e in (1, 2)]
    return {
        "status": "complete",
        "config": {"name": f"resnet20-{selection}", "seed": seed,
                   "model": {"name": "resnet20", "width": 0.5},
                   "selection": {"policy": selection, "threshold": 0.01},
                   "basis": {"size": size, "init": "scratch"},
                   "trainer": {"epochs": 2, "amp": amp}, "data": {"train_subset": 5000}},
        "model": {"parameters": params, "forward_flops": flops, "backward_flops": 2 * flops,
                  "basis_layers": [] if selection == "none" else ["layer1.0.conv1"]},
        "epochs": epochs,
        "final": {"test_accuracy": accuracy, "best_test_accuracy": accuracy,
                  "forward_seconds_per_step": step[0], "backward_seconds_per_step": step[1],
                  "mean_epoch_seconds": epoch_seconds, "train_seconds": 2 * epoch_seconds},
        "provenance": {"date": "2026-11-25T05:00:00+00:00", "git": {"commit": "abcdef1234"},
                       "hardware": {"cpu": "AMD EPYC", "gpu": gpu}},
    }


RECORDS = [record(seed=0, accuracy=0.90), record(seed=1, accuracy=0.92),
           record("all", 0.5, 0, 0.80, 500, 50, 5.0, (0.05, 0.1)),
           record("all", 0.5, 1, 0.84, 500, 50, 5.0, (0.05, 0.1)),
           record("all", 0.25, 0, 0.70, 250, 25, 4.0, (0.04, 0.08)),
           record("sensitivity_budget", 0.5, 0, 0.91, 800, 80, 8.0, (0.08, 0.16))]


def sensitivity_record():
    """A sensitivity record with the fields analysis reads (their content aside)."""
    return {"kind": "sensitivity", "status": "complete",
            "config": {"model": {"name": "resnet20", "width": 0.5}, "basis": {"size": 0.5},
                       "selection": {"policy": "sensitivity_budget"}, "trainer": {"amp": "none"}},
            "provenance": {"hardware": {"cpu": "AMD EPYC"}},
            "sensitivity": {"policy": "sensitivity_budget", "key": "k", "chosen": ["conv1"],
                            "dense": {"params": 100, "flops": 1000}, "estimate_seconds": 1.0,
                            "reference": {"accuracy": 0.9}, "pretrained": {"accuracy": 0.8}},
            "table": [{"layer": "conv1", "position": 0, "shape": "16x3x3x3", "num_basis": 8,
                       "reconstruction_error": 0.1, "accuracy_drop": 0.01, "loss_increase": 0.1,
                       "params_saved": 10, "flops_saved": 100, "seconds": 1.0}],
            "estimate_provenance": {"date": "2026-11-25T05:00:00+00:00", "git": {"commit": None},
                                    "hardware": {"cpu": "AMD EPYC"}}}


def write_runs(root, records):
    for i, rec in enumerate(records):
        folder = root / f"run{i}"
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps(rec))


def test_a_skip_training_run_counts_its_mean_step_not_one_that_trains_everything():
    """Found in review: with ``basis.coefficient_update_every=N`` the comparison's training
    FLOPs and theoretical speedup took the backward of a step that trains the
    coefficients, while the measured step time is mostly of steps that skip them; the run
    records the mean over the cycle (``mean_backward_flops``), which the row now takes."""
    skipping = record("all", 0.5, 0, 0.80, 500, 50)
    skipping["model"].update(coefficient_update_every=4, skipped_step_backward_flops=70,
                             mean_backward_flops=78)
    assert run_row(skipping, "x")["backward_flops"] == 78
    assert run_row(record("all", 0.5, 0, 0.80, 500, 50), "x")["backward_flops"] == 100


def test_comparison_averages_seeds_and_compares_with_the_baseline():
    table = compare(runs_frame([(r, "here") for r in RECORDS])).set_index(["selection", "basis_size"])
    base, half = table.loc[("none", "-")], table.loc[("all", 0.5)]
    assert base["seeds"] == 2 and base["test_accuracy"] == pytest.approx(0.91)
    assert base["test_accuracy_std"] == pytest.approx(0.0141421, rel=1e-4)
    assert half["accuracy_change"] == pytest.approx(0.82 - 0.91)
    assert half["params_ratio"] == 0.5 and half["flops_ratio"] == 0.5
    assert half["theory_speedup"] == 2.0
    assert half["step_speedup"] == pytest.approx(2.0) and half["epoch_speedup"] == 2.0
    assert table.loc[("all", 0.25), "step_speedup"] == pytest.approx(0.3 / 0.12)
    # three seeds, as the protocol's rows have: the mean, not the median (found by a
    # helper's mutation test: of two seeds the two are equal)
    three = compare(runs_frame([(r, "here") for r in RECORDS + [record(seed=2, accuracy=0.97)]]))
    assert three.set_index("selection").loc["none", "test_accuracy"] == pytest.approx(0.93)


def test_each_models_dense_baseline_is_the_first_row_whatever_its_folder_is_called():
    """Rows followed the records' sorted paths, so frobenius-decay's ``baseline`` came after
    its ``all-*`` rows (quick's came first only because ``baseline`` < ``basis-*``); the
    other rows keep that order, each model's together."""
    small = [record(sel, size) for sel, size in (("all", 0.25), ("none", 0.5))]
    for run in small:
        run["config"]["model"] = {"name": "resnet8", "width": 0.5}
    runs = [record("all", 0.5), record("all", 0.25), record(), *small]
    table = compare(runs_frame([(r, "here") for r in runs]))
    assert list(zip(table["model"], table["selection"], table["basis_size"])) == [
        ("resnet20", "none", "-"), ("resnet20", "all", 0.5), ("resnet20", "all", 0.25),
        ("resnet8", "none", "-"), ("resnet8", "all", 0.25)]
    assert table.set_index(["model", "selection"]).loc[("resnet8", "all"), "params_ratio"] == 1


def test_the_flop_ratio_is_of_training_flops_forward_and_backward_together():
    """Found by a mutation test: the records above have a backward of twice the forward in
    every run, so a ratio of the forward FLOPs alone passed; a basis layer's backward does
    not shrink as its forward does (its coefficients' gradients)."""
    basis = record("all", 0.5, 0, 0.80, 500, 50)
    basis["model"]["backward_flops"] = 150  # dense: 100 forward + 200 backward
    table = compare(runs_frame([(r, "here") for r in [RECORDS[0], basis]])).set_index("selection")
    assert table.loc["all", "flops_ratio"] == pytest.approx(200 / 300)
    assert table.loc["all", "theory_speedup"] == pytest.approx(1.5)


def test_epoch_time_is_the_median_epoch_so_a_first_epoch_that_compiles_is_not_charged():
    # trainer.compile: the dense run's first epoch also compiled (60 s against 10 s); the
    # mean (35 s) would charge half of that to each epoch and double the epoch speedup
    dense, basis = record(), record("all", 0.5, epoch_seconds=5.0)
    dense["epochs"][0]["epoch_seconds"] = 60.0
    dense["epochs"].append({**dense["epochs"][1], "epoch": 3})
    dense["final"].update(mean_epoch_seconds=80.0 / 3, train_seconds=80.0)
    table = compare(runs_frame([(dense, "a"), (basis, "b")])).set_index("selection")
    assert table.loc["none", "epoch_seconds"] == 10.0
    assert table.loc["all", "epoch_speedup"] == 2.0
    assert table.loc["none", "train_seconds"] == 80.0  # the wall time stays all of it
    # a record from wandb whose history lacks the epoch times gives its mean
    for epoch in basis["epochs"]:
        del epoch["epoch_seconds"]
    assert runs_frame([(basis, "b")])["epoch_seconds"].item() == 5.0


def test_a_warm_up_runs_epoch_time_is_that_of_its_basis_epochs():
    """Found in review: with a dense warm-up (``basis.dense_warmup_epochs``) taking half
    the epochs or more, the median epoch was a dense one, and the row's epoch speedup that
    of the dense model, where its step speedup is the basis model's."""
    dense, warm = record(), record("all", 0.5)
    warm["config"]["basis"]["dense_warmup_epochs"] = 2
    warm["config"]["trainer"]["epochs"] = 3
    warm["epochs"].append({**warm["epochs"][1], "epoch": 3, "epoch_seconds": 5.0})
    dense["config"]["trainer"]["epochs"] = 3  # (the baseline of as many epochs)
    dense["epochs"].append({**dense["epochs"][1], "epoch": 3})
    table = compare(runs_frame([(dense, "a"), (warm, "b")])).set_index("selection")
    assert table.loc["all", "epoch_seconds"] == 5.0 and table.loc["all", "epoch_speedup"] == 2.0
    # the dense baseline's warm-up key is unread: all its epochs count
    dense["config"]["basis"]["dense_warmup_epochs"] = 2
    assert runs_frame([(dense, "a")])["epoch_seconds"].item() == 10.0


def swept(rec, **settings):
    """``rec`` with dotted config keys set, as a sweep's override would."""
    rec = json.loads(json.dumps(rec))
    for key, value in settings.items():
        *groups, last = key.split(".")
        node = rec["config"]
        for group in groups:
            node = node.setdefault(group, {})
        node[last] = value
    return rec


def test_runs_that_differ_beyond_the_columns_are_configurations_not_seeds():
    # -m selection=none,first_k basis.size=0.5 selection.count=2,4 seed=0,1: the counts
    # are two rows of two seeds each, and the dense runs (which read no selection.count)
    # one baseline of two seeds, each trained twice alike; a seed, its derived seeds and the
    # publish path split nothing
    runs = [swept(record(sel, seed=seed, accuracy=acc, params=params), **{
                "selection.count": count, "selection.seed": seed, "sensitivity.seed": seed,
                "publish": f"runs/{sel}-{count}/seed{seed}.json"})
            for sel, count, seed, acc, params in [
                ("none", 2, 0, 0.90, 1000), ("none", 2, 1, 0.92, 1000),
                ("none", 4, 0, 0.90, 1000), ("none", 4, 1, 0.92, 1000),
                ("first_k", 2, 0, 0.60, 800), ("first_k", 2, 1, 0.62, 800),
                ("first_k", 4, 0, 0.80, 600), ("first_k", 4, 1, 0.82, 600)]]
    table = compare(runs_frame([(r, "here") for r in runs])).set_index("settings")
    assert list(table.index) == ["", "selection.count=2", "selection.count=4"]
    assert list(table["seeds"]) == [2, 2, 2]
    assert table.loc["selection.count=2", "test_accuracy"] == pytest.approx(0.61)
    assert table.loc["selection.count=4", "params_ratio"] == pytest.approx(0.6)
    shown = display_table(table.reset_index())
    assert list(shown["settings"]) == ["-", "selection.count=2", "selection.count=4"]
    assert "settings" not in display_table(compare(runs_frame([(r, "x") for r in RECORDS])))


def test_each_row_is_compared_with_the_dense_run_of_its_own_epochs_and_precision():
    """A longer schedule or another precision is another baseline, not the same one."""
    settings = [{}, {"trainer.epochs": 4}, {"trainer.amp": "bf16"}]
    dense = [0.90, 0.95, 0.80]
    runs = [(swept(record(accuracy=a), **s), "a") for a, s in zip(dense, settings)]
    runs += [(swept(record("all", accuracy=0.85), **s), "b") for s in settings]
    table = compare(runs_frame(runs))
    basis = table[table["selection"] == "all"]
    changes = dict(zip(zip(basis["epochs"], basis["precision"]),
                       basis["accuracy_change"].round(6)))
    assert changes == {(2, "fp32"): -0.05, (4, "fp32"): -0.1, (2, "bf16"): 0.05}


def test_each_row_is_compared_with_the_dense_run_of_its_own_training_images():
    """A subset of the training set is another baseline: a basis run on 1000 images is
    not compared with the dense run on 5000."""
    runs = [(swept(record(sel, accuracy=acc), **{"data.train_subset": images}), "a")
            for sel, images, acc in [("none", 5000, 0.90), ("none", 1000, 0.70),
                                     ("all", 5000, 0.85), ("all", 1000, 0.75)]]
    table = compare(runs_frame(runs))
    basis = table[table["selection"] == "all"]
    assert dict(zip(basis["train_images"], basis["accuracy_change"].round(6))) == {
        5000: -0.05, 1000: 0.05}


def test_the_displayed_table_shows_each_ratio_and_a_std_only_over_several_seeds():
    """Parameters and FLOPs saved differently (a half of the parameters, a quarter of the
    FLOPs): each column shows its own ratio, the theory speedup is the FLOPs', and a row of
    one seed shows no ± (a std of one run is no spread)."""
    runs = RECORDS[:2] + [record("all", 0.5, 0, 0.80, 500, 25, 5.0, (0.05, 0.1)),
                          record("all", 0.5, 1, 0.84, 500, 25, 5.0, (0.05, 0.1)),
                          record("all", 0.25, 0, 0.70, 500, 25, 5.0, (0.05, 0.1))]
    shown = display_table(compare(runs_frame([(r, "here") for r in runs])))
    half, quarter = (shown[shown["basis size"] == size].iloc[0] for size in ("0.5", "0.25"))
    assert half["test accuracy (%)"] == "82.00 ± 2.83" and quarter["test accuracy (%)"] == "70.00"
    assert half["parameters"] == "500 (50 %)"
    assert half["training FLOPs / image"].endswith("(25 %)")
    assert half["step speedup (theory)"] == "2.00x (4.00x)"


def test_a_dense_run_swept_alike_is_the_baseline_of_its_own_setting():
    runs = [swept(record(sel, accuracy=acc), **{"trainer.lr": lr}) for sel, lr, acc in
            [("none", 0.05, 0.90), ("none", 0.1, 0.80), ("all", 0.05, 0.85), ("all", 0.1, 0.70)]]
    table = compare(runs_frame([(r, "here") for r in runs])).set_index(["selection", "settings"])
    assert table.loc[("all", "trainer.lr=0.05"), "accuracy_change"] == pytest.approx(-0.05)
    assert table.loc[("all", "trainer.lr=0.1"), "accuracy_change"] == pytest.approx(-0.10)


@pytest.mark.parametrize("order", [1, -1])
def test_a_basis_row_is_compared_with_the_dense_run_of_its_own_settings(order):
    """Found in review: with the dense model alone swept over ``trainer.lr``, the basis
    row's settings label was empty, every dense row tied, and the first one (by folder
    order) was its baseline: +8.65 points against a baseline of another learning rate."""
    runs = [swept(record("none", accuracy=0.90), **{"trainer.lr": 0.05}),
            swept(record("none", accuracy=0.80), **{"trainer.lr": 0.1}),
            swept(record("all", accuracy=0.70), **{"trainer.lr": 0.1})]
    table = compare(runs_frame([(r, "here") for r in runs[::order]]))
    row = table[table["selection"] == "all"].iloc[0]
    assert row["accuracy_change"] == pytest.approx(-0.10) and row["baseline_differs"] == ""


@pytest.mark.parametrize("order", [1, -1])
def test_a_dense_config_two_experiments_trained_is_each_ones_own_baseline(order):
    """Found in review of the fix above: ``experiment=baseline`` and a sweep
    ``selection=none,all`` train one dense config; alike to the last key, the first (by
    folder order) was the baseline of both, the sweep's dense row compared with the other."""
    def runs(name, selection, accuracy):
        return [swept(record(selection, seed=s, accuracy=accuracy), name=name) for s in (0, 1)]
    records = (runs("resnet20-baseline", "none", 0.90) + runs("sweep", "none", 0.86)
               + runs("sweep", "all", 0.80))
    table = compare(runs_frame([(r, "here") for r in records[::order]]))
    change = dict(zip(zip(table["experiment"], table["selection"]), table["accuracy_change"]))
    assert change == pytest.approx({("resnet20-baseline", "none"): 0.0, ("sweep", "none"): 0.0,
                                    ("sweep", "all"): -0.06})


def test_a_row_without_a_dense_run_of_its_settings_says_which_it_is_compared_with(tmp_path):
    """The dense model run only at another learning rate: the closest dense run is the
    baseline, and the table says in which settings it differs."""
    runs = [swept(record("none", seed=s, accuracy=0.9), **{"trainer.lr": 0.05}) for s in (0, 1)]
    runs += [swept(record("all", seed=s, accuracy=0.8), **{"trainer.lr": 0.1}) for s in (0, 1)]
    write_runs(tmp_path / "runs", runs)
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    results = tmp_path / "results"
    md = (results / "comparison-cpu-fp32.md").read_text()
    assert ("No dense baseline in the rows' own settings for resnet20-all (baseline "
            "trainer.lr=0.05): they are compared with the closest dense run" in md)
    table = pd.read_csv(results / "comparison-cpu-fp32.csv", keep_default_na=False)
    assert table["baseline_differs"].tolist() == ["", "trainer.lr=0.05"]
    assert "recipe" not in table and "recipe" not in json.loads(
        (results / "index.json").read_text())["runs"][0]


def test_a_key_older_records_lack_splits_rows_where_newer_runs_set_another_value():
    """Found in review: a key only some records had was ignored, so records written before
    ``basis.fuse_norm`` existed and newer runs with ``basis.fuse_norm=true`` were averaged
    as seeds of one row. A record without it ran as its default (``ADDED_KEYS``)."""
    old = [record("all", seed=s, accuracy=0.8) for s in (0, 1)]
    new = [swept(record("all", seed=s, accuracy=0.3), **{"basis.fuse_norm": True})
           for s in (2, 3)]
    same = [swept(record("all", seed=s, accuracy=0.8), **{"basis.fuse_norm": False})
            for s in (2, 3)]
    table = compare(runs_frame([(r, "here") for r in old + new]))
    assert sorted(table["settings"]) == ["basis.fuse_norm=False", "basis.fuse_norm=True"]
    assert table["seeds"].tolist() == [2, 2]
    # with the default it ran as, an older record is a repeat of a newer one
    table = compare(runs_frame([(r, "here") for r in old + same]))
    assert table["settings"].tolist() == [""] and table["seeds"].tolist() == [4]


def test_an_analysis_leaves_no_table_or_plot_of_runs_that_are_gone(tmp_path):
    """Found in review: after the H200 records were removed (or set aside as rejected),
    the next analysis left their tables and plots in the folder, which the notebook shows
    as current; files the analysis did not write stay."""
    write_runs(tmp_path / "runs", [*RECORDS[:4], record(seed=0, gpu="NVIDIA H200")])
    results = tmp_path / "results"
    results.mkdir()
    (results / "layers-cpu-fp32.json").write_text("{}")  # a benchmark's record
    first = {p.name for p in write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")}
    assert "comparison-h200-fp32.md" in first and "curves-h200-fp32.png" in first
    (tmp_path / "runs" / "run4" / "run.json").unlink()
    second = {p.name for p in write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")}
    assert not any("h200" in name for name in second)
    assert {p.name for p in results.iterdir()} == second | {"layers-cpu-fp32.json"}


def test_an_analysis_of_wandb_runs_leaves_the_local_sensitivity_summaries(tmp_path,
                                                                         monkeypatch):
    """Found in review: a wandb project holds no sensitivity records, so an analysis of
    it wrote no sensitivity summary and removed those of the local analysis before it."""
    from basisconv.analysis import report

    write_runs(tmp_path / "runs", [*RECORDS, sensitivity_record()])
    local = {p.name for p in write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")}
    summaries = {name for name in local if name.startswith("sensitivity-")}
    assert summaries
    monkeypatch.setattr(report, "wandb_records", lambda project, entity=None, **_: [
        (r, "wandb") for r in RECORDS])
    write_report(analyze_cfg(tmp_path, source="wandb"), "python scripts/analyze.py")
    assert all((tmp_path / "results" / name).exists() for name in summaries)


def test_device_names_for_file_names():
    assert device_name({"cpu": "AMD EPYC"}) == "cpu"
    assert device_name({"gpu": "NVIDIA H100 80GB HBM3"}) == "h100"
    assert device_name({"gpu": "NVIDIA A100-SXM4-40GB"}) == "a100"


def test_a_cpu_run_on_a_machine_with_a_gpu_is_tabled_as_a_cpu_run(tmp_path):
    """Found in review: the record lists the machine's GPU whatever the run ran on, and the
    analysis named a trainer.device=cpu run by it, so its CPU times were compared with the
    GPU runs' in one table (a 0.1x "speedup"). ``auto`` takes the GPU."""
    gpu_machine = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "gpu": "NVIDIA H200",
                   "torch_threads": 2}
    assert device_name(gpu_machine, "cpu") == "cpu" and device_name(gpu_machine, "auto") == "h200"
    assert device_name(gpu_machine, "cuda:1") == "h200" and device_name(gpu_machine) == "h200"
    assert device_name(gpu_machine, "cpu:0") == "cpu"  # a device index names the CPU too
    on_cpu, on_gpu = record(seed=0, accuracy=0.9), record(seed=0, accuracy=0.9)
    for rec, device in ((on_cpu, "cpu"), (on_gpu, "auto")):
        rec["config"]["trainer"]["device"] = device
        rec["provenance"] = {**rec["provenance"], "hardware": gpu_machine}
    row_cpu, row_gpu = run_row(on_cpu, "x"), run_row(on_gpu, "x")
    assert (row_cpu["device"], row_cpu["hardware"]) == ("cpu", "AMD EPYC (AVX512)")
    assert row_cpu["timing"] == "AMD EPYC (AVX512), 2 threads"
    assert (row_gpu["device"], row_gpu["hardware"], row_gpu["timing"]) == (
        "h200", "NVIDIA H200", "NVIDIA H200")
    write_runs(tmp_path / "runs", [on_cpu, {**on_gpu, "config": {
        **on_gpu["config"], "seed": 1}}])
    (tmp_path / "results").mkdir()
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    assert {p.name for p in (tmp_path / "results").glob("comparison-*.md")} == {
        "comparison-cpu-fp32.md", "comparison-h200-fp32.md"}


def test_local_records_skip_incomplete_unreadable_and_other_kinds(tmp_path):
    write_runs(tmp_path, RECORDS[:2])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{")
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "run.json").write_text(json.dumps({**RECORDS[0], "status": "running"}))
    (tmp_path / "sens").mkdir()
    (tmp_path / "sens" / "run.json").write_text(json.dumps({"kind": "sensitivity"}))
    assert len(training_records(read_records(tmp_path))) == 2


def test_an_unfinished_run_of_its_own_seed_and_a_file_with_a_config_alone_are_not_read(
        tmp_path):
    """Found by a mutation test, each failing no test before (the running record above is
    a copy of a complete one, counted once as its copy): a run still running, of a seed no
    complete record has, is no training result; and a JSON file holding only a record's
    ``config`` (a record cut down by hand) is a record lacking fields, named unreadable,
    not a JSON file of another kind left out unsaid."""
    write_runs(tmp_path, RECORDS[:1])
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "run.json").write_text(json.dumps({**RECORDS[1], "status": "running"}))
    (tmp_path / "row").mkdir()
    (tmp_path / "row" / "seed2.json").write_text(json.dumps({"config": RECORDS[0]["config"]}))
    unreadable = []
    complete = training_records(read_records(tmp_path, unreadable))
    assert [record["config"]["seed"] for record, _ in complete] == [0]
    assert unreadable == [str(tmp_path / "row" / "seed2.json")]


def test_a_run_folder_named_like_a_json_file_is_read_not_also_unreadable(tmp_path):
    """Found in review: a run in a folder named ``*.json`` (``hydra.run.dir=outputs/v2.json``,
    which keeps its record inside since write_record took it for a folder) was read, and
    the folder itself was also listed unreadable ('Is a directory') under every table."""
    write_runs(tmp_path, RECORDS[:1])
    (tmp_path / "run0").rename(tmp_path / "v2.json")
    unreadable = []
    assert len(training_records(read_records(tmp_path, unreadable))) == 1
    assert unreadable == []


class FakeRun:
    def __init__(self, rec, state="finished"):
        from basisconv.records import wandb_provenance
        self.state, self.config, self.url = state, rec["config"], "https://wandb.example/run"
        self.summary = {**rec["final"], **{f"model/{k}": v for k, v in rec["model"].items()
                                           if k != "basis_layers"},
                        "model/basis_layer_names": " ".join(rec["model"]["basis_layers"]),
                        **wandb_provenance(rec["provenance"])}
        self._history = rec["epochs"]

    def history(self, pandas=False):
        return self._history


class FakeApi:
    def __init__(self, runs):
        self._runs = runs
        self.asked = None

    def runs(self, path):
        self.asked = path
        return self._runs


def test_wandb_source_rebuilds_the_same_rows_as_the_local_records():
    # found in review: a dirty tree, the CPU capability and the threads (the table's
    # commit, hardware and timing columns) were lost on the way through wandb
    records = [{**r, "provenance": {**r["provenance"],
                                    "git": {"commit": "abcdef1234", "dirty": True,
                                            "diff_sha256": "0" * 64},
                                    "hardware": {"cpu": "AMD EPYC", "gpu": None,
                                                 "cpu_capability": "AVX512",
                                                 "torch_threads": 1},
                                    # found in review: wandb's runs lost the profile a
                                    # command made them with (the footers' "made by")
                                    "command": "python scripts/train.py profile=smoke"}}
               for r in RECORDS]
    api = FakeApi([FakeRun(r) for r in records] + [FakeRun(records[0], state="crashed")])
    found = wandb_records("basisconv", "me", api=api)
    assert api.asked == "me/basisconv" and len(found) == len(records)
    remote = runs_frame(found).drop(columns=["where", "date"])
    local = runs_frame([(r, "x") for r in records]).drop(columns=["where", "date"])
    pd.testing.assert_frame_equal(remote, local)
    assert set(local["commit"]) == {"abcdef1-dirty"} and set(remote["profile"]) == {"smoke"}


def test_wandb_source_reads_runs_logged_with_the_commit_and_cpu_alone():
    """Runs logged before the whole git and hardware were kept."""
    run = FakeRun(RECORDS[0])
    for key in ("provenance/git", "provenance/hardware"):
        del run.summary[key]
    (record, _), = wandb_records("basisconv", "me", api=FakeApi([run]))
    assert record["provenance"]["git"] == {"commit": "abcdef1234"}
    assert record["provenance"]["hardware"] == {"cpu": "AMD EPYC", "gpu": None}


def test_wandb_source_skips_other_runs_and_a_project_it_cannot_list_is_one_line():
    """A finished run of the project that is not a training run (no test_accuracy in its
    summary: a sensitivity estimate logged there) is left out; a project wandb cannot list
    (a wrong name, no network) is one line naming the keys to check. (Neither ran in a
    test before the coverage review.)"""
    other = FakeRun(RECORDS[0])
    del other.summary["test_accuracy"]
    found = wandb_records("basisconv", None, api=FakeApi([other, FakeRun(RECORDS[1])]))
    assert [record["config"] for record, _ in found] == [RECORDS[1]["config"]]

    class Unreachable(FakeApi):
        def runs(self, path):
            raise ValueError("Could not find project basisconv")

    with pytest.raises(ConfigError, match=r"^could not list the runs of wandb project "
                                          r"'me/basisconv' \(Could not find project "
                                          r"basisconv\); check wandb.project / wandb.entity"):
        wandb_records("basisconv", "me", api=Unreachable([]))

def test_a_wandb_run_without_a_field_analysis_reads_is_left_out_and_named(tmp_path,
                                                                          monkeypatch):
    """A finished run with a ``test_accuracy`` that lacks another final metric (another
    code's run in the project, one logged by an older version) was a ``KeyError`` trace
    that ended the analysis, and one with a text metric a trace from the tables: each is
    left out and named by its URL, as an unreadable local record is."""
    from basisconv.analysis import report

    lacking, text = FakeRun(RECORDS[0]), FakeRun(RECORDS[2])
    del lacking.summary["train_seconds"]
    text.summary["test_accuracy"] = "0.9"
    lacking.url, text.url = "https://wandb.ai/me/basisconv/runs/a", "https://wandb.ai/b"
    api = FakeApi([lacking, text, FakeRun(RECORDS[1])])
    monkeypatch.setattr(report, "wandb_records", functools.partial(wandb_records, api=api))
    write_report(analyze_cfg(tmp_path, source="wandb"), "python scripts/analyze.py")
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert index["unreadable_runs"] == [lacking.url, text.url] and len(index["runs"]) == 1


def test_a_wandb_run_left_out_is_not_told_to_rebuild_from_a_checkpoint(tmp_path, monkeypatch,
                                                                        caplog):
    """Found in review: a wandb run left out for a missing field (another code's, an older
    version's) was named with a local run folder's hint, "its run.json is rebuilt from its
    checkpoint by running the same command again", which no wandb run has beside it."""
    from basisconv.analysis import report

    lacking = FakeRun(RECORDS[0])
    del lacking.summary["train_seconds"]
    lacking.url = "https://wandb.ai/me/basisconv/runs/a"
    api = FakeApi([lacking, FakeRun(RECORDS[1])])
    monkeypatch.setattr(report, "wandb_records", functools.partial(wandb_records, api=api))
    with caplog.at_level(logging.WARNING, logger="basisconv.analysis.report"):
        write_report(analyze_cfg(tmp_path, source="wandb"), "python scripts/analyze.py")
    (line,) = [r.getMessage() for r in caplog.records if "skipped 1 records" in r.getMessage()]
    assert lacking.url in line and "checkpoint" not in line and "make reproduce" not in line


def analyze_cfg(tmp_path, **values):
    return OmegaConf.create({"profile": "test", "source": "local", "runs_dir": str(tmp_path / "runs"),
                             "out_dir": str(tmp_path / "results"),
                             "wandb": {"project": "basisconv", "entity": None}, **values})


def test_report_writes_tables_and_plots_named_by_device_and_precision(tmp_path):
    write_runs(tmp_path / "runs", RECORDS + [record(gpu="NVIDIA H100 80GB HBM3", amp="bf16")])
    written = {p.name for p in write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")}
    for tag in ("cpu-fp32", "h100-bf16"):
        assert {f"comparison-{tag}.md", f"comparison-{tag}.tex", f"comparison-{tag}.csv",
                f"accuracy-params-{tag}.png", f"curves-{tag}.png"} <= written
    assert "speed-cpu-fp32.png" in written  # a size sweep and a baseline: there is a plot
    out = tmp_path / "results"
    md = (out / "comparison-cpu-fp32.md").read_text()
    assert "91.00 ± 1.41" in md and "profile test; 6 runs on AMD EPYC; commit abcdef1" in md
    assert "\\begin{tabular}" in (out / "comparison-cpu-fp32.tex").read_text()
    assert json.loads((out / "index.json").read_text())["provenance"]["command"] == \
        "python scripts/analyze.py"


def test_a_plot_with_nothing_left_to_draw_is_removed_and_csv_counts_are_exact(tmp_path):
    """Found in review: an analysis without a dense baseline drew no speed plot but left
    the earlier one (its speedups contradicting the new table) beside it; and the CSV
    wrote a count of 11,173,962 as 1.1174e+07."""
    write_runs(tmp_path / "runs", [{**r, "model": {**r["model"], "parameters": 11173962}}
                                   for r in RECORDS])
    write_report(analyze_cfg(tmp_path), "cmd")
    speed = tmp_path / "results" / "speed-cpu-fp32.png"
    assert speed.exists()
    csv = pd.read_csv(tmp_path / "results" / "comparison-cpu-fp32.csv")
    assert (csv["params"] == 11173962).all()
    for baseline in ("run0", "run1"):  # the dense runs
        (tmp_path / "runs" / baseline / "run.json").unlink()
    written = {p.name for p in write_report(analyze_cfg(tmp_path), "cmd")}
    assert "speed-cpu-fp32.png" not in written and not speed.exists()


def test_the_chosen_layers_table_sums_what_the_chosen_layers_save():
    """chosen.md: the chosen rows only, in model order, and their totals as a share of the
    dense model (parameters of its parameters, FLOPs of its FLOPs)."""
    table = pd.DataFrame({"layer": ["c", "a", "b"], "position": [2, 0, 1],
                          "shape": ["8->8 k3"] * 3, "num_basis": [4, 4, 4],
                          "accuracy_drop": [0.01, 0.02, -0.01], "loss_increase": [0.1, 0.2, 0.0],
                          "params_saved": [30, 10, 1000], "flops_saved": [2e6, 1e6, 9e6]})
    lines = chosen_table(table, ["c", "a"], {"params": 400, "flops": 6e7}).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["| a", "| c"]
    assert lines[-1] == "| **total** (2 layers) | | | | | 40 (10.0 %) | 3.00 (5.0 %) |"


@pytest.mark.parametrize("metric, panel, at", [("accuracy_drop", 0, 5.0),
                                               ("loss_increase", 1, 0.05), (None, 0, 5.0)])
def test_the_sensitivity_plot_draws_a_threshold_on_the_panel_of_its_metric(
        tmp_path, monkeypatch, metric, panel, at):
    """Found in review: a loss_increase threshold was drawn on the accuracy-drop panel (at
    100x its value), above layers it did not choose. A record that names no metric has the
    default's, ``accuracy_drop`` (configs/selection/base.yaml, ``rule_in_words``)."""
    from basisconv.analysis import sensitivity as drawn
    figures = []
    monkeypatch.setattr(drawn, "save_figure", lambda fig, path: figures.append(fig) or path)
    table = pd.DataFrame({"layer": ["a", "b"], "position": [0, 1], "shape": ["8->8 k3"] * 2,
                          "num_basis": [4, 4], "accuracy_drop": [0.03, 0.02],
                          "loss_increase": [0.1, 0.01], "params_saved": [30, 10],
                          "flops_saved": [2e6, 1e6]})
    record = {"config": {"model": {"name": "resnet8", "width": 0.5}, "basis": {"size": 0.5},
                         "selection": {"policy": "sensitivity_threshold", "threshold": 0.05,
                                       **({"metric": metric} if metric else {})}},
              "sensitivity": {"key": "k", "policy": "sensitivity_threshold", "chosen": ["b"],
                              "noise": None, "dense": {"params": 400, "flops": 6e7}},
              "table": table.to_dict("records")}
    drawn.draw_run(record, tmp_path)
    dashed = [[line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
              for ax in figures[0].axes]
    assert dashed[panel] == [pytest.approx(at)] and dashed[1 - panel] == []


def test_chosen_md_of_a_time_budget_states_the_measured_times_it_chose_by(tmp_path):
    """With selection.budget_metric=time the layers are chosen by measured step time, not
    FLOPs: chosen.md says what the dense step took and what the chosen layers save of it
    (it showed FLOPs alone: "0 layers, 0.0 %" with nothing saying why)."""
    from basisconv.analysis.sensitivity import draw_run, summarize
    table = pd.DataFrame({"layer": ["a", "b"], "position": [0, 1], "shape": ["8->8 k3"] * 2,
                          "num_basis": [4, 4], "accuracy_drop": [0.01, 0.02],
                          "loss_increase": [0.1, 0.2], "params_saved": [30, 10],
                          "flops_saved": [2e6, 1e6]})
    summary = {"key": "k", "policy": "sensitivity_budget", "chosen": ["a"], "noise": None,
               "dense": {"params": 400, "flops": 6e7},
               "measured_time": {"device": "cuda:0", "dense_step_seconds": 0.02, "layers": [
                   {"layer": "a", "dense_ms": 3.0, "basis_ms": 2.0, "seconds_saved": 1e-3},
                   {"layer": "b", "dense_ms": 1.0, "basis_ms": 1.5, "seconds_saved": -5e-4}]}}
    record = {"config": {"model": {"name": "resnet8", "width": 0.5}, "basis": {"size": 0.5},
                         "selection": {"policy": "sensitivity_budget"}},
              "sensitivity": summary, "table": table.to_dict("records")}
    draw_run(record, tmp_path)
    text = (tmp_path / "chosen.md").read_text()
    assert "dense training step 20.00 ms on cuda:0" in text
    assert "the chosen layers save 1.00 ms (5.0 %)" in text
    assert "slower in basis form (never chosen): b" in text
    # the published page says the same (found in review: it left the times out)
    published = {**sensitivity_record(), "sensitivity": {**sensitivity_record()["sensitivity"],
                                                         **summary},
                 "table": [{**row, "reconstruction_error": 0.1, "seconds": 1.0}
                           for row in record["table"]]}
    (_, page), = [summarize(published, tmp_path, "test", stem="page")]
    assert "dense training step 20.00 ms" in page.read_text()
    del summary["measured_time"]  # a FLOPs or parameter budget: as before
    draw_run(record, tmp_path)
    assert "measured" not in (tmp_path / "chosen.md").read_text()


def test_latex_escapes_what_latex_would_read_otherwise():
    """Selection names (first_k), settings (basis.coefficient_l1), percentages and the std sign
    reach the .tex table; unescaped, ``_`` and ``%`` break or cut its compilation."""
    frame = pd.DataFrame({"selection": ["first_k"], "parameters": ["1,000 (50 %)"],
                          "test accuracy (%)": ["91.00 ± 1.41"]})
    tex = latex(frame, "profile test; basis.coefficient_l1 swept")
    assert "first\\_k" in tex and "50 \\%" in tex and "91.00 $\\pm$ 1.41" in tex
    assert "test accuracy (\\%)" in tex and "basis.coefficient\\_l1" in tex
    assert not re.search(r"(?<!\\)[_%]", tex)


def test_latex_escapes_the_characters_a_users_paths_and_names_bring():
    """A caption names the user's paths, hardware and overrides: ``~/data``, ``R&D``,
    ``#2``, ``$HOME``, ``{a,b}``, ``x^2``, a Windows path; each was written raw (only
    ``%``, ``_`` and ``±`` were escaped), and ``&``, ``#``, ``$`` or ``~`` break or change
    the table's compilation."""
    caption = r"data.root=~/R&D/#2/$HOME/{a,b}/x^2 C:\runs"
    tex = latex(pd.DataFrame({"a&b": ["50 % ± 1"]}), caption)
    assert (r"data.root=\textasciitilde{}/R\&D/\#2/\$HOME/\{a,b\}/x\textasciicircum{}2 "
            r"C:\textbackslash{}runs") in tex
    assert r"a\&b" in tex and r"50 \% $\pm$ 1" in tex


def test_tables_state_the_std_unequal_seeds_and_runs_left_out(tmp_path):
    """A protocol cut off midway: a row with fewer seeds, an unfinished run and a cut-off
    record are named under the table, not averaged in silently."""
    write_runs(tmp_path / "runs", RECORDS[:5])  # baseline and 1/2: seeds 0 1; 1/4: seed 0
    running = {**record("all", 0.25, 1), "status": "running", "final": None}
    running["epochs"] = running["epochs"][:1]
    (tmp_path / "runs" / "cut").mkdir()
    (tmp_path / "runs" / "cut" / "run.json").write_text(json.dumps(running))
    (tmp_path / "runs" / "broken.json").write_text('{"kind": "training", "status": "comp')
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    out = tmp_path / "results"
    md = (out / "comparison-cpu-fp32.md").read_text()
    assert "mean ± sample standard deviation (n - 1 in the denominator)" in md
    assert "the change ± its standard error paired by seed" in md  # (review: unsaid)
    assert "not a 95 % interval" in md and "each run's median epoch" in md
    assert "most have seeds 0 1; resnet20-all at basis size 0.25: 0)" in md
    assert f"1 unfinished run: {tmp_path / 'runs' / 'cut'} at epoch 1 of 2" in md
    assert "1 unreadable record" in md
    assert "$\\pm$ sample standard deviation" in (out / "comparison-cpu-fp32.tex").read_text()
    index = json.loads((out / "index.json").read_text())
    assert index["unfinished_runs"] == [f"{tmp_path / 'runs' / 'cut'} at epoch 1 of 2"]


def diverged_record(seed=1, lr=1e6, **change):
    """A training record as a run that diverged in its first epoch writes it."""
    rec = {**record("all", 0.25, seed), "status": "diverged", "final": None, "epochs": [],
           "diverged": f"the test loss became nan with trainer.lr={lr}", **change}
    rec["config"] = {**rec["config"], "trainer": {**rec["config"]["trainer"], "lr": lr}}
    return rec


def test_a_diverged_run_is_named_as_diverged_under_the_table_not_left_out_unsaid(tmp_path):
    """Found in the sweep review: a learning-rate sweep's job that diverged in its first
    epoch left no record and vanished from the tables without a word; its record now says
    ``diverged`` (basisconv.training), and the tables say which run, in which epoch, at
    which learning rate."""
    write_runs(tmp_path / "runs", RECORDS[:2])
    (tmp_path / "runs" / "lr-high").mkdir()
    (tmp_path / "runs" / "lr-high" / "run.json").write_text(json.dumps(diverged_record()))
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    said = (f"{tmp_path / 'runs' / 'lr-high'} diverged in epoch 1 of 2 (the test loss became "
            f"nan with trainer.lr=1000000.0)")
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert index["unfinished_runs"] == [said] and index["unreadable_runs"] == []
    assert f"1 unfinished run: {said}." in (
        tmp_path / "results" / "comparison-cpu-fp32.md").read_text()


def test_a_folder_of_diverged_runs_alone_says_so(tmp_path):
    publish_records(tmp_path / "runs", [diverged_record(0), diverged_record(1, 10.0)])
    with pytest.raises(ConfigError, match="found 2 diverged training; records are"):
        write_report(analyze_cfg(tmp_path), "cmd")


@pytest.mark.parametrize("damage", [{"diverged": None}, {"diverged": 3}],
                         ids=["null", "number"])
def test_a_diverged_record_without_what_diverged_is_unreadable(tmp_path, damage):
    """The tables name what diverged from the record's ``diverged`` text: a record that
    says ``diverged`` without it is listed unreadable, as one lacking another field is."""
    from basisconv.records import missing_fields

    assert missing_fields({**diverged_record(), "kind": "training"}) == []
    lacking = {k: v for k, v in diverged_record().items() if k != "diverged"}
    assert missing_fields({**lacking, "kind": "training"}) == ["diverged"]
    publish_records(tmp_path / "runs", [RECORDS[0], {**diverged_record(), **damage}])
    unreadable = []
    assert len(read_records(tmp_path / "runs", unreadable)) == 1
    assert unreadable == [str(tmp_path / "runs" / "row1" / "seed1.json")]


def test_an_unfinished_published_record_is_named_by_its_file_not_its_rows_folder(tmp_path):
    """A published ``<row>/seed<k>.json`` still running was named by ``<row>``, which holds
    every seed; a run folder's ``run.json`` is named by its folder, as before."""
    write_runs(tmp_path / "runs", RECORDS[:2])
    running = {**record("all", 0.25, 1), "status": "running", "final": None}
    running["epochs"] = running["epochs"][:1]
    (tmp_path / "runs" / "all-0.25").mkdir()
    (tmp_path / "runs" / "all-0.25" / "seed1.json").write_text(json.dumps(running))
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    name = f"{tmp_path / 'runs' / 'all-0.25' / 'seed1.json'} at epoch 1 of 2"
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert index["unfinished_runs"] == [name]
    assert f"1 unfinished run: {name}." in (
        tmp_path / "results" / "comparison-cpu-fp32.md").read_text()


def test_rows_without_a_baseline_are_named(tmp_path):
    """Once each: the rows of a size sweep (one run name) were the same name once a row."""
    write_runs(tmp_path / "runs", RECORDS[2:5])  # resnet20-all at sizes 1/2 and 1/4
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    md = (tmp_path / "results" / "comparison-cpu-fp32.md").read_text()
    assert "No dense baseline (selection none) of the same model, width, epochs, data and " \
           "test images for resnet20-all: their columns against it are empty ('-'); train one " \
           "(experiment=baseline with their settings) into the runs folder and analyze " \
           "again." in md


def test_training_curves_keep_configurations_of_other_models_apart(tmp_path, monkeypatch):
    from basisconv.analysis import figures

    narrow = record(seed=0, accuracy=0.5)
    narrow["config"]["model"]["width"] = 0.25
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    figures.training_curves(curves_frame([(RECORDS[0], "a"), (narrow, "b")]),
                            tmp_path / "curves.png", "note")
    lines = drawn[0].axes[0].get_lines()
    assert sorted(line.get_label() for line in lines) == ["none (resnet20 x0.25)",
                                                          "none (resnet20 x0.5)"]
    assert sorted(line.get_ydata()[-1] for line in lines) == [50.0, 90.0]  # not their mean
    figures.pyplot().close(drawn[0])


def test_speed_plot_sets_each_model_beside_its_own_baseline(tmp_path, monkeypatch):
    from basisconv.analysis import figures

    narrow = [record(step=(0.4, 0.8)), record("all", 0.5, step=(0.2, 0.4))]
    for rec in narrow:
        rec["config"]["model"]["width"] = 0.25
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    table = compare(runs_frame([(r, "a") for r in [RECORDS[0], RECORDS[2], *narrow]]))
    figures.speed_vs_basis_size(table, tmp_path / "speed.png", "note")
    dense = {line.get_label(): line.get_ydata()[0] for line in drawn[0].axes[0].get_lines()
             if line.get_label().startswith("dense, forward")}
    assert dense == pytest.approx({"dense, forward (resnet20 x0.5)": 100,
                                   "dense, forward (resnet20 x0.25)": 400})
    figures.pyplot().close(drawn[0])


def test_plots_keep_swept_settings_apart(tmp_path, monkeypatch):
    """A sweep over trainer.lr: the curves and the speed plot draw each setting beside the
    dense run of its own setting, as the table compares them."""
    from basisconv.analysis import figures

    runs = [swept(record(sel, step=step, accuracy=acc), **{"trainer.lr": lr})
            for sel, lr, step, acc in [("none", 0.05, (0.4, 0.8), 0.9), ("none", 0.1, (0.3, 0.6), 0.8),
                                       ("all", 0.05, (0.2, 0.4), 0.7), ("all", 0.1, (0.1, 0.2), 0.6)]]
    pairs = [(r, "a") for r in runs]
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    figures.speed_vs_basis_size(compare(runs_frame(pairs)), tmp_path / "speed.png", "note")
    dense = {line.get_label(): line.get_ydata()[0] for line in drawn[0].axes[0].get_lines()
             if line.get_label().startswith("dense, forward")}
    assert dense == pytest.approx({"dense, forward (trainer.lr=0.05)": 400,
                                   "dense, forward (trainer.lr=0.1)": 300})
    figures.training_curves(curves_frame(pairs), tmp_path / "curves.png", "note")
    finals = {line.get_label(): line.get_ydata()[-1] for line in drawn[1].axes[0].get_lines()}
    assert finals == pytest.approx({"none (trainer.lr=0.05)": 90, "none (trainer.lr=0.1)": 80,
                                    "all m=0.5 (trainer.lr=0.05)": 70,
                                    "all m=0.5 (trainer.lr=0.1)": 60})
    for fig in drawn:
        figures.pyplot().close(fig)


def test_a_speed_plot_of_fractions_and_counts_says_which_rows_it_leaves_out(tmp_path,
                                                                           monkeypatch, caplog):
    """Found in review (stop 72): a sweep of sizes given both ways (basis.size=0.5,8) drew
    the fractions and left the count rows out of the plot without a word."""
    from basisconv.analysis import figures

    runs = [record(seed=0), record("all", 0.5, 0, step=(0.05, 0.1)),
            record("all", 8, 0, step=(0.04, 0.08))]
    table = compare(runs_frame([(r, "a") for r in runs]))
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    with caplog.at_level("WARNING", logger="basisconv.analysis.figures"):
        figures.speed_vs_basis_size(table, tmp_path / "speed.png", "note")
    assert "rows with a number of filters (basis.size=8) are in the table only" in caplog.text
    sizes = {x for line in drawn[0].axes[0].get_lines() for x in line.get_xdata()}
    assert 8 not in sizes and 0.5 in sizes
    figures.pyplot().close(drawn[0])


def test_speed_plot_draws_the_baseline_the_table_compares_with(tmp_path, monkeypatch):
    """A sweep over trainer.lr and a basis key the dense runs do not read: each basis row
    is compared (table) and drawn (plot) beside the dense run of its own trainer.lr, though
    its settings also name the basis key and so match no dense run's exactly."""
    from basisconv.analysis import figures

    runs = [swept(record(sel, step=step), **{"trainer.lr": lr, "basis.coefficient_l1": l1})
            for sel, lr, l1, step in [
                ("none", 0.05, 0.0, (0.4, 0.8)), ("none", 0.1, 0.0, (0.3, 0.6)),
                ("all", 0.05, 0.0, (0.2, 0.4)), ("all", 0.05, 0.001, (0.2, 0.4)),
                ("all", 0.1, 0.0, (0.1, 0.2)), ("all", 0.1, 0.001, (0.1, 0.2))]]
    table = compare(runs_frame([(r, "a") for r in runs]))
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    figures.speed_vs_basis_size(table, tmp_path / "speed.png", "note")
    dense = [(line.get_label(), line.get_ydata()[0]) for line in drawn[0].axes[0].get_lines()
             if line.get_label().startswith("dense, forward")]
    # each dense run once (both basis settings of one rate share it), named by its settings
    assert dict(dense) == pytest.approx({
        "dense, forward (trainer.lr=0.05)": 400,
        "dense, forward (trainer.lr=0.1)": 300}) and len(dense) == 2
    speedups = table[table["selection"] == "all"].set_index("settings")["step_speedup"]
    assert speedups.to_dict() == pytest.approx({
        "basis.coefficient_l1=0.0, trainer.lr=0.05": 2,
        "basis.coefficient_l1=0.001, trainer.lr=0.05": 2,
        "basis.coefficient_l1=0.0, trainer.lr=0.1": 3,
        "basis.coefficient_l1=0.001, trainer.lr=0.1": 3})
    figures.pyplot().close(drawn[0])


def test_equal_seeds_are_not_flagged_and_a_repeated_seed_is():
    from basisconv.analysis.notes import seeds_line

    runs = runs_frame([(r, "here") for r in RECORDS[:4]])
    assert seeds_line(runs) == ""
    twice = runs_frame([(r, "here") for r in RECORDS[:4] + [RECORDS[0]]])
    assert "resnet20-none: 0 0 1" in seeds_line(twice)
    # found in review: the rows of a size sweep were listed by one name, once per size
    sweep = runs_frame([(r, "here") for r in RECORDS[:5] + [record("all", 0.125, 0)]])
    assert ("resnet20-all at basis size 0.25: 0; resnet20-all at basis size 0.125: 0"
            in seeds_line(sweep))


def test_notes_under_the_table_name_a_swept_row_by_its_settings():
    from basisconv.analysis.notes import baseline_line, seeds_line

    runs = runs_frame([(swept(record("all", seed=seed), **{"trainer.lr": lr}), "a")
                       for lr, seeds in ((0.05, (0, 1)), (0.1, (0,))) for seed in seeds])
    assert "; resnet20-all (trainer.lr=0.1) at basis size 0.5: 0)" in seeds_line(runs)
    assert "for resnet20-all (trainer.lr=0.05), resnet20-all (trainer.lr=0.1):" in \
        baseline_line(compare(runs))


def test_a_mean_count_of_basis_layers_is_not_rounded_to_a_whole_one():
    from basisconv.analysis.tables import display_table

    one, two = record("random", seed=0), record("random", seed=1)
    two["model"]["basis_layers"] = ["layer1.0.conv1", "layer1.0.conv2"]
    shown = display_table(compare(runs_frame([(one, "a"), (two, "b")])))
    assert shown["basis layers"].tolist() == ["1.5"]


@pytest.mark.parametrize("source, overrides, said", [
    ("local", ["wandb.project=x"], "source=local does not read wandb.project=x; source=wandb "
                                   "reads it"),
    ("wandb", ["source=wandb", "runs_dir=here"], "source=wandb does not read runs_dir=here"),
    ("wandb", ["source=wandb", "wandb.project=x"], None),
    ("local", ["runs_dir=here"], None)])
def test_a_key_of_the_source_not_read_is_said_unread(monkeypatch, caplog, source, overrides,
                                                     said):
    """Found in review: ``scripts/analyze.py wandb.project=x`` (without ``source=wandb``)
    analysed the local records, unsaid."""
    from omegaconf import OmegaConf

    from basisconv import unread

    monkeypatch.setattr(unread.HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(unread, "typed_overrides", lambda: overrides)
    with caplog.at_level("WARNING", logger=unread.log.name):
        unread.warn_unread_source_overrides(OmegaConf.create({"source": source}))
    warnings = [r.getMessage() for r in caplog.records]
    assert (warnings == []) if said is None else (len(warnings) == 1 and said in warnings[0])


def test_no_runs_is_one_clear_error(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match="no complete training run found.*make reproduce"):
        write_report(analyze_cfg(tmp_path), "cmd")


def test_results_notebook_runs_on_generated_results(tmp_path, repo, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient
    from traitlets.config import Config

    write_runs(tmp_path / "runs", RECORDS)
    (tmp_path / "runs" / "sensitivity.json").write_text(json.dumps(sensitivity_record()))
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    notebook = nbformat.read(repo / "notebooks" / "results.ipynb", as_version=4)
    monkeypatch.setenv("BASISCONV_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("BASISCONV_RUNS", str(tmp_path / "runs"))
    notebook.cells.append(nbformat.v4.new_code_cell("print(sorted(pivot.columns))"))
    # The kernel's channels are Unix sockets under tmp_path, not TCP ports: free ports picked
    # and then bound could be taken by a test in another worker process in between. Set by
    # config, so that the client makes, and so shuts down, its kernel and channels itself (a
    # kernel manager passed in is left open, and its channels warned when collected during a
    # later test of this process).
    kernel = Config({"KernelManager": {"transport": "ipc", "ip": str(tmp_path / "kernel")}})
    NotebookClient(notebook, config=kernel, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(repo / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    shown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert shown[0].startswith("### comparison-cpu-fp32")  # the comparison table first
    assert any(md.startswith("### sensitivity-resnet20-m0.5-cpu-fp32") for md in shown)
    # the repository's speed summary, its training-memory table included
    assert any(md.startswith("### speed-summary") and "## Training memory" in md for md in shown)
    # the per-epoch plot keeps the table's rows apart: resnet20-all's two basis sizes
    assert notebook.cells[-1].outputs[0]["text"].strip() == str(sorted([
        "resnet20-none -", "resnet20-all 0.5", "resnet20-all 0.25",
        "resnet20-sensitivity_budget 0.5"]))


def test_results_notebook_shows_the_committed_quick_results(repo, monkeypatch):
    """Found in review: the notebook was run only on results made in the test, never on
    what it shows by default, the committed ``results/quick`` (records of older commits):
    its code cells, in order, in this process (no kernel), from ``notebooks/`` as Jupyter
    starts it; its table of runs is the one ``index.json`` lists."""
    nbformat = pytest.importorskip("nbformat")
    display = pytest.importorskip("IPython.display")
    import matplotlib.pyplot as plt

    results = repo / "results" / "quick"
    if not (results / "index.json").is_file() or not (results / "runs").is_dir():
        pytest.skip("no committed results/quick here")
    for name in ("BASISCONV_RESULTS", "BASISCONV_RUNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(repo / "notebooks")
    shown = []
    monkeypatch.setattr(display, "display", lambda *objects: shown.extend(objects))
    notebook = nbformat.read(repo / "notebooks" / "results.ipynb", as_version=4)
    namespace = {}
    try:
        for cell in notebook.cells:
            if cell.cell_type == "code":
                exec(cell.source, namespace)
    finally:
        plt.close("all")
    tables = [item.data for item in shown if isinstance(item, display.Markdown)
              and item.data.startswith("### ")]
    assert tables[0].startswith("### comparison-")
    images = {os.path.basename(item.filename) for item in shown
              if isinstance(item, display.Image)}
    assert {png.name for png in results.glob("*.png")} <= images
    indexed = json.loads((results / "index.json").read_text())["runs"]
    keys = ["experiment", "seed", "test_accuracy"]
    table = namespace["runs"][namespace["columns"]]
    assert sorted(map(tuple, table[keys].values.tolist())) == \
        sorted(tuple(run[key] for key in keys) for run in indexed)


def test_results_notebook_falls_back_to_the_run_folders_of_the_profile_it_shows(
        tmp_path, repo, monkeypatch):
    """results/paper without published records shows outputs/paper's runs, not quick's."""
    nbformat = pytest.importorskip("nbformat")
    results = tmp_path / "results" / "paper"
    results.mkdir(parents=True)
    (results / "index.json").write_text(json.dumps({"provenance": {"date": "d", "command": "c"},
                                                    "files": []}))
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.setenv("BASISCONV_RESULTS", str(results))
    monkeypatch.delenv("BASISCONV_RUNS", raising=False)
    notebook = nbformat.read(repo / "notebooks" / "results.ipynb", as_version=4)
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    namespace = {}
    exec(first.source, namespace)
    assert namespace["RUNS"] == tmp_path / "outputs" / "paper"


def test_results_notebook_reads_relative_folders_from_the_repository_root(
        tmp_path, repo, monkeypatch):
    """Found in review: ``BASISCONV_RESULTS=results/nine-seeds/quick``, a folder named as the
    READMEs name it, was read from the kernel's folder (Jupyter starts it in notebooks/),
    and the notebook said the folder held no analysis and to point it at one."""
    nbformat = pytest.importorskip("nbformat")
    results = tmp_path / "results" / "nine-seeds" / "quick"
    (results / "runs").mkdir(parents=True)
    (results / "index.json").write_text(json.dumps({"provenance": {"date": "d", "command": "c"},
                                                    "files": []}))
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.setenv("BASISCONV_RESULTS", "results/nine-seeds/quick")
    monkeypatch.setenv("BASISCONV_RUNS", "results/nine-seeds/quick/runs")
    notebook = nbformat.read(repo / "notebooks" / "results.ipynb", as_version=4)
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    namespace = {}
    exec(first.source, namespace)
    assert namespace["RESULTS"] == results and namespace["RUNS"] == results / "runs"
    monkeypatch.setenv("BASISCONV_RESULTS", str(results))  # an absolute path stays itself
    monkeypatch.delenv("BASISCONV_RUNS")
    exec(first.source, namespace)
    assert namespace["RESULTS"] == results and namespace["RUNS"] == results / "runs"


def test_results_notebook_names_the_fix_for_a_folder_without_an_analysis(tmp_path, repo,
                                                                        monkeypatch):
    """Found in review: a results folder without ``index.json`` (a profile not analysed
    yet, a typo in BASISCONV_RESULTS) was a bare FileNotFoundError of the file."""
    nbformat = pytest.importorskip("nbformat")
    monkeypatch.setenv("BASISCONV_RESULTS", str(tmp_path / "results" / "paper"))
    notebook = nbformat.read(repo / "notebooks" / "results.ipynb", as_version=4)
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    with pytest.raises(FileNotFoundError, match=r"paper holds no analysis \(index.json\): "
                                                r"make reproduce PROFILE=<profile>"):
        exec(first.source, {})


def test_results_notebook_names_the_file_and_the_fix_for_a_cut_off_index(tmp_path, repo,
                                                                         monkeypatch):
    """Found in review (atomic writes audit): an ``index.json`` cut off (a copy interrupted,
    a merge's conflict markers) was a bare JSONDecodeError naming neither the file nor how
    it is had back."""
    nbformat = pytest.importorskip("nbformat")
    results = tmp_path / "results"
    analysed_folder(results, tmp_path / "runs", monkeypatch)
    index = results / "index.json"
    index.write_text(index.read_text()[:20])
    notebook = nbformat.read(repo / "notebooks" / "results.ipynb", as_version=4)
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    with pytest.raises(ValueError, match=rf"{re.escape(str(index))} is not readable JSON "
                                         r"\(.*\); .*make analyze PROFILE=<profile>"):
        exec(first.source, {})


def test_results_notebook_runs_table_tells_apart_runs_that_differ_in_settings(
        tmp_path, monkeypatch, repo):
    """Found in review: the notebook's table of runs showed results/frobenius-decay's runs
    with the factors decayed and with Frobenius decay as identical rows (same experiment,
    selection, basis size, seed): the settings that tell them apart, which the comparison
    and the curves show, were not among its columns."""
    pytest.importorskip("nbformat")
    write_runs(tmp_path / "runs", [swept(record("all", seed=seed),
                                         **{"basis.frobenius_decay": decay})
                                   for decay in (False, True) for seed in (0, 1)])
    analysed_folder(tmp_path / "results", tmp_path / "runs", monkeypatch)
    namespace = {}
    table = notebook_runs_table(repo, namespace)
    assert not table.duplicated().any()
    assert table["settings"].tolist() == ["basis.frobenius_decay=False"] * 2 + \
        ["basis.frobenius_decay=True"] * 2
    # runs that differ in no setting keep the table as it was, without an empty column
    write_runs(tmp_path / "plain", RECORDS)
    namespace["RUNS"] = tmp_path / "plain"
    assert "settings" not in notebook_runs_table(repo, namespace).columns


def analysed_folder(results, runs, monkeypatch):
    """``results`` made an analysis's folder (its ``index.json``) for the notebook to show,
    with the run records under ``runs``, as ``BASISCONV_RESULTS``/``BASISCONV_RUNS`` name
    them."""
    results.mkdir()
    (results / "index.json").write_text(json.dumps({"provenance": {"date": "d", "command": "c"},
                                                    "files": []}))
    monkeypatch.setenv("BASISCONV_RESULTS", str(results))
    monkeypatch.setenv("BASISCONV_RUNS", str(runs))


def notebook_runs_table(repo, namespace):
    """The table of runs the results notebook shows (its runs cell's value), its cells run
    in ``namespace``: the first cell too when the namespace does not hold its names yet."""
    import ast

    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(repo / "notebooks" / "results.ipynb", as_version=4)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    if "RUNS" not in namespace:
        exec(code[0], namespace)
    cell = ast.parse(next(source for source in code if "runs_frame(records)" in source))
    shown = ast.Expression(cell.body.pop().value)  # the cell's value: the table it shows
    exec(compile(cell, "runs cell", "exec"), namespace)
    return eval(compile(shown, "runs cell", "eval"), namespace)


def test_results_notebook_runs_table_says_what_and_when_each_run_was_timed_on(
        tmp_path, monkeypatch, repo):
    """Found in review: the notebook's table of runs showed each run's epoch seconds beside
    its commit alone: results/frobenius-decay's runs (one thread, 6.5 s epochs) and
    results/quick's (two threads, 2.9 s) looked alike; the hardware, threads and date their
    records hold were not shown."""
    runs = [record(seed=seed) for seed in (0, 1)]
    for rec, threads, day in zip(runs, (1, 2), ("2026-12-01", "2026-12-05")):
        rec["provenance"] = {**rec["provenance"], "date": f"{day}T00:00:00+00:00",
                             "hardware": {"cpu": "AMD EPYC", "torch_threads": threads}}
    write_runs(tmp_path / "runs", runs)
    analysed_folder(tmp_path / "results", tmp_path / "runs", monkeypatch)
    table = notebook_runs_table(repo, {}).sort_values("seed")
    assert table["timing"].tolist() == ["AMD EPYC, 1 thread", "AMD EPYC, 2 threads"]
    assert table["date"].str[:10].tolist() == ["2026-12-01", "2026-12-05"]


def test_results_notebook_names_the_commit_its_analysis_was_made_at(tmp_path, repo,
                                                                   monkeypatch, capsys):
    """Found in review: the notebook's first line said when and by which command the tables
    were made, not at which commit (index.json holds it; results/nine-seeds/quick's tables
    were made again at 57361cd, a day after its runs)."""
    nbformat = pytest.importorskip("nbformat")
    results = tmp_path / "results"
    results.mkdir()
    provenance = {"date": "d", "command": "c", "git": {"commit": "57361cd2143d", "dirty": True}}
    (results / "index.json").write_text(json.dumps({"provenance": provenance, "files": []}))
    monkeypatch.setenv("BASISCONV_RESULTS", str(results))
    notebook = nbformat.read(repo / "notebooks" / "results.ipynb", as_version=4)
    exec(next(cell for cell in notebook.cells if cell.cell_type == "code").source, {})
    assert capsys.readouterr().out.splitlines()[0] == "made d by c at 57361cd-dirty"


def test_make_analyze_reads_the_folder_make_reproduce_wrote(repo):
    """make smoke keeps its records in outputs/smoke/results/runs, not results/smoke/runs;
    found in review: with RESULTS_DIR=<dir> (the README's run-everything-again command),
    make analyze rewrote the committed results/<profile>/ from its records instead."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("no make here")

    def dry(*variables):
        return subprocess.run(["make", "-n", "-o", ".venv/.installed", "analyze", *variables],
                              cwd=repo, capture_output=True, text=True, check=True).stdout

    assert ("profile=smoke \"runs_dir='outputs/smoke/results/runs'\" "
            "\"out_dir='outputs/smoke/results'\"") in dry("PROFILE=smoke")
    assert "runs_dir" not in dry("PROFILE=quick")
    assert "profile=quick \"runs_dir='/tmp/x/quick/runs'\" \"out_dir='/tmp/x/quick'\"" in dry(
        "PROFILE=quick", "RESULTS_DIR=/tmp/x")
    assert "\"runs_dir='o/smoke/results/runs'\" \"out_dir='o/smoke/results'\"" in dry(
        "PROFILE=smoke", "RESULTS_DIR=/tmp/x", "OUTPUTS=o")
    # found in review: with source=wandb the analysis reads no runs_dir, and the one make
    # passed was warned of as the user's unread key
    wandb = dry("PROFILE=smoke", "ARGS=source=wandb")
    assert "runs_dir" not in wandb and "\"out_dir='outputs/smoke/results'\" source=wandb" in wandb


@pytest.mark.parametrize("name", ["a b", "it's", 'say "x"', "a`b`", "a${x}", "a$b", "a\\"])
def test_make_analyze_reads_a_folder_whose_name_has_a_space(repo, tmp_path, name):
    """Found in review: make reproduce took an OUTPUTS folder with a space, and make analyze
    on it failed with "cannot parse the override 'b/smoke/results/runs'": the folders went
    to the shell and to Hydra bare. And (found later) a quote in the name, which make
    reproduce takes too, ended the shell's or Hydra's quotes, and backquotes ran a command;
    and ``${x}``, in Hydra's quotes still, was read as an interpolation ("Interpolation key
    'x' not found"). The recipe runs (its shell is the test), with a python that prints
    what it is given."""
    import json
    import shutil
    import subprocess
    import sys

    from hydra import compose, initialize_config_dir

    if shutil.which("make") is None:
        pytest.skip("no make here")
    outputs = tmp_path / name
    given = tmp_path / "python"
    given.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import json, sys; "
                     f"print(json.dumps(sys.argv[2:]))' \"$@\"\n")
    given.chmod(0o755)
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", "-o", ".venv/.installed", "analyze",
         "PROFILE=smoke", f"OUTPUTS={str(outputs).replace('$', '$$')}",  # (make's $)
         f"PY={given}"], cwd=repo,
        capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr, result.stderr
    overrides = json.loads(result.stdout)  # as the shell gives them to the analysis
    with initialize_config_dir(config_dir=str(repo / "configs" / "analysis"),
                               version_base="1.3"):
        cfg = compose("analyze", overrides=overrides)
    assert (cfg.runs_dir, cfg.out_dir) == (f"{outputs}/smoke/results/runs",
                                           f"{outputs}/smoke/results")


def test_analyze_config_takes_the_profile_and_source(repo):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(repo / "configs" / "analysis"), version_base="1.3"):
        cfg = compose("analyze", overrides=["profile=paper", "source=wandb", "wandb.entity=me"])
    assert (cfg.runs_dir, cfg.out_dir, cfg.source, cfg.wandb.entity) == \
        ("results/paper/runs", "results/paper", "wandb", "me")


def test_the_smoke_profile_analysed_by_hand_keeps_out_of_the_committed_results(repo):
    """Found in review: ``scripts/analyze.py profile=smoke`` run by hand (make analyze and
    reproduce.sh give both folders) read ``results/smoke/runs`` and wrote its tables into
    ``results/smoke/``, where no smoke output may land: its records and tables stay in
    ``outputs/smoke/results/`` (docs/reproducing.md), with ``runs_dir`` given alone too."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(repo / "configs" / "analysis"), version_base="1.3"):
        smoke = compose("analyze", overrides=["profile=smoke"])
        runs_given = compose("analyze", overrides=["profile=smoke", "runs_dir=elsewhere"])
    assert (smoke.runs_dir, smoke.out_dir) == ("outputs/smoke/results/runs",
                                               "outputs/smoke/results")
    assert runs_given.out_dir == "outputs/smoke/results"


def test_analyze_config_has_a_schema_and_refuses_what_nothing_reads(repo, tmp_path):
    """Found in review: ``runs_dir=null`` was a TypeError deep in the analysis, ``+foo=1``
    was taken silently, and an empty ``out_dir=`` wrote into the working folder saying
    "to /"."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(config_dir=str(repo / "configs" / "analysis"), version_base="1.3"):
        for override in ("runs_dir=null", "out_dir=null", "wandb.project=null"):
            with pytest.raises(ConfigCompositionException, match=f"^Error merging override {override}$"):
                compose("analyze", overrides=[override])
        added = compose("analyze", overrides=["+foo=1", "+wandb.projekt=x"])
    with pytest.raises(ConfigError, match=r"(?=.*\bfoo\b)(?=.*wandb\.projekt \(did you mean "
                                          r"wandb\.project\?\)).* are not config keys"):
        write_report(OmegaConf.merge(added, analyze_cfg(tmp_path)), "cmd")
    for key in ("runs_dir", "out_dir"):
        with pytest.raises(ConfigError, match=f"^{key} is empty"):
            write_report(analyze_cfg(tmp_path, **{key: ""}), "cmd")
        # found by fuzzing: out_dir=~/x (the shell leaves it) wrote into a folder named ~
        with pytest.raises(ConfigError, match=rf"^{key}='~/x': a path starting with ~"):
            write_report(analyze_cfg(tmp_path, **{key: "~/x"}), "cmd")
    assert not (tmp_path / "results").exists() and not (tmp_path / "~").exists()


def test_published_records_are_read_and_a_run_found_twice_counts_once(tmp_path):
    write_runs(tmp_path / "outputs", RECORDS[:3])
    runs = tmp_path / "results" / "runs"
    for i, rec in enumerate(RECORDS[:2] + RECORDS[3:4]):  # two copies, one run only here
        (runs / f"row{i}").mkdir(parents=True)
        (runs / f"row{i}" / f"seed{rec['config']['seed']}.json").write_text(json.dumps(rec))
    (runs / "sensitivity.json").write_text(json.dumps(sensitivity_record()))
    (tmp_path / "results" / "index.json").write_text(json.dumps({"files": []}))  # not a record
    assert len(training_records(read_records(runs))) == 3
    assert len(training_records(read_records(tmp_path / "results"))) == 3
    assert len(training_records(read_records(tmp_path))) == 4
    assert len(read_records(runs)) == 4  # the sensitivity record too
    # the same configuration run again elsewhere (another machine, another date) is
    # another run, not a copy
    write_runs(tmp_path / "again", [RECORDS[0], {**RECORDS[0], "provenance": {
        **RECORDS[0]["provenance"], "date": "2026-11-26T05:00:00+00:00",
        "hardware": {"cpu": "AMD EPYC", "gpu": "NVIDIA H100 80GB HBM3"}}}])
    assert len(training_records(read_records(tmp_path / "again"))) == 2
    # hidden folders (.hydra/, .ipynb_checkpoints/, a .trash/) hold no records to count
    (runs / ".trash").mkdir()
    (runs / ".trash" / "seed7.json").write_text(json.dumps(record(seed=7)))
    assert len(training_records(read_records(runs))) == 3


def test_report_lists_the_run_folders_it_could_not_read(tmp_path, caplog):
    write_runs(tmp_path / "runs", RECORDS[:2])
    for name in ("broken", "empty"):
        (tmp_path / "runs" / name).mkdir()
    (tmp_path / "runs" / "broken" / "run.json").write_text("{")
    (tmp_path / "runs" / "empty" / "run.json").write_text("")
    write_report(analyze_cfg(tmp_path), "cmd")
    folders = [str(tmp_path / "runs" / name) for name in ("broken", "empty")]
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert index["unreadable_runs"] == folders
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and all(f in warnings[0] for f in folders)


def publish_records(folder, records):
    """Records laid out as scripts/reproduce.sh publishes them: ``<row>/seed<k>.json``."""
    for i, rec in enumerate(records):
        (folder / f"row{i}").mkdir(parents=True, exist_ok=True)
        (folder / f"row{i}" / f"seed{rec['config']['seed']}.json").write_text(json.dumps(rec))


def test_a_cut_off_published_record_is_skipped_with_how_to_make_it_again(tmp_path, caplog):
    """Found in review: a published record cut off (``results/<profile>/runs/``) was skipped
    with the hint of a run folder's run.json (rebuilt from its checkpoint), which a
    published record has not beside it; the protocol sets it aside and makes it again."""
    publish_records(tmp_path / "runs", RECORDS)
    damaged = tmp_path / "runs" / "row0" / "seed0.json"
    damaged.write_text(damaged.read_text()[:300])
    with caplog.at_level(logging.WARNING, logger="basisconv.analysis.report"):
        write_report(analyze_cfg(tmp_path), "cmd")
    (line,) = [r.getMessage() for r in caplog.records if "skipped 1 records" in r.getMessage()]
    assert str(damaged) in line and "`make reproduce PROFILE=test`" in line
    assert "checkpoint" not in line


def test_published_records_are_found_in_a_folder_of_any_name(tmp_path):
    records = tmp_path / "quick-records"  # a copy of results/quick/runs
    publish_records(records, RECORDS)
    (records / "sensitivity.json").write_text(json.dumps(sensitivity_record()))
    (records / "index.json").write_text(json.dumps({"files": []}))  # JSON, not a record
    (records / "notes.json").write_text(json.dumps([1, 2]))  # nor this
    write_report(analyze_cfg(tmp_path, runs_dir=str(records)), "cmd")
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert len(index["runs"]) == len(RECORDS) and index["unreadable_runs"] == []
    # a run folder's other JSON files (wandb's) are not records
    write_runs(tmp_path / "outputs", RECORDS[:1])
    (tmp_path / "outputs" / "run0" / "wandb").mkdir()
    (tmp_path / "outputs" / "run0" / "wandb" / "wandb-summary.json").write_text("{")
    unreadable = []
    assert len(read_records(tmp_path / "outputs", unreadable)) == 1 and unreadable == []


def test_a_missing_runs_dir_says_it_does_not_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"runs_dir=\S*rusn: no such folder") as err:
        write_report(analyze_cfg(tmp_path, runs_dir=str(tmp_path / "rusn")), "cmd")
    assert "make reproduce" not in str(err.value)
    # found in a walkthrough: make analyze's default profile (paper) before it has run here
    (tmp_path / "results" / "quick" / "runs").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"runs_dir=\S*results/paper/runs: no such folder: no "
                                          r"record of profile paper is published here yet "
                                          r"\(make reproduce PROFILE=paper makes them; "
                                          r"profiles published here: quick\)"):
        write_report(analyze_cfg(tmp_path, runs_dir=str(tmp_path / "results" / "paper" / "runs")),
                     "cmd")


def test_a_mistyped_profile_is_not_offered_to_make_reproduce(tmp_path):
    """Found driving the Makefile: ``make analyze PROFILE=quik`` said "make reproduce
    PROFILE=quik makes them", a command reproduce.sh refuses (it knows paper, quick and
    smoke); the profiles published here are what the reader needs to see the typo."""
    (tmp_path / "results" / "quick" / "runs").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"no record of profile quik is published here yet "
                                          r"\(profiles published here: quick\)") as err:
        write_report(analyze_cfg(tmp_path, runs_dir=str(tmp_path / "results" / "quik" / "runs")),
                     "cmd")
    assert "make reproduce" not in str(err.value)


def test_the_smoke_profiles_missing_records_are_named_in_its_own_folder(tmp_path):
    """Found in review: ``analyze.py profile=smoke`` before the smoke protocol had run said
    "give the folder of published records (results/<profile>/runs)", where smoke's never
    are (``profile_results``: ``outputs/smoke/results``), and not that none was published."""
    (tmp_path / "results" / "quick" / "runs").mkdir(parents=True)
    runs = tmp_path / "outputs" / "smoke" / "results" / "runs"
    with pytest.raises(ConfigError, match=r"runs_dir=\S*outputs/smoke/results/runs: no such "
                                          r"folder: no record of profile smoke is published here "
                                          r"yet \(make reproduce PROFILE=smoke makes them; "
                                          r"profiles published here: quick\); give the folder of "
                                          r"published records \(outputs/smoke/results/runs\) or "
                                          r"of run folders \(outputs/smoke\)$"):
        write_report(analyze_cfg(tmp_path, profile="smoke", runs_dir=str(runs)), "cmd")


def test_smoke_records_looked_for_under_results_are_sent_to_their_own_folder(tmp_path):
    """Found in review: ``runs_dir=results/smoke/runs``, the other profiles' layout, got the
    generic "give the folder of published records (results/<profile>/runs)", and, made by
    hand, "run `make reproduce PROFILE=smoke`", which publishes elsewhere: smoke's records
    are in ``outputs/smoke/results/runs`` (``profile_results``), never under results/."""
    from basisconv.analysis.record_sources import record_files

    runs = tmp_path / "results" / "smoke" / "runs"
    said = (r"the smoke profile's records are published elsewhere: in "
            r"outputs/smoke/results/runs \(its run folders in outputs/smoke\), by `make "
            r"reproduce PROFILE=smoke`; give runs_dir=outputs/smoke/results/runs, or "
            r"profile=smoke without runs_dir$")
    with pytest.raises(ConfigError, match=rf"^runs_dir=\S*results/smoke/runs: no such folder; "
                                          rf"{said}"):
        record_files(runs)
    runs.mkdir(parents=True)  # made by hand: it exists, and no protocol fills it
    with pytest.raises(ConfigError, match=rf"^no complete training run found in \S*results/"
                                          rf"smoke/runs \(found no records; .*\); {said}"):
        write_report(analyze_cfg(tmp_path, profile="smoke", runs_dir=str(runs)), "cmd")


def test_a_runs_dir_through_dot_dot_is_named_where_it_leads_not_as_a_profile(tmp_path):
    """Found in review: ``runs_dir=results/../runs`` said "no record of profile .. is
    published here yet": the name of its parent folder, ``..``, taken for a profile's."""
    from basisconv.analysis.record_sources import published_profile, record_files

    (tmp_path / "results" / "quick" / "runs").mkdir(parents=True)
    runs = tmp_path / "results" / ".." / "runs"
    assert published_profile(runs) is None
    with pytest.raises(ConfigError) as err:
        record_files(runs)
    assert str(err.value) == (f"runs_dir={runs}: no such folder: its .. makes it "
                              f"{tmp_path.resolve() / 'runs'}; give the folder of published "
                              f"records (results/<profile>/runs) or of run folders "
                              f"(outputs/<profile>)")


@pytest.mark.parametrize("project, said", [
    ("", r"is empty: no wandb project is named to read the runs of; give a project name "
         r"\(wandb.project=my-project\), or drop the override$"),
    (" ", "is empty"),
    ("a/b", r"is refused by wandb \(cannot contain .*found '/'\), and no project of that name "
            r"holds runs to read \(entity a's project b: wandb.entity=a wandb.project=b\); "
            r"give a project name"),
    ("a/b/c", r"is refused by wandb \(cannot contain .*found '/'\), and no project of that "
              r"name holds runs to read; give a project name"),  # (no b/c hint: refused too)
    ("what?", r"is refused by wandb \(cannot contain .*found '\?'\), and no project of that "
              r"name holds runs to read; give a project name"),
    ("x" * 129, r"is refused by wandb \(exceeded 128 characters\)")])
def test_an_analysis_wandb_project_that_is_empty_or_refused_is_one_line_at_start(
        tmp_path, monkeypatch, project, said):
    """Found in review: the training's ``logger.project`` was checked at start, the
    analysis' ``wandb.project`` not: an empty or refused name was found only once wandb was
    asked (behind its login), and ``a/b`` was read as entity a's project b."""
    from basisconv.analysis import report
    from basisconv.config_checks import validate_analysis

    def asked(*args, **kwargs):
        raise AssertionError("wandb was asked")

    monkeypatch.setattr(report, "wandb_records", asked)
    wandb = {"project": project, "entity": None}
    with pytest.raises(ConfigError, match=rf"^wandb.project='{re.escape(project)}' {said}") as err:
        write_report(analyze_cfg(tmp_path, source="wandb", wandb=wandb), "cmd")
    assert "\n" not in str(err.value)
    # unread with source=local (warned of as unread by the script), so not checked
    validate_analysis(analyze_cfg(tmp_path, wandb=wandb))


def test_the_analysis_wandb_project_from_the_environment_is_named_by_it(repo, monkeypatch):
    from hydra import compose, initialize_config_dir

    from basisconv.config_checks import validate_analysis

    monkeypatch.setenv("WANDB_PROJECT", "a:b")
    with initialize_config_dir(config_dir=str(repo / "configs" / "analysis"), version_base="1.3"):
        cfg = compose("analyze", overrides=["source=wandb"])
    with pytest.raises(ConfigError, match=r"^WANDB_PROJECT='a:b' \(the environment variable "
                                          r"wandb.project reads\) is refused by wandb .*; set "
                                          r"it to a project name, or unset it \(for basisconv\)$"):
        validate_analysis(cfg)


def test_an_out_dir_that_cannot_be_written_is_one_line_before_any_work(tmp_path):
    (tmp_path / "a-file").write_text("")
    publish_records(tmp_path / "runs", RECORDS)
    with pytest.raises(ConfigError, match=r"out_dir=\S*a-file/out cannot be written \(\S*a-file "
                                          r"is not a folder\); give another folder") as err:
        write_report(analyze_cfg(tmp_path, out_dir=str(tmp_path / "a-file" / "out")), "cmd")
    assert "\n" not in str(err.value)


def test_no_training_run_says_what_was_found(tmp_path):
    """A record left "running" by a run that stopped (Ctrl-C, memory ran out) is said to be
    unfinished, as the tables' "Left out" line says it: the analysis cannot tell a run going
    on from one that stopped (found in review: "found 1 running training")."""
    publish_records(tmp_path / "runs", [{**RECORDS[0], "status": "running", "final": None}])
    (tmp_path / "runs" / "sensitivity.json").write_text(json.dumps(sensitivity_record()))
    (tmp_path / "runs" / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="found 1 sensitivity, 1 unfinished training, "
                                          "1 unreadable; records are"):
        write_report(analyze_cfg(tmp_path), "cmd")


@pytest.mark.parametrize("kind, field", [("training", "final"), ("training", "model"),
                                         ("sensitivity", "sensitivity"),
                                         ("sensitivity", "table")])
def test_a_record_without_a_field_analysis_reads_is_listed_unreadable(tmp_path, kind, field):
    publish_records(tmp_path / "runs", RECORDS)
    lacking = {**(RECORDS[0] if kind == "training" else sensitivity_record()), "kind": kind}
    del lacking[field]
    (tmp_path / "runs" / "lacking.json").write_text(json.dumps(lacking))
    # a run in progress has final: null, and is left out without being called unreadable
    (tmp_path / "runs" / "running.json").write_text(
        json.dumps({**RECORDS[0], "config": {**RECORDS[0]["config"], "seed": 7},
                    "status": "running", "final": None}))
    write_report(analyze_cfg(tmp_path), "cmd")
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert index["unreadable_runs"] == [str(tmp_path / "runs" / "lacking.json")]
    assert len(index["runs"]) == len(RECORDS)


def test_a_complete_training_record_with_a_null_final_is_unreadable(tmp_path):
    publish_records(tmp_path / "runs", [{**RECORDS[0], "final": None}])
    unreadable = []
    assert read_records(tmp_path / "runs", unreadable) == []
    assert unreadable == [str(tmp_path / "runs" / "row0" / "seed0.json")]


@pytest.mark.parametrize("part, field, value", [
    ("final", "test_accuracy", None), ("final", "test_accuracy", float("nan")),
    ("model", "basis_layers", None), ("model", "parameters", None)])
def test_a_null_or_nan_measured_field_is_unreadable_not_a_value(tmp_path, part, field, value):
    """Found in review: final.test_accuracy: null was read, and the table counted the seed
    but left it out of the mean and std; a null model.basis_layers ended analysis with a
    trace. A config's nulls are values (data.train_subset: null) and are kept."""
    damaged = {**RECORDS[0], part: {**RECORDS[0][part], field: value}}
    publish_records(tmp_path / "runs", [damaged, RECORDS[1]])
    unreadable = []
    assert len(read_records(tmp_path / "runs", unreadable)) == 1
    assert unreadable == [str(tmp_path / "runs" / "row0" / "seed0.json")]


def test_a_measured_zero_is_a_value_not_a_missing_field():
    """A zero accuracy (a run that learned nothing) or a zero time is a measurement: the
    seed stays in its row (found by a mutation test: reading only positive numbers as
    measurements failed no test)."""
    from basisconv.records import missing_fields

    final = {**RECORDS[0]["final"], "test_accuracy": 0.0, "best_test_accuracy": 0,
             "train_seconds": 0.0}
    zero = {**RECORDS[0], "kind": "training", "final": final}  # (as read_record reads it)
    assert missing_fields(zero) == []


@pytest.mark.parametrize("part, field, value", [
    ("final", "test_accuracy", "0.9"), ("final", "test_accuracy", True),
    ("model", "parameters", "1,000"), ("final", "forward_seconds_per_step", -0.1),
    ("model", "basis_layers", "layer1.0.conv1"), (None, "epochs", None),
    (None, "epochs", ["epoch 1"]), ("provenance", "hardware", "AMD EPYC"),
    ("provenance", "date", 20261125)])
def test_a_field_analysis_reads_of_another_type_is_unreadable_not_a_value(tmp_path, part,
                                                                          field, value):
    """A measurement the table reads must be one: a text accuracy ended analysis with a
    trace from pandas' mean, ``true`` was averaged as an accuracy of 100 %, a negative time
    as a step speedup below zero (and a trace drawing its error bar), a text of layer names
    counted its letters as layers, and epochs that are no list of rows, or a provenance
    whose hardware is a text or whose date a number, a trace of their own. Such a record is
    left out and named, as one with a null is."""
    damaged = json.loads(json.dumps(RECORDS[0]))
    (damaged[part] if part else damaged)[field] = value
    publish_records(tmp_path / "runs", [damaged, RECORDS[1]])
    unreadable = []
    assert len(read_records(tmp_path / "runs", unreadable)) == 1
    assert unreadable == [str(tmp_path / "runs" / "row0" / "seed0.json")]


def edited(record, path, value):
    """A copy of ``record`` with the config value at the dotted ``path`` set to ``value``."""
    record = json.loads(json.dumps(record))
    *parents, last = path.split(".")
    node = record["config"]
    for key in parents:
        node = node[key]
    node[last] = value
    return record


@pytest.mark.parametrize("path, value", [
    ("model.width", "wide"), ("model.width", "0.5"), ("model.width", None),
    ("model.width", True), ("model.width", [0.5]), ("model.width", float("nan")),
    ("trainer.epochs", "ten"), ("trainer.epochs", 2.5), ("trainer.epochs", True),
    ("trainer.epochs", None), ("seed", "0"), ("seed", True), ("seed", 0.5), ("seed", None),
    ("basis.size", [0.5]), ("basis.size", {"fraction": 0.5}), ("basis.size", "0.5"),
    ("basis.size", True), ("basis.size", float("nan")), ("model.name", 20),
    ("model.name", None), ("name", ["resnet20-all"]), ("selection.policy", 0),
    ("selection.policy", None), ("trainer.amp", ["bf16"]), ("trainer.amp", None),
    ("data.train_subset", "5000"), ("data.train_subset", True), ("data.train_subset", [5000])])
def test_a_config_value_analysis_reads_of_another_type_is_unreadable(tmp_path, path, value):
    """Found by a randomized test: a config value of another type than the producer writes
    ended analysis with a trace (a text width in the recipe line's format, a text seed in
    the sort of seeds, a list or an object in pandas' grouping, a number as the policy in
    the plots' labels), or was read: a null or NaN width, size or epoch count was counted
    but left out of the table, seed ``true`` averaged in as a copy of seed 1, epochs 2.5 or
    ``true`` a row of its own without its baseline. Such a record is left out and named,
    where the report reads its runs (read whole, with its tables and plots, each case took
    seconds; that the report's index names what this leaves out is tested above)."""
    publish_records(tmp_path / "runs", [RECORDS[0], RECORDS[3]])
    (tmp_path / "runs" / "edited.json").write_text(json.dumps(edited(RECORDS[2], path, value)))
    unreadable = []
    assert len(read_records(tmp_path / "runs", unreadable)) == 2
    assert unreadable == [str(tmp_path / "runs" / "edited.json")]


@pytest.mark.parametrize("path, value", [
    ("data.train_subset", None), ("data.train_subset", 5000), ("data.train_subset", 0.1),
    ("basis.size", 4), ("basis.size", 0.25), ("model.width", 1), ("seed", 7)])
def test_a_config_value_the_schema_allows_is_read(tmp_path, path, value):
    """The type rule keeps what a producer writes: a null training subset (all the images),
    a count or a fraction of images or basis filters, a whole width (``1`` for ``1.0``)."""
    publish_records(tmp_path / "runs", [edited(RECORDS[2], path, value)])
    unreadable = []
    assert len(read_records(tmp_path / "runs", unreadable)) == 1 and unreadable == []


def test_every_config_value_analysis_reads_has_its_type():
    """Each ``config.*`` field of REQUIRED is checked for the type its producer writes: one
    added to REQUIRED without its type would be read whatever it holds."""
    from basisconv.records import CONFIG_TYPES, REQUIRED

    read = {path for fields in REQUIRED.values() for part in fields for path in part
            if path.startswith("config.")}
    assert read == set(CONFIG_TYPES)


@pytest.mark.parametrize("path, value", [("trainer.amp", "../../outside"),
                                         ("model.name", "../../outside")])
def test_record_values_in_result_file_names_never_leave_the_results_folder(tmp_path, path,
                                                                          value):
    """Found by a randomized test: result file names are made of record values, and an
    edited or foreign record's ``"amp": "../x"`` wrote its comparison table outside the
    results folder (a model name ``a/b`` a sensitivity page into a folder of its own).
    Such characters are ``_`` in the names; the record is read as any other."""
    sensitivity = sensitivity_record()
    sensitivity["config"]["model"]["name"] = value if path == "model.name" else "resnet20"
    write_runs(tmp_path / "runs", [edited(RECORDS[0], path, value), sensitivity])
    written = write_report(analyze_cfg(tmp_path), "cmd")
    out = tmp_path / "results"
    assert all(p.parent == out for p in written), written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "runs"]


def test_an_epochs_entry_named_as_a_run_column_does_not_move_the_epoch_to_another_run():
    """Found by a randomized test: an epoch's entry named as one of the run's columns (an
    edited or foreign record) replaced the run's own in its curve rows, so the epoch was
    drawn as another seed's (averaged as a copy of it), or another model's. The run's own
    columns are kept; the entry, which is no metric, is left out."""
    foreign = json.loads(json.dumps(RECORDS[0]))
    for epoch in foreign["epochs"]:
        epoch.update(seed=1, model="vgg11", width=2.0, hardware="TPU", where="elsewhere",
                     settings="trainer.lr=9", same_run="[]", epochs=90)
    curves = curves_frame([(foreign, "here"), (RECORDS[1], "there")])
    mine = curves[curves["where"] == "here"]
    assert len(mine) == 2 and (mine["seed"] == 0).all() and (mine["model"] == "resnet20").all()
    assert (mine["width"] == 0.5).all() and (mine["epochs"] == 2).all()
    assert (mine["settings"] == "").all() and (mine["hardware"] == "AMD EPYC").all()
    assert len(distinct_curves(curves)) == 4  # two seeds of two epochs, none a copy


def test_an_epochs_metric_that_is_no_number_is_a_gap_in_its_curve(tmp_path):
    """Per-epoch values are the curves' and the median epoch time's, not the table's means:
    one that is text (an edited record) is left out of them, as a missing one is, rather
    than making its column text and the mean over seeds (or the median) a trace."""
    from basisconv.analysis.figures import training_curves

    edited = json.loads(json.dumps(RECORDS[0]))
    edited["epochs"][0].update(test_accuracy="n/a", epoch_seconds="n/a", epoch="one")
    edited["epochs"][1]["epoch_seconds"] = 12.0
    # so is an infinite one (a loss that diverged; json writes Infinity), not an infinite mean
    # over seeds (found by a mutation test: only the finite check's text case was tried)
    edited["epochs"][1]["train_loss"] = float("inf")
    edited = json.loads(json.dumps(edited))
    assert run_row(edited, "here")["epoch_seconds"] == 12.0  # the median of the others
    curves = distinct_curves(curves_frame([(edited, "here"), (RECORDS[1], "there")]))
    assert curves["test_accuracy"].dtype.kind == "f" and curves["epoch"].dtype.kind == "f"
    assert curves["train_loss"].isna().sum() == 1 and curves["train_loss"].max() < float("inf")
    assert training_curves(curves, tmp_path / "curves.png", "note").is_file()


def test_a_session_finds_what_it_wrote_on_a_file_system_of_whole_seconds(tmp_path):
    """Whether a session published a record is read from the files' modification times;
    where those are kept to the whole second, a record written in the session's first
    second is stamped before its start to the nanosecond, and was missed (the session then
    said it computed nothing, and was not logged)."""
    from basisconv import records

    runs = tmp_path / "runs"
    (runs / "baseline").mkdir(parents=True)
    record = runs / "baseline" / "seed0.json"
    record.write_text("{}")
    started = 1_700_000_012.5
    os.utime(record, ns=(1_700_000_012_000_000_000,) * 2)  # written at 12.9 s, kept as 12
    path = records.log_session(tmp_path, runs, "paper", started, 0, 1)
    assert path is not None and json.loads(path.read_text())["published"] == [
        "baseline/seed0.json"]
    os.utime(record, ns=(1_700_000_012_400_000_000,) * 2)  # a fine clock: before the start
    assert records.log_session(tmp_path / "other", runs, "paper", started, 0, 1) is None


def test_the_protocol_wall_clock_sums_its_sessions_over_machines(tmp_path, monkeypatch):
    """``scripts/reproduce.sh`` logs each invocation (``records.log_session``), each in a
    file of its own, beside an older one-list log; the index sums the sessions per machine."""
    import time

    from basisconv import records
    from basisconv.analysis.notes import sessions_summary

    runs = tmp_path / "runs"
    (runs / "baseline").mkdir(parents=True)
    older = {"started": "2026-11-30T00:00:00+00:00", "seconds": 5.0, "exit_code": 0,
             "published": [], "provenance": {"hardware": {"cpu": "AMD EPYC"}}}
    (tmp_path / "sessions.json").write_text(json.dumps([older]))
    started = time.time() - 1
    (runs / "baseline" / "seed0.json").write_text("{}")
    monkeypatch.setattr(records.origin, "hardware", lambda: {"gpu": "NVIDIA H200"})
    records.log_session(tmp_path, runs, "paper", started, 143, 4)
    monkeypatch.setattr(records.origin, "hardware",
                        lambda: {"cpu": "AMD EPYC", "cpu_capability": "AVX2"})
    # a session that computed nothing and ended well is no protocol time: not logged
    assert records.log_session(tmp_path, runs, "paper", time.time(), 0, 1) is None
    # one that wrote a benchmark, or was stopped before it published anything, is
    later = time.time()
    (tmp_path / "model-speed-cpu.json").write_text("{}")
    os.utime(tmp_path / "model-speed-cpu.json", (later + 1, later + 1))  # (a coarse clock)
    records.log_session(tmp_path, runs, "paper", later, 0, 1)
    assert len(list((tmp_path / records.SESSIONS).glob("*.json"))) == 2
    sessions = records.read_sessions(tmp_path)
    assert [(s["exit_code"], s["published"]) for s in sessions] == [
        (0, []), (143, ["baseline/seed0.json"]), (0, [])]
    summary = sessions_summary(tmp_path)
    assert (summary["sessions"], summary["published"]) == (3, 1)
    assert summary["by_hardware"]["NVIDIA H200"] == {
        "sessions": 1, "seconds": sessions[1]["seconds"], "published": 1}
    assert summary["by_hardware"]["AMD EPYC (AVX2)"]["published"] == 0
    assert summary["seconds"] == round(sum(s["seconds"] for s in sessions), 1)
    assert sessions_summary(tmp_path / "elsewhere") is None
    # a session file left with git's conflict markers: the tables are made without the sum
    damaged = sorted((tmp_path / records.SESSIONS).glob("*.json"))[0]
    damaged.write_text("<<<<<<< HEAD\n{}\n=======\n{}\n>>>>>>> theirs\n")
    with pytest.raises(ValueError, match=damaged.name):
        records.read_sessions(tmp_path)
    assert sessions_summary(tmp_path) is None


@pytest.mark.parametrize("damaged", ["sessions/20261201T000000Z-0a1b2c3d.json",
                                     "sessions.json"])
def test_a_damaged_session_file_is_named_with_its_fix(tmp_path, caplog, damaged):
    """Found in review: a session file cut off or edited (or the older one-list
    ``sessions.json``) was named by the analysis' warning without what to do about it."""
    from basisconv.analysis.notes import sessions_summary

    (tmp_path / "sessions").mkdir()
    (tmp_path / damaged).write_text('{"started": "2026-12-01T00:00:00+00:00", "secon')
    with caplog.at_level(logging.WARNING):
        assert sessions_summary(tmp_path) is None
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert str(tmp_path / damaged) in line and "\n" not in line
    assert f"git checkout -- {tmp_path / damaged}" in line and "or delete it" in line


@pytest.mark.parametrize("field, value", [("seconds", "1006.2"), ("seconds", None),
                                          ("seconds", -5.0), ("published", None),
                                          ("provenance", "AMD EPYC"),
                                          ("provenance", {"hardware": "AMD EPYC"})])
def test_a_session_of_another_shape_leaves_the_wall_clock_out_not_a_trace(tmp_path, field,
                                                                         value):
    """Found in review: a session file whose seconds were a text or null, or whose
    published list or provenance was of another type (an edited or foreign file), ended the
    analysis with a TypeError after the tables were written, and index.json kept the
    previous analysis' list of files; it is named, and the wall-clock left out, as a file
    that is no JSON is."""
    from basisconv.analysis.notes import sessions_summary
    from basisconv.records import read_sessions

    session = {"started": "2026-11-30T00:00:00+00:00", "seconds": 5.0, "exit_code": 0,
               "published": ["baseline/seed0.json"],
               "provenance": {"hardware": {"cpu": "AMD EPYC"}}}
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "a.json").write_text(json.dumps(session))
    assert sessions_summary(tmp_path)["seconds"] == 5.0
    (tmp_path / "sessions" / "b.json").write_text(json.dumps({**session, field: value}))
    with pytest.raises(ValueError, match="b.json"):
        read_sessions(tmp_path)
    assert sessions_summary(tmp_path) is None
    publish_records(tmp_path / "runs", RECORDS[:2])
    write_report(analyze_cfg(tmp_path, runs_dir=str(tmp_path / "runs"),
                             out_dir=str(tmp_path)), "cmd")
    assert json.loads((tmp_path / "index.json").read_text())["protocol_wall_clock"] is None


def test_two_machines_sessions_merge_in_git_without_a_conflict(tmp_path, monkeypatch):
    """Found in review: one shared sessions.json conflicted on every merge of two machines'
    results, and each usual way of resolving it lost sessions."""
    import subprocess
    import time

    from basisconv import records

    def git(*args, cwd):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=cwd, capture_output=True, text=True, check=True).stdout

    git("init", "-q", "--bare", "-b", "main", "origin", cwd=tmp_path)
    git("clone", "-q", str(tmp_path / "origin"), "start", cwd=tmp_path)
    git("commit", "-q", "--allow-empty", "-m", "start", cwd=tmp_path / "start")
    git("push", "-q", "origin", "HEAD:main", cwd=tmp_path / "start")
    origin = tmp_path / "origin"
    for machine in ("a", "b"):
        git("clone", "-q", str(origin), machine, cwd=tmp_path)
        records.log_session(tmp_path / machine, tmp_path / machine / "runs", "paper",
                            time.time(), 130, 1)  # (one that computed nothing is not logged)
        git("add", "-A", cwd=tmp_path / machine)
        git("commit", "-q", "-m", machine, cwd=tmp_path / machine)
    git("push", "-q", "origin", "HEAD:main", cwd=tmp_path / "a")
    git("pull", "-q", "--no-rebase", "--no-edit", "origin", "main", cwd=tmp_path / "b")
    assert len(records.read_sessions(tmp_path / "b")) == 2


def test_tables_without_jinja2_are_written_as_markdown_and_csv(tmp_path, repo):
    """A GPU machine's own Python may lack jinja2, which only the LaTeX form needs (pandas'
    Styler): the analysis still writes the other forms and says what is missing."""
    import subprocess
    import sys

    script = ("import sys; sys.modules['jinja2'] = None\n"  # `import jinja2` now fails
              "import logging; logging.basicConfig()\n"
              "from pathlib import Path; import pandas as pd\n"
              "from basisconv.analysis.comparison import compare\n"
              "from basisconv.analysis.runs import runs_frame\n"
              "from basisconv.analysis.tables import write_table\n"
              "from test_analysis import RECORDS\n"
              "table = compare(runs_frame([(r, 'x') for r in RECORDS]))\n"
              "print(sorted(p.name for p in write_table(table, Path(sys.argv[1]), 'note')))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "src"), str(repo / "tests")])}
    (tmp_path / "comparison.tex").write_text("an older table")  # removed: it would disagree
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "comparison")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['comparison.csv', 'comparison.md']"
    assert "comparison.tex not written" in done.stderr and "jinja2" in done.stderr
    assert not (tmp_path / "comparison.tex").exists()


def test_each_table_names_the_runs_and_dates_of_its_own_device_and_precision(tmp_path):
    """The note under a table counts only the runs of its device and precision, spans
    their dates, marks a commit run with uncommitted changes (``-dirty``), and index.json
    carries the protocol's wall-clock from the session log."""
    earlier = record(seed=2, accuracy=0.91)
    earlier["provenance"] = {**earlier["provenance"], "date": "2026-11-24T05:00:00+00:00"}
    edited = record(amp="bf16")  # run with uncommitted changes: its commit is not the code
    edited["provenance"] = {**edited["provenance"], "git": {"commit": "abcdef1234", "dirty": True}}
    write_runs(tmp_path / "runs", RECORDS + [earlier, edited])
    out = tmp_path / "results"
    out.mkdir()
    (out / "sessions.json").write_text(json.dumps([  # an older one-list log
        {"started": "2026-11-24T05:00:00+00:00", "seconds": 12.5, "exit_code": 0,
         "published": ["baseline/seed0.json"], "provenance": {"hardware": {"cpu": "AMD EPYC"}}}]))
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    md = (out / "comparison-cpu-fp32.md").read_text()
    assert "profile test; 7 runs on AMD EPYC; commit abcdef1; run 2026-11-24..2026-11-25;" in md
    assert "profile test; 1 runs on AMD EPYC; commit abcdef1-dirty; run 2026-11-25;" in \
        (out / "comparison-cpu-bf16.md").read_text()
    wall_clock = json.loads((out / "index.json").read_text())["protocol_wall_clock"]
    assert (wall_clock["sessions"], wall_clock["seconds"], wall_clock["published"]) == (1, 12.5, 1)
    # a log beside the runs folder (results/<profile>/runs) is the one read, wherever the
    # tables go (found by a mutation test: only a log in the output folder was tried)
    from basisconv.analysis.report import sessions_folder

    (tmp_path / "sessions.json").write_text("[]")
    assert sessions_folder(analyze_cfg(tmp_path), out) == tmp_path
    assert sessions_folder(analyze_cfg(tmp_path, runs_dir=str(tmp_path / "kept")), out) == out


def search_record():
    """An exhaustive search's record (made-up numbers) with the fields analysis reads."""
    table = [{"subset": s, "accuracy": a, "fast_choice": s == "b c"}
             for s, a in [("a b", 0.80), ("b c", 0.86), ("a c", 0.70), ("a d", 0.90),
                          ("c d", 0.75)]]
    return {"kind": "exhaustive_search", "status": "complete", "table": table,
            "config": {"model": {"name": "resnet8", "width": 1.0}, "basis": {"size": 0.5},
                       "trainer": {"amp": "none"}},
            "provenance": {"date": "2026-11-25T05:00:00+00:00", "git": {"commit": "abcdef1234"},
                           "hardware": {"cpu": "AMD EPYC"}},
            "search": {"subsets": 5, "subset_size": 2, "candidates": ["a", "b", "c", "d"],
                       "seconds": 60.0, "metric": "accuracy_drop", "fast_choice": "b c",
                       "fast_accuracy": 0.86, "fast_rank_by_accuracy": 2, "fast_rank_by_loss": 3,
                       "best_subset": "a d", "best_accuracy": 0.90, "median_accuracy": 0.80,
                       "worst_accuracy": 0.70, "reference_accuracy": 0.88,
                       "spearman_predicted_vs_measured_drop": 0.9,
                       "spearman_predicted_vs_measured_loss": 0.5}}


def test_a_search_record_without_its_table_is_unreadable_not_a_failed_analysis(tmp_path):
    """An older search record (its table in the search.csv beside it) copied without that
    file: listed as unreadable in index.json, not a FileNotFoundError after the tables."""
    write_runs(tmp_path / "runs", RECORDS[:2])
    older = search_record()
    del older["table"]
    (tmp_path / "runs" / "search.json").write_text(json.dumps(older))
    write_report(analyze_cfg(tmp_path), "analyze")
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert index["unreadable_runs"] == [str(tmp_path / "runs" / "search.json")]
    # beside its search.csv it is read
    pd.DataFrame(search_record()["table"]).to_csv(tmp_path / "runs" / "search.csv", index=False)
    written = [p.name for p in write_report(analyze_cfg(tmp_path), "analyze")]
    assert "exhaustive-search-resnet8-cpu-fp32.md" in written


@pytest.mark.parametrize("cut", [
    lambda text: "",                                         # nothing written
    lambda text: text[:10],                                  # inside the header
    lambda text: text[:-5],                                  # inside the last row
    lambda text: "".join(text.splitlines(keepends=True)[:-1])])  # a row lost
def test_an_older_search_records_cut_off_table_is_unreadable_not_a_trace(tmp_path, cut):
    """Found in review (atomic writes audit): an older search record (before ``04946d5``:
    its table the search.csv beside it) with that file cut off (a copy interrupted) ended
    analyze.py in a trace from pandas (EmptyDataError, KeyError 'accuracy'), or drew the
    page from the rows left; it is listed unreadable, as one without the file is."""
    write_runs(tmp_path / "runs", RECORDS[:2])
    older = search_record()
    del older["table"]
    (tmp_path / "runs" / "search.json").write_text(json.dumps(older))
    whole = pd.DataFrame(search_record()["table"]).to_csv(index=False)
    (tmp_path / "runs" / "search.csv").write_text(cut(whole))
    written = [p.name for p in write_report(analyze_cfg(tmp_path), "analyze")]
    assert "exhaustive-search-resnet8-cpu-fp32.md" not in written
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert index["unreadable_runs"] == [str(tmp_path / "runs" / "search.json")]


def damaged_summary_record(kind, path, value):
    """A sensitivity or search record with the field at the dotted ``path`` set to
    ``value`` (``table.<column>``: that column of its first row, dropped for ``None``)."""
    damaged = json.loads(json.dumps(sensitivity_record() if kind == "sensitivity"
                                    else search_record()))
    *parents, last = path.split(".")
    if parents == ["table"]:
        if value is None:
            del damaged["table"][0][last]
        else:
            damaged["table"][0][last] = value
        return damaged
    node = damaged
    for key in parents:
        node = node[key]
    node[last] = value
    return damaged


#: (kind, dotted path, value) of each damage a summary record is read with
SUMMARY_DAMAGES = [
    ("sensitivity", "sensitivity.chosen", None), ("sensitivity", "sensitivity.chosen", "conv1"),
    ("sensitivity", "sensitivity.estimate_seconds", None),
    ("sensitivity", "sensitivity.reference.accuracy", "0.9"),
    ("sensitivity", "sensitivity.dense.params", None), ("sensitivity", "table", []),
    ("sensitivity", "table", "conv1"), ("sensitivity", "table.position", None),
    ("exhaustive_search", "search.candidates", None),
    ("exhaustive_search", "search.fast_accuracy", None),
    ("exhaustive_search", "search.best_subset", None),
    ("exhaustive_search", "search.spearman_predicted_vs_measured_drop", "high"),
    ("exhaustive_search", "table.accuracy", None),
    # found in review: a table cell of another type (a TypeError trace from matplotlib)
    ("sensitivity", "table.accuracy_drop", "x"), ("sensitivity", "table.layer", 3),
    ("exhaustive_search", "table.accuracy", "0.5")]


def test_a_summary_record_with_a_field_of_another_type_is_unreadable_not_a_trace(tmp_path):
    """Found in review: a sensitivity or search record whose required field was null or of
    another type (``chosen: null``, ``estimate_seconds: null``, an empty table, a table row
    without its ``position``) passed the presence check and ended the analysis with a
    TypeError or KeyError trace, after the comparison tables were written and before
    index.json; scripts/reproduce.sh kept it as the protocol's record. Such a record is
    left out and named, as a training record of that damage is.

    Every damage in one analysis (each record is read on its own,
    ``record_sources.read_records``: a case a test each paid a whole report, 16 of about
    2-3 s), each in a file named by its damage, so a record that was read, or a trace,
    names it."""
    publish_records(tmp_path / "runs", RECORDS[:2])
    damaged = []
    for i, (kind, path, value) in enumerate(SUMMARY_DAMAGES):
        name = tmp_path / "runs" / f"damaged{i:02d}-{kind}-{path}-{type(value).__name__}.json"
        name.write_text(json.dumps(damaged_summary_record(kind, path, value)))
        damaged.append(str(name))
    written = [p.name for p in write_report(analyze_cfg(tmp_path), "cmd")]
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert sorted(index["unreadable_runs"]) == damaged, (
        f"read: {sorted(set(damaged) - set(index['unreadable_runs']))}")
    assert not any(name.startswith(("sensitivity-", "exhaustive-search-")) for name in written)


def test_summary_records_of_the_fields_their_producers_write_are_read(tmp_path):
    """The type rules keep what producers write: a null rank correlation (all subsets
    tied), a negative accuracy drop in the table."""
    publish_records(tmp_path / "runs", RECORDS[:2])
    search = damaged_summary_record("exhaustive_search",
                                    "search.spearman_predicted_vs_measured_drop", None)
    sensitivity = damaged_summary_record("sensitivity", "sensitivity.key", "k")
    sensitivity["table"][0]["accuracy_drop"] = -0.005
    (tmp_path / "runs" / "search.json").write_text(json.dumps(search))
    (tmp_path / "runs" / "sensitivity.json").write_text(json.dumps(sensitivity))
    written = [p.name for p in write_report(analyze_cfg(tmp_path), "cmd")]
    assert json.loads((tmp_path / "results" / "index.json").read_text())["unreadable_runs"] == []
    assert {"sensitivity-resnet20-m0.5-cpu-fp32.md",
            "exhaustive-search-resnet8-cpu-fp32.md"} <= set(written)


def test_the_search_page_gives_accuracies_in_percent_as_its_plot_and_the_tables_do(
        tmp_path, monkeypatch):
    """The search page gave fractions (0.3510, noise 0.0053) under a plot in % and beside
    tables in % and points: one unit across pages, said in the header."""
    from basisconv.analysis import search

    monkeypatch.setattr(search, "save_figure", lambda fig, path: path)
    record = search_record()
    record["search"].update(noise_accuracy_std=0.0053, subsets_within_noise_of_fast=2)
    text = search.summarize(record, tmp_path, tmp_path, "test")[1].read_text()
    assert "| | subset | held-out accuracy (%) |" in text.splitlines()
    assert "| dense reference | | 88.00 |" in text.splitlines()
    assert "varies by 0.53 points (std); 2 other subsets" in text


def test_the_search_summary_reports_each_statistic_and_plots_the_best_first(tmp_path,
                                                                             monkeypatch):
    from basisconv.analysis import search

    drawn = []
    monkeypatch.setattr(search, "save_figure", lambda fig, path: drawn.append(fig) or path)
    png, md = search.summarize(search_record(), tmp_path, tmp_path, "test")
    assert png.name == "exhaustive-search-resnet8-cpu-fp32.png"
    text = md.read_text()
    for line in ["| fast method's choice by accuracy_drop (rank 2 of 5 by accuracy, 3 by loss) "
                 "| b c | 86.00 |", "| best subset | a d | 90.00 |",
                 "| median subset | | 80.00 |", "| worst subset | | 70.00 |",
                 "| dense reference | | 88.00 |"]:
        assert line in text.splitlines()
    assert "over all subsets: accuracy 0.90, loss 0.50." in text
    assert "own noise" not in text  # not measured
    measured = search_record()
    measured["search"].update(drop_noise_accuracy_std=0.01, subsets_within_drop_noise_of_fast=1)
    assert ("own noise (sensitivity.drop_noise_layers: paired drops over the same batch "
            "orders) is 1.00 points (std), so two subsets' accuracies differ by about 1.41 "
            "points by chance; 1 other subsets lie within that of the fast choice.") in search.summarize(
        measured, tmp_path / "m", tmp_path, "test")[1].read_text()
    # one subset, or all tied: no correlation (null in the record; NaN in older ones)
    tied = search_record()
    tied["search"].update(spearman_predicted_vs_measured_drop=None,
                          spearman_predicted_vs_measured_loss=float("nan"))
    _, tied_md = search.summarize(tied, tmp_path / "tied", tmp_path / "tied", "test")
    assert ("accuracy undefined (one subset, or all tied), loss undefined (one subset, or all "
            "tied).") in tied_md.read_text()
    # found in review: the hardware was not said, though the accuracies differ by CPU
    assert "profile test; run 2026-11-25 on AMD EPYC, commit abcdef1, 60 s\n" in text
    # a search that found kept work says so: its time is not all of it
    reused = search_record()
    reused["search"].update(kept_pretraining=True, kept_fine_tunes=1)
    _, reused_md = search.summarize(reused, tmp_path / "reused", tmp_path / "reused", "test")
    assert ("commit abcdef1, 60 s; resumed: the pretraining and 1 fine-tune done before by "
            "the estimate or an earlier search of its key, not in this time\n"
            in reused_md.read_text())
    def plotted(fig):  # (rank, accuracy %) of each point, and which is the fast choice
        points = fig.axes[0].collections[0]
        colours = [tuple(c) for c in points.get_facecolors()]
        return ([(int(x), round(y, 6)) for x, y in points.get_offsets()],
                [colours.count(c) == 1 for c in colours])

    ranks, chosen = plotted(drawn[0])  # ranks from 1 (found in review: it was 0-based)
    assert ranks == [(1, 90.0), (2, 86.0), (3, 80.0), (4, 75.0), (5, 70.0)]
    assert chosen == [False, True, False, False, False]
    # a record of an earlier version holds the summary only: its table is search.csv
    older = search_record()
    pd.DataFrame(older.pop("table")).to_csv(tmp_path / "search.csv", index=False)
    search.summarize(older, tmp_path, tmp_path, "test")
    assert plotted(drawn[-1])[0] == ranks
    # the fast choice tied with another subset is drawn first of the two, at its rank
    tied = search_record()
    tied["table"][3]["accuracy"] = 0.86  # "a d" ties the fast choice "b c"
    search.summarize(tied, tmp_path / "tied", tmp_path / "tied", "test")
    assert plotted(drawn[-1])[1] == [True, False, False, False, False]
    for fig in drawn:
        search.pyplot().close(fig)


def test_the_sensitivity_summary_lists_layers_in_model_order_with_the_noise(tmp_path,
                                                                             monkeypatch):
    """The page of every candidate layer and the plot go in model order (position), not
    the table's; chosen layers are the coloured bars; the noise yardstick is stated."""
    from basisconv.analysis import sensitivity

    rec = sensitivity_record()
    row = rec["table"][0]
    rec["table"] = [{**row, "layer": name, "position": pos, "accuracy_drop": drop}
                    for name, pos, drop in [("layer2", 2, 0.03), ("conv1", 0, 0.01),
                                            ("layer10", 1, 0.02)]]
    rec["config"]["selection"] = {"policy": "sensitivity_budget", "metric": "accuracy_drop",
                                  "count": None, "budget_metric": "flops",
                                  "budget_reduction": 0.25}
    rec["sensitivity"] = {**rec["sensitivity"], "chosen": ["layer10"],
                          "noise": {"repeats": 3, "accuracy_std": 0.002, "loss_std": 0.01}}
    drawn = []
    monkeypatch.setattr(sensitivity, "save_figure", lambda fig, path: drawn.append(fig) or path)
    _, md = sensitivity.summarize(rec, tmp_path, "test")
    text = md.read_text()
    every = text.split("## Every candidate layer")[1]
    assert every.index("conv1") < every.index("layer10") < every.index("layer2")
    assert "3 batch orders: accuracy std 0.20 points, loss std 0.0100" in text
    assert "own noise" not in text
    reference = rec["sensitivity"]["reference"]["accuracy"]
    assert f"the same fine-tune): {100 * reference:.2f} %; after pretraining" in text
    assert "resumed" not in text
    # drops in points, as the plot gives them, and the rule that chose, on page and plot
    assert "| layer10 | 16x3x3x3 | 8 | +2.00 |" in text
    assert "| layer10 | 16x3x3x3 | 8 | 0.1 | 2.0 |" in every
    rule = "layers least sensitive by accuracy drop first, until they save 25 % of the dense"
    assert f"## Chosen by `sensitivity_budget`: {rule}" in text
    assert rule in " ".join(drawn[0].axes[0].get_title().split())  # wrapped to the plot
    # a resumed estimate's page says what was done before: its time is not all of it
    rec["sensitivity"]["resumed"] = {"pretraining": False, "fine_tunes": 3}
    _, resumed_md = sensitivity.summarize(rec, tmp_path / "resumed", "test")
    assert ("; resumed: 3 fine-tunes done before by an earlier estimate or search of this "
            "key, not in this time; key " in resumed_md.read_text())
    assert [t.get_text() for t in drawn[0].axes[1].get_xticklabels()] == [
        "conv1", "layer10", "layer2"]
    (bars,) = drawn[0].axes[0].containers  # the accuracy drops (the noise band aside)
    assert [round(b.get_height(), 6) for b in bars] == [1.0, 2.0, 3.0]
    colours = [b.get_facecolor() for b in bars]
    assert colours[0] == colours[2] != colours[1]
    assert colours[1][:3] != colours[1][0:1] * 3  # the chosen bar is in colour, not grey
    sensitivity.pyplot().close(drawn[0])


def test_the_chosen_layers_table_is_in_model_order_not_name_order():
    table = pd.DataFrame({"layer": ["layer2", "layer10"], "position": [0, 1],
                          "shape": ["8->8 k3"] * 2, "num_basis": [4, 4],
                          "accuracy_drop": [0.01, 0.02], "loss_increase": [0.1, 0.2],
                          "params_saved": [30, 10], "flops_saved": [2e6, 1e6]})
    lines = chosen_table(table, ["layer10", "layer2"], {"params": 400, "flops": 6e7})
    assert [line.split(" | ")[0] for line in lines.splitlines()[2:4]] == ["| layer2", "| layer10"]


def test_the_plots_average_seeds_with_their_std_and_draw_sizes_in_order(tmp_path, monkeypatch):
    """A configuration's curve is the mean over its seeds, its accuracy point carries a
    bar of ± the sample std, and the speed plot's lines run over increasing basis sizes."""
    from basisconv.analysis import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    figures.training_curves(curves_frame([(r, "a") for r in RECORDS[:2]]), tmp_path / "c.png",
                            "note")
    assert drawn[0].axes[0].get_lines()[0].get_ydata()[-1] == pytest.approx(91.0)
    larger = record("all", 0.75, accuracy=0.85, step=(0.08, 0.16))
    table = compare(runs_frame([(r, "a") for r in [RECORDS[0], RECORDS[1], RECORDS[2], larger,
                                                   RECORDS[4]]]))
    figures.accuracy_vs_parameters(table, tmp_path / "a.png", "note")
    (bars,) = [c for c in drawn[1].axes[0].containers if c.get_label() == "none"]
    (segment,) = bars.lines[2][0].get_segments()
    assert segment[:, 1] == pytest.approx([91 - 1.41421, 91 + 1.41421], abs=1e-4)
    figures.speed_vs_basis_size(table, tmp_path / "s.png", "note")
    forward = next(line for line in drawn[2].axes[0].get_lines()
                   if line.get_label() == "basis, forward")
    assert list(forward.get_xdata()) == [0.25, 0.5, 0.75]
    for fig in drawn:
        figures.pyplot().close(fig)


def test_the_analyze_script_records_the_command_that_made_the_results(tmp_path, repo,
                                                                       script_starts):
    """index.json and every note name the command with its overrides, so that the same
    tables can be made again; its one line is the console's first, on a machine where
    matplotlib has no font cache yet too (found in a random-order run: matplotlib's
    "generated new fontManager" came first)."""
    import shlex

    write_runs(tmp_path / "runs", RECORDS[:2])
    # a folder with a space: " ".join recorded it as two words, a command that did not rerun
    out = tmp_path / "my out"
    args = ["profile=test", f"runs_dir={tmp_path / 'runs'}", f"out_dir={out}"]
    done = script_starts.run(repo / "scripts" / "analyze.py", args, cwd=tmp_path, timeout=300,
                             env={**os.environ, "WANDB_MODE": "disabled",
                                  "MPLCONFIGDIR": str(tmp_path / "matplotlib")})
    assert done.returncode == 0, done.stderr[-2000:]
    command = shlex.join(["python", "scripts/analyze.py", *args])
    index = json.loads((out / "index.json").read_text())
    assert index["provenance"]["command"] == command
    assert shlex.split(command)[2:] == args
    assert f"by `{command}`" in (out / "comparison-cpu-fp32.md").read_text()
    assert done.stdout.startswith(f"wrote {len(index['files']) + 1} files to {out}/")


def test_the_analyze_script_refuses_a_sweep_in_one_line_leaving_no_folder(tmp_path, repo,
                                                                           script_starts):
    """Found in review: ``analyze.py -m profile=quick,smoke`` made ``multirun/<date>/<time>/``
    (the analysis writes nothing of Hydra's own otherwise), rewrote the quick tables as made
    by the sweep's command line, and its failed job was summed up as "also in its
    train.log" (the analysis has none) with a sweep folder to run again in, whose finished
    jobs "are skipped" (none is: each job makes its tables anew)."""
    write_runs(tmp_path / "runs", RECORDS[:2])
    done = script_starts.run(repo / "scripts" / "analyze.py",
                             ["-m", "profile=test,other", f"runs_dir={tmp_path / 'runs'}",
                              f"out_dir={tmp_path / 'out'}"], cwd=tmp_path, timeout=300,
                             env={**os.environ, "WANDB_MODE": "disabled"})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "scripts/analyze.py takes no -m" in done.stderr and "nothing ran" in done.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "multirun").exists() or not list((tmp_path / "multirun").iterdir())


def test_a_plot_cut_off_while_written_leaves_the_previous_png(tmp_path, monkeypatch):
    """Plots are written as run records are (through a temporary file): a kill before the
    new bytes are on disk leaves the previous PNG whole for a reader, the notebook."""
    from basisconv.analysis.plots import pyplot, save_figure

    class Killed(BaseException):
        pass

    def killed(fd):
        raise Killed

    path = tmp_path / "curves.png"
    path.write_bytes(b"previous")
    fig, _ = pyplot().subplots()
    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(Killed):
        save_figure(fig, path)
    monkeypatch.undo()
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == [
        "curves.png"]
    assert save_figure(pyplot().subplots()[0], path).read_bytes().startswith(b"\x89PNG")


def curve_labels(records, tmp_path, monkeypatch):
    """The legend of the training curves drawn from ``records``: each line's label."""
    from basisconv.analysis import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    figures.training_curves(curves_frame([(r, "a") for r in records]), tmp_path / "c.png", "n")
    labels = [line.get_label() for line in drawn[0].axes[0].get_lines()]
    figures.pyplot().close(drawn[0])
    return labels


def test_rows_of_other_experiments_alike_in_the_shown_columns_are_told_apart(tmp_path,
                                                                             monkeypatch):
    """A dense warm-up run (experiment basis_warmup) and a skip-training run named after its
    model: both `all` at basis size 0.5, so the table and the curves name what differs.
    Found by audit: settings were worked out within one experiment name only, so both rows
    read `resnet20 x0.5 | all | 0.5` with no settings column and their curves one label."""
    both = {"basis.init": "scratch", "basis.dense_warmup_epochs": 0,
            "basis.coefficient_update_every": 1}
    warm = swept(record("all", accuracy=0.8), **{**both, "name": "resnet20-basis-warmup-0.5",
                                                 "basis.init": "convert",
                                                 "basis.dense_warmup_epochs": 1})
    skip = swept(record("all", accuracy=0.7), **{**both, "basis.coefficient_update_every": 2})
    records = [RECORDS[0], warm, skip]
    shown = display_table(compare(runs_frame([(r, "a") for r in records])))
    assert list(shown["settings"]) == [
        "-", "basis.coefficient_update_every=1, basis.dense_warmup_epochs=1, basis.init=convert",
        "basis.coefficient_update_every=2, basis.dense_warmup_epochs=0, basis.init=scratch"]
    labels = curve_labels(records, tmp_path, monkeypatch)
    assert len(set(labels)) == 3 and "all m=0.5 (basis.coefficient_update_every=2, " \
        "basis.dense_warmup_epochs=0, basis.init=scratch)" in labels


def test_runs_of_other_experiments_alike_in_every_setting_are_named_by_experiment():
    """Two dense runs of one configuration made by two experiments (a sweep named after
    its model, experiment=baseline) stay two rows, as the seeds of one experiment are
    pooled only, so their names tell them apart; rows of a basis size sweep, each named
    after its size, need no name. Found by audit: both rows read `resnet20 x0.5 | none |
    -` with no settings column."""
    sweep = [swept(record(sel, size, accuracy=acc), name=f"resnet20-{sel}-{size}")
             for sel, size, acc in (("all", 0.25, 0.7), ("all", 0.5, 0.8))]
    baseline = swept(record(accuracy=0.95), name="resnet20-baseline")
    shown = display_table(compare(runs_frame([(r, "a") for r in
                                              [RECORDS[0], baseline, *sweep]])))
    assert list(shown["settings"]) == ["name=resnet20-none", "name=resnet20-baseline", "-", "-"]


def test_rows_alike_but_for_their_epochs_are_told_apart_and_each_curve_says_it_once(
        tmp_path, monkeypatch):
    """The table has no epochs column: two schedules are named in the settings column, and
    a curve's label, which names the epochs itself, does not repeat them as a setting.
    Found by audit: the two rows read alike (`resnet20 x0.5 | none | -`)."""
    runs = [swept(record(accuracy=acc), **{"trainer.epochs": epochs})
            for epochs, acc in ((2, 0.9), (4, 0.95))]
    shown = display_table(compare(runs_frame([(r, "a") for r in runs])))
    assert list(shown["settings"]) == ["trainer.epochs=2", "trainer.epochs=4"]
    assert curve_labels(runs, tmp_path, monkeypatch) == ["none (2 epochs)", "none (4 epochs)"]


def test_a_dense_run_trained_once_per_basis_size_of_a_sweep_counts_once(tmp_path):
    """`-m selection=none,all basis.size=0.25,0.5 seed=0,1` trains the same dense run at
    each seed twice (it reads no basis.size): its row has two seeds, its std is over them,
    and no note says the row is over other seeds. Found by audit: the dense row had 4
    seeds, a std over duplicated values and a note `resnet20-none: 0 0 1 1`. So does a
    basis run trained twice at one seed (found in review: a sweep over selection.threshold
    trained the budget policy's run, which does not read it, once per threshold, and its
    row counted 2 seeds of one); random selections of one seed that differ in their
    selection.seed and layers stay two."""
    dense = [record("none", size, seed, acc) for size in (0.25, 0.5)
             for seed, acc in ((0, 0.90), (1, 0.92))]
    dense[2]["final"]["test_accuracy"] = 0.91  # another run of seed 0 (GPU nondeterminism)
    basis = [record("all", size, seed, 0.8, 500, 50) for size in (0.25, 0.5) for seed in (0, 1)]
    table = compare(runs_frame([(r, "a") for r in dense + basis])).set_index("selection")
    assert table.loc["none", "seeds"] == 2
    assert table.loc["none", "test_accuracy"] == pytest.approx((0.905 + 0.92) / 2)
    assert table.loc["none", "test_accuracy_std"] == pytest.approx(0.0106066, rel=1e-4)
    write_runs(tmp_path / "runs", dense + basis)
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    assert "Rows differ in seeds" not in (tmp_path / "results" / "comparison-cpu-fp32.md"
                                          ).read_text()
    again = compare(runs_frame([(r, "a") for r in [*basis, basis[0]]]))
    assert list(again["seeds"]) == [2, 2]
    budget = [swept(record("sensitivity_budget", 0.25, 0, acc), **{"selection.threshold": t})
              for t, acc in ((0.0, 0.80), (0.05, 0.82))]
    random = [swept(record("random", 0.25, 0, 0.7), **{"selection.seed": s}) for s in (7, 8)]
    random[1]["model"]["basis_layers"] = ["layer2.0.conv1"]
    # so do estimates of other sensitivity.seed that chose the same layers (found by a
    # mutation test: with that seed left out of same_run, they were averaged into one)
    resampled = [swept(record("sensitivity_threshold", 0.25, 0, acc), **{"sensitivity.seed": s})
                 for s, acc in ((1, 0.80), (2, 0.82))]
    table = compare(runs_frame([(r, "a") for r in budget + random + resampled])
                    ).set_index("selection")
    assert table.loc["sensitivity_budget", "seeds"] == 1
    assert table.loc["sensitivity_budget", "test_accuracy"] == pytest.approx(0.81)
    assert table.loc["random", "seeds"] == table.loc["sensitivity_threshold", "seeds"] == 2
    # nor do a sweep's other basis.* and sensitivity.* keys, which no dense run reads either
    # (found by a mutation test: only basis.size was swept here)
    dense = [swept(record("none", 0.5, seed, acc), **{"basis.init": init,
                                                       "sensitivity.pretrain_epochs": epochs})
             for seed, acc, init, epochs in ((0, 0.90, "scratch", 1), (1, 0.92, "convert", 2))]
    table = compare(runs_frame([(r, "a") for r in dense]))
    assert list(table["settings"]) == [""] and list(table["seeds"]) == [2]


def test_training_curves_weigh_each_seed_of_a_dense_run_alike():
    """A dense run trained twice at seed 0 (once per basis size of a sweep) and once at
    seed 1: its curve is the mean of seed 0 (its copies averaged) and seed 1, not of three
    runs, as the table's row is (test above)."""
    dense = [record("none", size, seed, acc)
             for size, seed, acc in ((0.25, 0, 0.90), (0.5, 0, 0.91), (0.25, 1, 0.92))]
    curves = distinct_curves(curves_frame([(r, "a") for r in [*dense, RECORDS[2]]]))
    last = curves[(curves["selection"] == "none") & (curves["epoch"] == 2)]
    assert list(last["seed"]) == [0, 1]
    assert last["test_accuracy"].mean() == pytest.approx((0.905 + 0.92) / 2)
    assert len(curves[curves["selection"] == "all"]) == 2  # basis runs' epochs stay


def test_sensitivity_and_search_summaries_of_several_records_each_get_files_of_their_own(
        tmp_path):
    """Two sensitivity estimates of one model and basis size (widths 0.5 and 0.25), one
    made again, one with another policy, and two searches (basis sizes 0.5 and 0.25) in one
    runs_dir: each summary is a file of its own, named by what sets it apart, and a lone
    record of its kind keeps the name published results link to. Found by audit: the
    names carried neither width, search basis size, subset size nor policy, so the second
    summary overwrote the first and index.json listed the file twice."""
    write_runs(tmp_path / "runs", RECORDS[:2])
    # (a run's config has every key: the budget policy's selection.threshold, unread)
    estimate = swept(sensitivity_record(), **{"selection.threshold": 0.005})
    runs = tmp_path / "runs"
    (runs / "sensitivity.json").write_text(json.dumps(estimate))
    (runs / "search.json").write_text(json.dumps(search_record()))
    written = [p.name for p in write_report(analyze_cfg(tmp_path), "analyze")]
    assert {"sensitivity-resnet20-m0.5-cpu-fp32.md", "exhaustive-search-resnet8-cpu-fp32.md"} \
        <= set(written)
    narrow = swept(estimate, **{"model.width": 0.25})
    narrow["provenance"]["date"] = "2026-11-25T05:00:00+00:00"
    again = swept(narrow)  # the same estimate made again, later: numbered after the first
    again["provenance"]["date"] = again["estimate_provenance"]["date"] = "2026-12-01T00:00"
    threshold = swept(estimate, **{"selection.policy": "sensitivity_threshold",
                                   "selection.threshold": 0.01})
    # a second threshold: the names give it to the threshold policy, which reads it, not
    # to the budget policy, which carries its default unread
    higher = swept(threshold, **{"selection.threshold": 0.02})
    for name, rec in [("again", again), ("narrow", narrow), ("threshold", threshold),
                      ("higher", higher),
                      ("search-m0.25", swept(search_record(), **{"basis.size": 0.25}))]:
        (runs / f"{name}.json").write_text(json.dumps(rec))
    out = tmp_path / "results"
    written = [p.name for p in write_report(analyze_cfg(tmp_path), "analyze")]
    mine = sorted(n for n in written if n.endswith(".md") and not n.startswith("comparison"))
    assert mine == ["exhaustive-search-resnet8-cpu-fp32-m0.25.md",
                    "exhaustive-search-resnet8-cpu-fp32-m0.5.md",
                    "sensitivity-resnet20-m0.5-cpu-fp32-x0.25-sensitivity_budget-2.md",
                    "sensitivity-resnet20-m0.5-cpu-fp32-x0.25-sensitivity_budget.md",
                    "sensitivity-resnet20-m0.5-cpu-fp32-x0.5-sensitivity_budget.md",
                    "sensitivity-resnet20-m0.5-cpu-fp32-x0.5-sensitivity_threshold-"
                    "selection.threshold=0.01.md",
                    "sensitivity-resnet20-m0.5-cpu-fp32-x0.5-sensitivity_threshold-"
                    "selection.threshold=0.02.md"]
    files = json.loads((out / "index.json").read_text())["files"]
    assert len(files) == len(set(files))
    assert (out / mine[2]).read_text().startswith("# Sensitivity of resnet20 x0.25 to")
    assert (out / mine[4]).read_text().startswith("# Sensitivity of resnet20 x0.5 to")
    assert "basis 0.25" in (out / mine[0]).read_text().splitlines()[0]
    assert "estimated 2026-12-01" in (out / mine[2]).read_text()


def test_a_table_of_runs_executed_differently_says_so():
    """scripts/reproduce.sh lets a later session add runs with trainer.compile=true (or
    CUDA graphs, or other threads) beside eager ones, as runs of one configuration: the
    table then says how many ran each way, since its times compare unlike runs. A table of
    runs executed alike says nothing."""
    compiled = [record("all", 0.5, seed, 0.8, 500, 50) for seed in (0, 1)]
    for rec in compiled:
        rec["config"]["trainer"].update(compile=True, compile_mode="max-autotune")
    runs = runs_frame([(r, "a") for r in [*RECORDS[:2], *compiled]])
    assert timing_line(runs) == (
        "Runs were executed differently (runs per set-up: AMD EPYC: 2; AMD EPYC, compiled "
        "(max-autotune): 2): times and speedups that compare runs of two set-ups compare "
        "unlike runs.")
    assert timing_line(runs_frame([(r, "a") for r in RECORDS])) == ""
    threads = [record(seed=seed) for seed in (0, 1)]
    for rec, count in zip(threads, (1, 2)):
        rec["provenance"]["hardware"]["torch_threads"] = count
    assert "AMD EPYC, 1 thread: 1; AMD EPYC, 2 threads: 1" in timing_line(
        runs_frame([(r, "a") for r in threads]))


def test_cuda_graphs_asked_of_a_run_that_ran_eagerly_is_no_set_up_of_its_own():
    """Found in review: trainer.cuda_graphs is ignored off CUDA and under torchrun (the
    steps run eagerly, so one config serves every machine), yet such a CPU run was called
    a set-up of its own, "CUDA graphs", and the table said it compared unlike runs."""
    from basisconv.analysis.runs import timing_setup

    # (a GPU run's thread count is recorded too, and is no set-up of its own either)
    cpu = {"cpu": "AMD EPYC", "torch_threads": 2}
    gpu = {"cpu": "AMD EPYC", "gpu": "NVIDIA H200", "torch_threads": 8}
    graphs = {"trainer": {"device": "auto", "cuda_graphs": True}}
    eager = {"trainer": {"device": "auto", "cuda_graphs": False}}
    assert timing_setup(graphs, cpu) == timing_setup(eager, cpu) == "AMD EPYC, 2 threads"
    assert timing_setup({"trainer": {"device": "cpu", "cuda_graphs": True}}, gpu) == \
        timing_setup({"trainer": {"device": "cpu"}}, gpu)
    assert timing_setup(graphs, {**gpu, "processes": 2}) == "NVIDIA H200, 2 processes"
    assert timing_setup(graphs, gpu) == "NVIDIA H200, CUDA graphs"


def test_a_count_of_one_filter_and_the_fraction_one_are_different_rows(tmp_path, monkeypatch):
    """``basis.size=1`` is one filter, ``1.0`` all of them: two configurations, not one
    averaged row; the speed plot draws the fractions on a fraction axis (counts apart)."""
    from basisconv.analysis import figures

    runs = [record(seed=0), *(record("all", size, seed, accuracy=acc, params=p)
                              for size, acc, p in [(1, 0.3, 100), (1.0, 0.9, 1100)]
                              for seed in (0, 1))]
    table = compare(runs_frame([(r, "a") for r in runs]))
    shown = display_table(table).set_index("basis size")
    assert list(shown.index) == ["-", "1", "1.0"]
    assert shown.loc["1", "seeds"] == shown.loc["1.0", "seeds"] == "2"
    assert shown.loc["1", "test accuracy (%)"].startswith("30.00")
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    figures.speed_vs_basis_size(table, tmp_path / "speed.png", "note")
    measured = [bars.lines[0] for bars in drawn[0].axes[1].containers
                if bars.get_label().startswith("measured, fwd+bwd")]
    assert [list(line.get_xdata()) for line in measured] == [[1.0]]
    assert "fraction" in drawn[0].axes[1].get_xlabel()
    only_counts = table[table["basis_size"] != 1.0]
    figures.speed_vs_basis_size(only_counts, tmp_path / "speed.png", "note")
    assert "number of basis filters" in drawn[1].axes[1].get_xlabel()
    for fig in drawn:
        figures.pyplot().close(fig)


def test_the_speed_plot_shows_the_seeds_spread_of_the_step_time(tmp_path, monkeypatch):
    """Basis steps of 0.1 and 0.2 s beside dense ones of 0.2 and 0.4 s: the speedup of the
    means (2x) with bars of ±1 std of one seed's speedup, from both rows' spread."""
    from basisconv.analysis import figures

    runs = [record(seed=0, step=(0.1, 0.1)), record(seed=1, step=(0.2, 0.2)),
            record("all", 0.5, 0, step=(0.05, 0.05)), record("all", 0.5, 1, step=(0.1, 0.1))]
    table = compare(runs_frame([(r, "a") for r in runs]))
    row = table.set_index("selection").loc["all"]
    std = 0.0707107  # of 0.1 and 0.2
    assert row["step_seconds_std"] == pytest.approx(std, rel=1e-5)
    assert row["step_speedup"] == pytest.approx(2.0)
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    figures.speed_vs_basis_size(table, tmp_path / "speed.png", "note")
    bars, = [c for c in drawn[0].axes[1].containers if "std of one seed's speedup" in c.get_label()]
    (low, high), = bars.lines[2][0].get_segments()  # the one size's vertical bar
    relative = 2 ** 0.5 * std / 0.15  # dense: 0.3 ± 2 std, basis: 0.15 ± std
    assert (low[1], high[1]) == pytest.approx((2 * (1 - relative), 2 * (1 + relative)))
    figures.pyplot().close(drawn[0])


def test_policies_of_a_users_own_take_colours_of_their_own():
    """A policy the figures do not list (a user's) was grey, as was every other such one."""
    from basisconv.analysis import figures

    listed = set(figures.SELECTION_COLOURS.values())
    mine, theirs = figures.selection_colour("my_policy"), figures.selection_colour("their_policy")
    assert len({mine, theirs}) == 2 and not {mine, theirs} & listed
    assert figures.selection_colour("my_policy") == mine  # the same in every figure


def test_a_row_whose_seeds_ran_at_two_commits_is_named_under_the_table(tmp_path):
    """A protocol continued after a pull: one row's seed 0 from before a fix, seed 1 from
    after; the footer listed both commits, not which row mixes them."""
    runs = [json.loads(json.dumps(r)) for r in RECORDS]
    runs[3]["provenance"]["git"] = {"commit": "fedcba9876"}  # basis all 0.5, seed 1
    write_runs(tmp_path / "runs", runs)
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    table = (tmp_path / "results" / "comparison-cpu-fp32.md").read_text()
    assert ("Rows whose seeds ran at different commits: resnet20-all at basis size 0.5 "
            "(abcdef1: seeds 0; fedcba9: seeds 1)") in table
    assert table.count("different commits") == 1  # the other rows ran at one commit


def test_rows_whose_seeds_ran_other_software_or_chose_from_other_tables_are_named(tmp_path):
    """Found in review (records merged from two machines): seeds under two torch versions,
    and a budget row whose seeds chose their layers from two machines' sensitivity tables,
    were averaged without a word."""
    runs = [json.loads(json.dumps(r)) for r in RECORDS] + [
        record("sensitivity_budget", 0.5, 1, 0.90, 800, 80, 8.0, (0.08, 0.16))]
    for run in runs:
        run["provenance"]["versions"] = {"torch": "2.13.0+cpu"}
    runs[1]["provenance"]["versions"] = {"torch": "2.12.0+cpu"}  # baseline, seed 1
    runs[5]["sensitivity_table"], runs[6]["sensitivity_table"] = "a" * 64, "b" * 64
    write_runs(tmp_path / "runs", runs)
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    table = (tmp_path / "results" / "comparison-cpu-fp32.md").read_text()
    assert ("Rows whose seeds ran under different torch versions: resnet20-none "
            "(2.12.0+cpu: seeds 1; 2.13.0+cpu: seeds 0).") in table
    assert ("Rows whose seeds chose their layers from different sensitivity tables (by "
            f"checksum): resnet20-sensitivity_budget at basis size 0.5 ({'a' * 64}: seeds 0; "
            f"{'b' * 64}: seeds 1)") in table
    assert table.count("different torch versions") == table.count("different sensitivity") == 1


@pytest.mark.parametrize("path, value", [("provenance.hardware.gpu", 1),
                                         ("provenance.hardware.cpu", ["AMD EPYC"]),
                                         ("provenance.git.commit", 123),
                                         ("model.mean_backward_flops", "78")])
def test_a_record_with_provenance_or_an_optional_count_of_another_type_is_named(
        tmp_path, path, value, caplog):
    """Found in review: a record (hand-edited, or not ours) whose GPU, CPU or commit was
    no text, or whose skip-training mean backward FLOPs were, ended the analysis in a
    trace (AttributeError from the device name, TypeError from a join, a slice, pandas'
    mean); it is named as unreadable, as one whose hardware is no object is."""
    caplog.set_level("INFO")  # (the record is named at INFO, counted in a warning)
    runs = [json.loads(json.dumps(r)) for r in RECORDS]
    *parents, last = path.split(".")
    node = runs[2]
    for part in parents:
        node = node[part]
    node[last] = value
    write_runs(tmp_path / "runs", runs)
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert index["unreadable_runs"] == [str(tmp_path / "runs" / "run2")]
    assert f"without {path}" in caplog.text


def timed_budget(seed, key="resnet20-w0.5-m0.5-aaaaaaaaaaaa", device="cpu", size=0.5):
    """A time-budget run's record (``selection.budget_metric=time``): the layer timings
    that chose its layers, as ``basisconv.training`` records them."""
    run = record("sensitivity_budget", size, seed, 0.90, 800, 80, 8.0, (0.08, 0.16))
    run["config"]["selection"]["budget_metric"] = "time"
    run["measured_time"] = {"key": key, "device": device, "dense_step_seconds": 0.3,
                            "layers": [{"layer": "layer1.0.conv1", "dense_ms": 1.0,
                                        "basis_ms": 0.5, "seconds_saved": 0.0005}]}
    return run


def test_rows_whose_seeds_chose_from_other_machines_layer_timings_are_named(tmp_path):
    """A time budget's seeds whose layers were chosen from two machines' layer timings
    (another key: the key hashes the hardware) were averaged without a word, though the
    record names the timings; so were rows of one table chosen from timings of different
    devices, or of a GPU for runs trained on the CPU."""
    from basisconv.analysis.notes import timings_line
    runs = [timed_budget(0), timed_budget(1), RECORDS[0]]
    frame = runs_frame([(r, "here") for r in runs])
    assert timings_line(frame) == ""  # one machine's timings, on the device trained on
    runs[1] = timed_budget(1, key="resnet20-w0.5-m0.5-bbbbbbbbbbbb")
    write_runs(tmp_path / "runs", [*runs, timed_budget(0, size=0.25, device="cuda:0")])
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    table = (tmp_path / "results" / "comparison-cpu-fp32.md").read_text()
    assert ("Rows whose seeds chose their layers from different layer timings "
            "(selection.budget_metric=time; by key and device): resnet20-sensitivity_budget "
            "at basis size 0.5 (resnet20-w0.5-m0.5-aaaaaaaaaaaa on cpu: seeds 0; "
            "resnet20-w0.5-m0.5-bbbbbbbbbbbb on cpu: seeds 1)") in table
    assert ("Layers chosen by measured time were timed on cpu: resnet20-sensitivity_budget "
            "at basis size 0.5; cuda:0: resnet20-sensitivity_budget at basis size 0.25, the "
            "runs trained on cpu") in table
    # one device, but not the one trained on (a run resumed on another machine)
    gpu_chosen = [timed_budget(0, device="cuda:0"), timed_budget(1, device="cuda:0")]
    assert timings_line(runs_frame([(r, "here") for r in gpu_chosen])).startswith(
        "Layers chosen by measured time were timed on cuda:0: resnet20-sensitivity_budget")
    # index.json names each run's timings; none for another budget (the dense runs)
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert {(run["selection"], run["layer_timings"]) for run in index["runs"]} == {
        ("none", None), ("sensitivity_budget", "resnet20-w0.5-m0.5-aaaaaaaaaaaa"),
        ("sensitivity_budget", "resnet20-w0.5-m0.5-bbbbbbbbbbbb")}


def test_the_analysis_refuses_results_a_git_merge_left_unresolved(tmp_path):
    """Found in review: a conflicted page the analysis did not write again stayed in the
    folder, to be committed; the records with markers were skipped as unreadable."""
    from basisconv.records import unmerged_files, unmerged_problem

    write_runs(tmp_path / "runs", RECORDS)
    out = tmp_path / "results"
    out.mkdir()
    page = out / "exhaustive-search-resnet8-cpu-fp32.md"
    page.write_text("# search\n<<<<<<< HEAD\nrank 1\n=======\nrank 2\n>>>>>>> b\n")
    (out / "search.png").write_bytes(b"<<<<<<< not text\n>>>>>>> ")  # a plot is not read
    with pytest.raises(ConfigError, match=r"holds 1 file a git merge left unresolved "
                                          r"\(exhaustive-search-resnet8-cpu-fp32.md\).*"
                                          r"git checkout --theirs"):
        write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    assert unmerged_files(out) == [page]
    page.write_text("# search\n")
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    # many: four named, the rest counted (found by a mutation test: the count was untested)
    for i in range(6):
        (out / f"t{i}.csv").write_text("<<<<<<< HEAD\n1\n=======\n2\n>>>>>>> b\n")
    assert unmerged_problem(out).startswith(f"{out} holds 6 files a git merge left unresolved "
                                            f"(t0.csv, t1.csv, t2.csv, t3.csv and 2 more): ")


def test_seeds_converted_from_their_own_dense_checkpoints_are_one_row():
    """The README's pattern: each seed converts from its own baseline's checkpoint
    (``basis.source_checkpoint=outputs/<baseline>/<date>/checkpoint.pt``); the paths split
    one configuration into rows of one seed each, with no mean ± std."""
    runs = [record(seed=0), record("all", 0.5, 0), record("all", 0.5, 1)]
    for seed, run in enumerate(runs[1:]):
        run["config"]["basis"].update(init="convert",
                                      source_checkpoint=f"outputs/base{seed}/checkpoint.pt")
    table = compare(runs_frame([(r, "a") for r in runs])).set_index("selection")
    assert table.loc["all", "seeds"] == 2 and table.loc["all", "settings"] == ""


def test_runs_recorded_without_their_hardware_or_commit_are_named_unknown(tmp_path):
    """An edited record or a wandb run without provenance: the tables are written and the
    note says what is not known (it ended in a TypeError sorting None with the names)."""
    runs = [json.loads(json.dumps(r)) for r in RECORDS]
    runs[0]["provenance"] = None
    runs[1]["provenance"] = {"date": "2026-11-25T05:00:00+00:00", "git": None}
    write_runs(tmp_path / "runs", runs)
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    table = (tmp_path / "results" / "comparison-cpu-fp32.md").read_text()
    assert "runs on AMD EPYC, unknown hardware; commit abcdef1, unknown;" in table


def test_dense_runs_of_one_seed_on_two_machines_are_two_runs_not_copies():
    """Record folders of two machines merged by hand: the dense row counts both runs, as
    the basis row does, instead of averaging them into one seed."""
    runs = [record(seed=0, accuracy=0.90), record(seed=0, accuracy=0.80),
            record("all", 0.5, 0, accuracy=0.70), record("all", 0.5, 0, accuracy=0.60)]
    for run in runs[1::2]:
        run["provenance"]["hardware"] = {"cpu": "Intel Xeon"}
    table = compare(runs_frame([(r, "a") for r in runs])).set_index("selection")
    assert table.loc["none", "seeds"] == table.loc["all", "seeds"] == 2
    assert table.loc["none", "test_accuracy_std"] == pytest.approx(0.0707, abs=1e-4)


def test_sensitivity_summaries_of_one_filter_and_of_all_filters_are_named_apart(tmp_path):
    """basis.size=1 (one filter) and 1.0 (all): both were 'm1' (``:g``), told apart only
    as m1 and m1-2, and both pages said 'basis size 1'."""
    write_runs(tmp_path / "runs", RECORDS[:2])
    for name, size in [("one.json", 1), ("all.json", 1.0)]:
        (tmp_path / "runs" / name).write_text(json.dumps(
            swept(sensitivity_record(), **{"basis.size": size})))
    written = sorted(p.name for p in write_report(analyze_cfg(tmp_path), "analyze")
                     if p.name.startswith("sensitivity-") and p.suffix == ".md")
    assert written == ["sensitivity-resnet20-m1-cpu-fp32.md",
                       "sensitivity-resnet20-m1.0-cpu-fp32.md"]
    pages = [(tmp_path / "results" / name).read_text() for name in written]
    assert {page.splitlines()[0] for page in pages} == {
        "# Sensitivity of resnet20 x0.5 to basis size 1", "# Sensitivity of resnet20 x0.5 to "
        "basis size 1.0"}


def test_a_record_in_another_runs_place_is_left_out_and_named(tmp_path):
    """Found in review: a copy of one row's record in another row's place, or a
    ``seed1.json`` holding seed 0's run, was tabled as that run (or dropped as a duplicate
    without a word)."""
    runs = tmp_path / "runs"
    good = {**RECORDS[0], "config": {**RECORDS[0]["config"],
                                     "publish": "/elsewhere/quick/runs/baseline/seed0.json"}}
    for slot, rec in (("baseline/seed0.json", good), ("basis-all-0.5/seed0.json", good),
                      ("baseline/seed1.json", RECORDS[0])):
        (runs / slot).parent.mkdir(parents=True, exist_ok=True)
        (runs / slot).write_text(json.dumps(rec))
    unreadable = []
    assert len(read_records(runs, unreadable)) == 1
    assert sorted(unreadable) == [str(runs / "baseline" / "seed1.json"),
                                  str(runs / "basis-all-0.5" / "seed0.json")]


def test_tables_of_a_protocol_cut_off_name_the_runs_not_run_yet(tmp_path):
    """Found in review: tables made from the records of a protocol cut off midway (what a
    GPU slot that ended leaves) did not say which rows were missing."""
    from basisconv.records import PROTOCOL_ROWS

    runs = tmp_path / "runs"
    for row, rec in zip(("baseline", "basis-all-0.5"), RECORDS[:1] + RECORDS[2:3]):
        for seed in (0, 1):
            (runs / row).mkdir(parents=True, exist_ok=True)
            (runs / row / f"seed{seed}.json").write_text(json.dumps(
                {**rec, "config": {**rec["config"], "seed": seed}}))
    (runs / "sensitivity.json").write_text(json.dumps(sensitivity_record()))
    write_report(analyze_cfg(tmp_path, runs_dir=str(runs)), "cmd")
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert index["missing_runs"] == [f"{row} (seed {seed})" for row in PROTOCOL_ROWS[2:]
                                     for seed in (0, 1)] + ["exhaustive-search-resnet8.json"]
    md = (tmp_path / "results" / "comparison-cpu-fp32.md").read_text()
    assert "Not run yet (no record in the runs folder): basis-all-0.125 (seed 0), " in md
    # run folders (outputs/<profile>) or another experiment's records: nothing is missing
    write_runs(tmp_path / "outputs", RECORDS)
    write_report(analyze_cfg(tmp_path, runs_dir=str(tmp_path / "outputs")), "cmd")
    assert json.loads((tmp_path / "results" / "index.json").read_text())["missing_runs"] == []


def test_a_record_published_under_another_name_or_gathered_elsewhere_is_read(tmp_path):
    """Found in review of the check above: it rejected a good record published by hand
    under a name of its own (the committed search record was), or gathered into a row
    folder of another name."""
    from basisconv.records import set_aside_foreign_records

    rec = {**RECORDS[0], "config": {**RECORDS[0]["config"],
                                    "publish": "/elsewhere/quick/runs/baseline/seed0.json"}}
    (tmp_path / "dense").mkdir()
    (tmp_path / "dense" / "seed0.json").write_text(json.dumps(rec))
    unreadable = []
    assert len(read_records(tmp_path, unreadable)) == 1 and unreadable == []
    search = swept(search_record(), seed=0, publish="/tmp/rev-method-search.json")
    (tmp_path / "exhaustive-search-resnet8.json").write_text(json.dumps(search))
    assert set_aside_foreign_records(tmp_path) == []


def made_by(rec, profile):
    """``rec`` as ``scripts/reproduce.sh`` of ``profile`` would have made it."""
    return {**rec, "provenance": {**rec["provenance"], "command":
                                  f"python scripts/train.py profile={profile} seed=0 "
                                  f"'publish=/somewhere/{profile}/runs/x.json'"}}


def test_a_published_record_the_analysis_cannot_use_or_of_another_profile_is_set_aside(
        tmp_path):
    """Found in review: a complete record the analysis leaves out (a field missing or NaN)
    was skipped by reproduce.sh all the same, so its row lost that seed for good, and a
    record of another profile (copied between folders) was skipped too and tabled as this
    profile's run. A JSON file of the user's own, in no run's place, is left alone."""
    from basisconv.records import made_by_profile, set_aside_foreign_records

    nan = json.loads(json.dumps(RECORDS[0]))
    nan["final"]["test_accuracy"] = float("nan")
    files = {"baseline/seed0.json": nan, "basis-all-0.5/seed0.json": made_by(RECORDS[2], "quick"),
             "baseline/seed1.json": made_by(RECORDS[1], "smoke"),
             "basis-all-0.25/seed0.json": RECORDS[4], "notes.json": {"comment": "mine"},
             # a status of neither kind (hand-edited) is no finished run either (found by a
             # mutation test: only "running" was refused)
             "basis-all-0.75/seed0.json": {**RECORDS[4], "status": "stopped"}}
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(json.dumps(content))
    assert made_by_profile(files["basis-all-0.5/seed0.json"]) == "quick"
    assert made_by_profile(RECORDS[4]) is None  # no command: it cannot be told
    assert set_aside_foreign_records(tmp_path, "smoke") == [
        tmp_path / "baseline" / "seed0.json.rejected",
        tmp_path / "basis-all-0.5" / "seed0.json.rejected",
        tmp_path / "basis-all-0.75" / "seed0.json.rejected"]
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")} == {
        "basis-all-0.25/seed0.json", "baseline/seed1.json", "notes.json"}


def test_a_tables_footer_names_the_runs_another_profiles_command_made(tmp_path):
    """Records gathered from another profile's folder are tabled (the analysis reads any
    folder), but the footer says so instead of calling them this profile's."""
    write_runs(tmp_path / "runs", [made_by(RECORDS[0], "quick"), made_by(RECORDS[2], "test"),
                                   RECORDS[3]])
    write_report(analyze_cfg(tmp_path), "cmd")
    md = (tmp_path / "results" / "comparison-cpu-fp32.md").read_text()
    assert "profile test (1 of the runs made by profile quick); 3 runs on AMD EPYC;" in md
    write_runs(tmp_path / "other", [made_by(RECORDS[0], "test"), RECORDS[2]])
    write_report(analyze_cfg(tmp_path, runs_dir=str(tmp_path / "other")), "cmd")
    assert "profile test; 2 runs on" in (tmp_path / "results" / "comparison-cpu-fp32.md"
                                         ).read_text()


def test_summaries_of_records_differing_in_many_keys_get_names_a_file_system_takes(tmp_path):
    """Found in review: two sensitivity estimates of other profiles in one folder differ in
    a dozen keys, all of them in the summary's name: past 255 bytes it could not be
    written, and the analysis stopped half done."""
    many = {f"trainer.option_{i:02d}": "a-long-value" * 3 for i in range(12)}
    first = swept(sensitivity_record(), **many)
    second = swept(sensitivity_record(), **{k: "another-long-value" * 2 for k in many})
    runs = tmp_path / "runs"
    for name, rec in (("a", first), ("b", second)):
        (runs / name).mkdir(parents=True)
        (runs / name / "sensitivity.json").write_text(json.dumps(rec))
    write_runs(runs / "trained", RECORDS[:1])
    written = [p.name for p in write_report(analyze_cfg(tmp_path), "cmd")
               if p.name.startswith("sensitivity-")]
    assert len(written) == 4 and len(set(written)) == 4  # a page and a plot each
    assert all(len(name.encode()) < 255 for name in written)


def test_a_search_is_named_by_its_metric_whatever_its_selection_policy():
    """Review: an exhaustive search ranks its fast choice by selection.metric whatever
    selection.policy says (search.fast_choice); two searches by other metrics under a policy
    that reads no metric were named as one search made twice (the second `-2`)."""
    from basisconv.analysis import search
    from basisconv.analysis.report import distinct_stems

    drop = swept(search_record(), **{"selection.policy": "all",
                                     "selection.metric": "accuracy_drop"})
    loss = swept(drop, **{"selection.metric": "loss_increase"})
    assert distinct_stems([drop, loss], [search.summary_stem(r) for r in (drop, loss)]) == [
        "exhaustive-search-resnet8-cpu-fp32-selection.metric=accuracy_drop",
        "exhaustive-search-resnet8-cpu-fp32-selection.metric=loss_increase"]


def test_searches_of_one_filter_and_of_all_filters_are_named_apart():
    """A search's name has no basis size of its own, so two searches at ``basis.size=1``
    (one filter) and ``1.0`` (all) are told apart by it: ``m1`` and ``m1.0`` (found by a
    mutation test: a ``{:g}`` part, which names both ``m1``, the second ``m1-2``, failed no
    test; a sensitivity page has the size in its own name)."""
    from basisconv.analysis import search
    from basisconv.analysis.report import distinct_stems

    one = swept(search_record(), **{"basis.size": 1})
    every = swept(one, **{"basis.size": 1.0})
    assert distinct_stems([one, every], [search.summary_stem(r) for r in (one, every)]) == [
        "exhaustive-search-resnet8-cpu-fp32-m1", "exhaustive-search-resnet8-cpu-fp32-m1.0"]


def test_runs_of_a_policy_that_differ_in_a_selection_key_it_does_not_read_are_seeds():
    """Review: a sweep over selection.threshold with both sensitivity policies gave the
    budget policy, which carries the threshold unread, a row per threshold of one seed."""
    runs = [swept(record(sel, seed=seed, accuracy=acc),
                  **{"selection.threshold": threshold, "selection.seed": seed})
            for sel, threshold, seed, acc in [
                ("none", 0.005, 0, 0.90), ("none", 0.01, 1, 0.90),
                ("sensitivity_budget", 0.005, 0, 0.80), ("sensitivity_budget", 0.01, 1, 0.82),
                ("sensitivity_threshold", 0.005, 0, 0.85),
                ("sensitivity_threshold", 0.01, 1, 0.70)]]
    table = compare(runs_frame([(r, "here") for r in runs]))
    assert list(zip(table["selection"], table["settings"], table["seeds"])) == [
        ("none", "", 2), ("sensitivity_budget", "", 2),
        ("sensitivity_threshold", "selection.threshold=0.005", 1),
        ("sensitivity_threshold", "selection.threshold=0.01", 1)]


def test_other_records_are_not_analyzed_over_the_protocols_own_tables(tmp_path, monkeypatch):
    """Found in review: ``analyze.py runs_dir=<a sweep>`` (the script's own example) wrote
    over results/<profile>/ and deleted its sensitivity, search and speed pages."""
    write_runs(tmp_path / "sweep", RECORDS)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"runs_dir=sweep would write its tables over "
                                          r"results/test/.*out_dir=<folder>"):
        write_report(analyze_cfg(tmp_path, runs_dir="sweep", out_dir="results/test"), "x")
    assert not (tmp_path / "results").exists()
    write_runs(tmp_path / "results" / "test" / "runs", RECORDS)  # its own records: written
    write_report(analyze_cfg(tmp_path, runs_dir="results/test/runs", out_dir="results/test"), "x")
    write_report(analyze_cfg(tmp_path, runs_dir="sweep", out_dir="elsewhere"), "x")


def test_a_record_that_names_no_status_is_not_taken_for_a_finished_run(tmp_path):
    """Only a record that says ``status: complete`` is a finished run: one without a status
    (hand-edited, or a producer's that never wrote one) is read as running, so its numbers
    are not averaged into a row as a finished seed's."""
    without = {k: v for k, v in RECORDS[1].items() if k != "status"}
    publish_records(tmp_path / "runs", [RECORDS[0], without])
    found = read_records(tmp_path / "runs")
    assert sorted(r["status"] for r, _ in found) == ["complete", "running"]
    assert [r["config"]["seed"] for r, _ in training_records(found)] == [0]


def test_a_protocol_cut_off_before_its_first_row_or_its_estimate_names_what_is_missing(
        tmp_path):
    """One published protocol record is enough to call a folder the protocol's: a protocol
    cut off after its sensitivity estimate (no row yet) lacks every row, and rows published
    without the estimate's and the search's records (copied alone) lack those two."""
    from basisconv.records import PROTOCOL_RECORDS, PROTOCOL_ROWS, missing_protocol_runs

    estimate_only = tmp_path / "estimate-only"
    estimate_only.mkdir()
    (estimate_only / "sensitivity.json").write_text(json.dumps(sensitivity_record()))
    assert missing_protocol_runs(estimate_only) == [*PROTOCOL_ROWS, PROTOCOL_RECORDS[1]]
    rows_only = tmp_path / "rows-only"
    (rows_only / "baseline").mkdir(parents=True)
    (rows_only / "baseline" / "seed3.json").write_text(json.dumps(RECORDS[0]))
    assert missing_protocol_runs(rows_only) == [
        f"{row} (seed 3)" for row in PROTOCOL_ROWS[1:]] + list(PROTOCOL_RECORDS)


def test_records_of_another_experiment_beside_a_baseline_row_are_not_a_protocol_cut_off(
        tmp_path):
    """Found in review: results/frobenius-decay (its own rows, all-0.5-factors ..., beside
    a dense row copied to baseline/) was taken for a quick protocol cut off midway: its
    table and index.json named the protocol's 26 other runs and records as "not run yet",
    "the same scripts/reproduce.sh command runs them". scripts/reproduce.sh publishes only
    the protocol's rows, so a folder that holds rows of other names is another
    experiment's gathering."""
    from basisconv.records import missing_protocol_runs

    runs = tmp_path / "runs"
    for row in ("baseline", "all-0.5-factors", "all-0.5-frobenius"):
        (runs / row).mkdir(parents=True)
        (runs / row / "seed0.json").write_text(json.dumps(RECORDS[0]))
    assert missing_protocol_runs(runs) == []
    write_report(analyze_cfg(tmp_path, runs_dir=str(runs)), "cmd")
    assert json.loads((tmp_path / "results" / "index.json").read_text())["missing_runs"] == []
    assert "Not run yet" not in (tmp_path / "results" / "comparison-cpu-fp32.md").read_text()
    # a folder of anything else beside the protocol's rows (no seed<k>.json) changes nothing
    (runs / "all-0.5-factors" / "seed0.json").unlink()
    (runs / "all-0.5-frobenius" / "seed0.json").rename(runs / "all-0.5-frobenius" / "notes.json")
    assert missing_protocol_runs(runs)[:1] == ["basis-all-0.5 (seed 0)"]


def test_the_profile_a_record_was_made_by_is_the_last_its_command_names():
    """Hydra takes the last of two overrides of one key, so a command that names the
    profile twice (the script's own, then one in ``OVERRIDES``) ran the later one; a later
    ``profile=null`` ran none."""
    from basisconv.records import made_by_profile

    def made_by(command):
        return made_by_profile({"provenance": {"command": command}})

    assert made_by("python scripts/train.py profile=quick seed=1 +profile=paper") == "paper"
    assert made_by("python scripts/train.py profile=quick profile=null") is None
    assert made_by("python scripts/train.py profile=null ++profile=smoke") == "smoke"
    assert made_by("python scripts/train.py seed=1") is None


def test_text_with_one_kind_of_conflict_marker_alone_is_no_unresolved_merge(tmp_path):
    """A conflict is a ``<<<<<<< `` line and a ``>>>>>>> `` line after it: a page that holds
    one of them alone (a Markdown quote seven deep, a note that names the marker) is not
    one, else the analysis would refuse a folder no merge touched."""
    from basisconv.records import unmerged_files

    (tmp_path / "quoted.md").write_text("# notes\n>>>>>>> a quote seven deep\n")
    (tmp_path / "opened.txt").write_text("<<<<<<< HEAD was never closed\n")
    assert unmerged_files(tmp_path) == []
    (tmp_path / "conflict.csv").write_text("<<<<<<< HEAD\na\n=======\nb\n>>>>>>> x\n")
    assert unmerged_files(tmp_path) == [tmp_path / "conflict.csv"]


def test_a_gpu_is_named_by_its_model_number_wherever_the_name_has_it():
    """The model is the first word holding a digit, not the first word: ``NVIDIA RTX
    A6000`` is an ``a6000`` (two such GPUs' results must not share the name ``rtx``), an
    ``AMD Instinct MI300X`` an ``mi300x``; a name without a number keeps its first word."""
    assert device_name({"gpu": "NVIDIA RTX A6000"}) == "a6000"
    assert device_name({"gpu": "AMD Instinct MI300X"}) == "mi300x"
    assert device_name({"gpu": "NVIDIA GeForce RTX 4090"}) == "4090"
    assert device_name({"gpu": "NVIDIA Titan"}) == "titan"


@pytest.mark.parametrize("setting", [{"trainer.amp": "bf16"}, {"trainer.epochs": 4},
                                     {"data.train_subset": 1000}])
def test_a_row_whose_only_dense_run_has_other_precision_epochs_or_data_has_no_baseline(
        setting):
    """Precision, epochs and training images choose the baseline, they are not settings
    the closest dense run may differ in (as ``trainer.lr`` may): a bf16 row is not compared
    with an fp32 dense run, and without its own its columns against dense stay empty."""
    runs = [(record(accuracy=0.90), "a"), (swept(record("all", accuracy=0.85), **setting), "b")]
    table = compare(runs_frame(runs))
    basis = table[table["selection"] == "all"].iloc[0]
    assert pd.isna(basis["accuracy_change"]) and pd.isna(basis["step_speedup"])
    assert basis["baseline_differs"] == ""


def test_the_records_each_session_of_one_machine_published_add_up(tmp_path):
    """A protocol continued on one machine over several sessions (GPU slots) published its
    records in each: the machine's count is their sum, not the last session's."""
    from basisconv.analysis.notes import sessions_summary

    (tmp_path / "sessions").mkdir()
    for i, (seconds, published) in enumerate([(10.5, ["baseline/seed0.json",
                                                      "baseline/seed1.json"]),
                                              (20.0, ["sensitivity.json"])]):
        (tmp_path / "sessions" / f"2026120{i + 1}T000000Z-0000000{i}.json").write_text(
            json.dumps({"started": f"2026-12-0{i + 1}T00:00:00+00:00", "seconds": seconds,
                        "exit_code": 0, "published": published,
                        "provenance": {"hardware": {"gpu": "NVIDIA H200"}}}))
    summary = sessions_summary(tmp_path)
    assert summary["by_hardware"] == {
        "NVIDIA H200": {"sessions": 2, "seconds": 30.5, "published": 3}}
    assert (summary["sessions"], summary["seconds"], summary["published"]) == (2, 30.5, 3)


def test_a_layer_that_saves_no_time_is_named_as_never_chosen_by_a_time_budget():
    """The selection passes over a layer whose basis form saves nothing (``saving <= 0``),
    so the page names it among those never chosen, whether it is slower or just as fast."""
    from basisconv.analysis.sensitivity import measured_time_line

    line = measured_time_line({"chosen": ["a"], "measured_time": {
        "dense_step_seconds": 0.02, "layers": [
            {"layer": "a", "seconds_saved": 1e-3}, {"layer": "even", "seconds_saved": 0.0},
            {"layer": "slower", "seconds_saved": -5e-4},
            {"layer": "unchosen", "seconds_saved": 2e-4}]}})
    assert "the chosen layers save 1.00 ms (5.0 %)" in line
    assert "slower in basis form (never chosen): even, slower." in line
    # found in review: a sum of layers timed one at a time (2741 ms for ResNet-18's convs
    # against a 2628 ms step on a CPU) was said as what the step saves
    assert "of it, an estimate from each layer timed alone" in line


def test_the_training_curves_band_is_the_seeds_sample_std(tmp_path, monkeypatch):
    """The band around a curve is ±1 sample std (n - 1), as the table's accuracy and the
    accuracy plot's bars are, not the population std, which is narrower by sqrt(1/2) at
    two seeds."""
    from basisconv.analysis import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    figures.training_curves(curves_frame([(r, "a") for r in RECORDS[:2]]), tmp_path / "c.png",
                            "note")
    band = drawn[0].axes[0].collections[0].get_paths()[0].vertices
    last = band[band[:, 0] == 2, 1]  # seeds at 90 and 92 % at the last epoch
    assert (last.min(), last.max()) == pytest.approx((91 - 1.41421, 91 + 1.41421), abs=1e-4)
    figures.pyplot().close(drawn[0])


def test_random_runs_of_one_seed_chosen_by_other_selection_seeds_are_two_runs():
    """Runs of one row and seed whose ``selection.seed`` differs chose their layers by
    other draws: they are two runs even where the draws happened to pick the same layers,
    not one run trained twice whose copies are averaged into one."""
    runs = [(swept(record("random", accuracy=accuracy), **{"selection.seed": draw}), "a")
            for draw, accuracy in ((1, 0.80), (2, 0.84))]
    table = compare(runs_frame(runs))
    assert list(table["seeds"]) == [2]
    assert table["test_accuracy_std"].iloc[0] == pytest.approx(0.0282843, abs=1e-6)


def test_an_index_naming_files_outside_the_output_folder_removes_none_of_them(tmp_path):
    """The files an earlier ``index.json`` lists are removed when not written again, and
    only those directly in the output folder: an edited or foreign index that names
    ``../<file>`` or ``<folder>/<file>`` must not delete the records or anything else."""
    write_runs(tmp_path / "runs", RECORDS[:4])
    results = tmp_path / "results"
    (results / "kept").mkdir(parents=True)
    (results / "kept" / "notes.md").write_text("mine")
    (tmp_path / "beside.txt").write_text("mine")
    (results / "index.json").write_text(json.dumps({"source": "local", "files": [
        "../beside.txt", "kept/notes.md", "../runs/run0/run.json", "old-cpu-fp32.png"]}))
    (results / "old-cpu-fp32.png").write_bytes(b"of runs now gone")
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    assert (tmp_path / "beside.txt").read_text() == "mine"
    assert (results / "kept" / "notes.md").read_text() == "mine"
    assert (tmp_path / "runs" / "run0" / "run.json").is_file()
    assert not (results / "old-cpu-fp32.png").exists()


def test_a_run_found_complete_and_as_a_copy_taken_while_it_ran_counts_as_complete(tmp_path):
    """Two records of one run (same config and provenance), one complete and one copied
    while it ran, are one finished run whichever folder sorts first: the copy first made
    the finished run 'running', left out of every table."""
    running = {**RECORDS[0], "status": "running", "final": None,
               "epochs": RECORDS[0]["epochs"][:1]}
    for name, data in (("a-copy-taken-mid-run", running), ("b", RECORDS[0])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(data))
    found = read_records(tmp_path)
    assert [(folder.name, r["status"]) for r, folder in found] == [("b", "complete")]
    assert len(training_records(found)) == 1


def test_a_half_written_file_of_a_killed_writer_goes_with_the_next_write_once_stale(tmp_path):
    """A writer killed mid-write (SIGKILL, the OOM killer) leaves its temporary file; a
    training folder's lock holder deletes them, but an analysis folder (tracked in git)
    and the estimate's kept results kept them for good. The next write of the same file
    deletes those untouched for an hour; one in flight (written just now) stays."""
    from basisconv.records import files

    table = tmp_path / "table.csv"
    stale, fresh = tmp_path / ".table.csv.abc.tmp", tmp_path / ".table.csv.def.tmp"
    for leftover in (stale, fresh):
        leftover.write_text("half")
    hours_ago = time.time() - 10 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    files.write_text_atomic(table, "a,b\n")
    assert table.read_text() == "a,b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, table.name]


def test_a_seed_trained_again_at_another_commit_is_named_under_the_table(tmp_path):
    """Found in review: seed 0 of the 0.5 row trained again after a code change (a dated Hydra folder
    beside the first, analysed with runs_dir=outputs/<profile>): distinct_runs averages
    the two as one run trained twice, and the commits note, handed the de-duplicated
    runs, no longer sees the other commit: the row's mean mixes two versions silently."""
    runs = [json.loads(json.dumps(r)) for r in RECORDS]
    again = json.loads(json.dumps(runs[2]))          # basis all 0.5, seed 0
    again["final"]["test_accuracy"] = 0.60           # the code change moved it
    again["provenance"]["git"] = {"commit": "fedcba9876"}
    again["provenance"]["date"] = "2026-11-26T05:00:00+00:00"
    write_runs(tmp_path / "runs", runs + [again])
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    md = (tmp_path / "results" / "comparison-cpu-fp32.md").read_text()
    assert "| resnet20 x0.5 | all | 0.5 | 2 | 77.00 ± 9.90 |" in md  # seed 0: mean(0.80, 0.60)
    assert "different commits" in md


@pytest.mark.parametrize("key, dense_value, basis_value", [
    ("data.name", "cifar10", "stripes"), ("data.test_subset", None, 1000)])
def test_a_row_is_not_compared_with_a_dense_run_on_other_data(key, dense_value, basis_value):
    """Found in review: training images, epochs and precision choose the baseline (a row with only other
    ones has none), the data set does not: a basis row on generated stripes is given a
    change of +9 points against a dense CIFAR-10 run (named under the table, but the
    column holds the number); nor did the test images (an accuracy on 1,000 of them
    against one on all 10,000)."""
    runs = [(swept(record("none", accuracy=0.90), **{key: dense_value}), "a"),
            (swept(record("all", accuracy=0.99), **{key: basis_value}), "b")]
    table = compare(runs_frame(runs)).set_index("selection")
    row = table.loc["all"]
    assert pd.isna(row["accuracy_change"]) and pd.isna(row["step_speedup"])
    assert list(table.columns[table.columns.get_loc("train_images"):][:3]) == [
        "train_images", "data", "test_images"]


@pytest.mark.parametrize("drop", ["train_loss", "epoch"])
def test_a_record_whose_epochs_lack_a_curve_field_is_no_trace(tmp_path, drop):
    """Found in review: an edited or foreign record (the type checks pass: epochs is a list of objects)
    whose epochs lack ``train_loss`` or ``epoch``: the analysis ends in a KeyError trace
    from the curves plot, after the comparison it could write."""
    runs = [json.loads(json.dumps(r)) for r in RECORDS]
    for run in runs:
        for epoch in run["epochs"]:
            epoch.pop(drop)
    write_runs(tmp_path / "runs", runs)
    write_report(analyze_cfg(tmp_path), "python scripts/analyze.py")
    assert (tmp_path / "results" / "comparison-cpu-fp32.md").is_file()


def test_one_seeds_point_has_no_error_bar_drawn_as_zero(tmp_path, monkeypatch):
    """Found in review: the accuracy plot's bars are '±1 sample std'; a row of one seed has none (the table
    shows no ±), but the plot draws a bar of length 0, which reads as a spread of 0; so did
    the speed plot's bars."""
    from basisconv.analysis import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    table = compare(runs_frame([(r, "here") for r in RECORDS]))  # all 0.25: one seed
    figures.accuracy_vs_parameters(table, tmp_path / "a.png", "note")
    ax = drawn[0].axes[0]
    bars = [c for c in ax.containers if c.get_label() == "all"][0]
    segments = [s for s in bars.lines[2][0].get_segments() if len(s)]  # drawn bars
    figures.pyplot().close(drawn[0])
    assert len(segments) == 1
    # nor the speed plot's: the size 1/4 row has one seed, 1/2 two (as has the dense row)
    figures.speed_vs_basis_size(table, tmp_path / "s.png", "note")
    bars = [c for c in drawn[1].axes[1].containers if "bars" in str(c.get_label())][0]
    segments = [s for s in bars.lines[2][0].get_segments() if len(s)]
    figures.pyplot().close(drawn[1])
    assert len(segments) == 1


def test_the_sensitivity_page_and_plot_give_the_drops_own_noise_where_measured(
        tmp_path, monkeypatch):
    """``sensitivity.drop_noise_layers``: the page states the paired drops' spread beside
    the reference's, and the plot draws it on both panels."""
    from basisconv.analysis import sensitivity

    rec = sensitivity_record()
    rec["sensitivity"] = {**rec["sensitivity"], "noise": {
        "repeats": 3, "accuracy_std": 0.002, "loss_std": 0.01}, "drop_noise": {
        "repeats": 3, "accuracy_std": 0.008, "loss_std": 0.02, "layers": [
            {"layer": "layer1.0.conv1", "accuracy_drops": [0.01, 0.02, 0.0],
             "accuracy_std": 0.01, "loss_std": 0.02}]}}
    drawn = []
    monkeypatch.setattr(sensitivity, "save_figure", lambda fig, path: drawn.append(fig) or path)
    _, md = sensitivity.summarize(rec, tmp_path, "test")
    text = md.read_text()
    assert ("The drops' own noise: 1 layers fine-tuned under the same 3 orders, their drops' "
            "std pooled 0.80 points, loss 0.0200 (per layer, points: layer1.0.conv1 1.00); a "
            "difference of two drops within about 1.13 points") in text
    top, bottom = drawn[0].axes
    dotted = [line.get_ydata()[0] for line in top.get_lines() if line.get_linestyle() == ":"]
    assert sorted(dotted) == pytest.approx([-0.8, 0.8])
    assert any("layers' drops" in t.get_text() for t in top.get_legend().get_texts())
    assert sorted(line.get_ydata()[0] for line in bottom.get_lines()
                  if line.get_linestyle() == ":") == pytest.approx([-0.02, 0.02])


def test_the_sensitivity_and_search_plots_state_their_provenance_below_them(tmp_path,
                                                                             monkeypatch):
    """Found tracing results/quick/: results/README.md says every table and plot states its
    profile, hardware, commit and date, and the comparison's plots do, but the sensitivity
    and search plots had only their titles (the sensitivity plot's cut at the edge, losing
    "FLOPs"), so a plot shown alone (the notebook, a slide) said nothing of its run. Each
    now carries the line its page opens with, and its whole title."""
    from basisconv.analysis import search, sensitivity

    drawn = []
    for module in (sensitivity, search):
        monkeypatch.setattr(module, "save_figure", lambda fig, path: drawn.append(fig) or path)
    rec = sensitivity_record()
    rec["config"]["selection"] = {"policy": "sensitivity_budget", "budget_metric": "flops",
                                  "budget_reduction": 0.25}
    _, sensitivity_md = sensitivity.summarize(rec, tmp_path, "quick")
    _, search_md = search.summarize(search_record(), tmp_path, tmp_path, "quick")
    for fig, md in zip(drawn, (sensitivity_md, search_md)):
        below = " ".join(" ".join(text.get_text().split()) for text in fig.texts)
        provenance = md.read_text().split("\n\n")[1]
        assert provenance.startswith("profile quick;") and below == provenance, below
    title = " ".join(drawn[0].axes[0].get_title().split())
    assert "training FLOPs" in title
    assert all(len(line) <= drawn[0].get_figwidth() * 14
               for line in drawn[0].axes[0].get_title().split("\n"))
    for fig in drawn:
        sensitivity.pyplot().close(fig)


def test_a_threshold_page_names_the_layers_within_the_drops_noise_of_its_threshold(tmp_path,
                                                                                  monkeypatch):
    """``sensitivity_threshold`` with the drops' own noise measured: the layers whose drop
    lies within one std of the threshold are named (which side they fall is noise)."""
    from basisconv.analysis import sensitivity

    rec = sensitivity_record()
    row = rec["table"][0]
    rec["table"] = [{**row, "layer": name, "position": pos, "accuracy_drop": drop}
                    for name, pos, drop in [("a", 0, 0.001), ("b", 1, 0.009), ("c", 2, 0.014),
                                            ("d", 3, 0.03)]]
    rec["config"]["selection"] = {"policy": "sensitivity_threshold", "threshold": 0.01,
                                  "metric": "accuracy_drop", "count": None}
    rec["sensitivity"] = {**rec["sensitivity"], "chosen": ["a", "b"], "drop_noise": {
        "repeats": 3, "accuracy_std": 0.005, "loss_std": 0.02, "layers": []}}
    monkeypatch.setattr(sensitivity, "save_figure", lambda fig, path: path)
    text = sensitivity.summarize(rec, tmp_path, "test")[1].read_text()
    assert ("Within the drops' own noise of the threshold (1 ± 0.50 points): 2 of 4 layers "
            "(b, c), chosen or left by chance of the batch order.") in text
    rec["sensitivity"]["drop_noise"] = None  # not measured: no line
    assert "own noise of the threshold" not in sensitivity.summarize(
        rec, tmp_path / "none", "test")[1].read_text()


def test_a_loss_threshold_is_read_against_the_loss_noise_one_std_included():
    """Found by a mutation test: the page's line was tested on an accuracy threshold only,
    so one on loss_increase measured against the accuracy's std (0.005 here, naming no
    layer), or a drop exactly one std away left out, passed."""
    import copy

    from basisconv.analysis.sensitivity import threshold_noise_line

    rec = copy.deepcopy(sensitivity_record())
    rec["config"]["selection"] = {"policy": "sensitivity_threshold", "threshold": 0.5,
                                  "metric": "loss_increase", "count": None}
    rec["sensitivity"]["drop_noise"] = {"repeats": 3, "accuracy_std": 0.005,
                                        "loss_std": 0.25, "layers": []}
    table = pd.DataFrame({"layer": list("abcd"), "position": range(4),
                          "loss_increase": [0.1, 0.25, 0.75, 1.0]})
    assert threshold_noise_line(rec, table) == (
        " Within the drops' own noise of the threshold (0.5 ± 0.25): 2 of 4 layers (b, c), "
        "chosen or left by chance of the batch order.")


def test_runs_without_a_sensitivity_table_do_not_split_a_row_by_table():
    """Found by a mutation test: only the runs that name the table that chose their layers
    are compared by it; a seed recorded without one (an older record) is no other table."""
    from basisconv.analysis.notes import tables_line

    runs = [record("sensitivity_budget", seed=s) for s in (0, 1, 2)]
    runs[0]["sensitivity_table"] = runs[1]["sensitivity_table"] = "abc"
    assert tables_line(runs_frame([(r, "here") for r in runs])) == ""
    runs[2]["sensitivity_table"] = "def"
    assert "(abc: seeds 0 1; def: seeds 2)" in tables_line(runs_frame([(r, "here") for r in runs]))


def test_the_recipe_line_counts_a_dense_run_trained_once_per_basis_size_once():
    """Found by a mutation test: the line on what was trained counted the copies of a
    dense run a size sweep trains once per size as more seeds ("2-4 seeds per row")."""
    import copy

    from basisconv.analysis.notes import recipe_line

    copies = []
    for original in RECORDS[:2]:
        again = copy.deepcopy(original)
        again["config"]["basis"]["size"] = 0.25  # unread by a dense run: the same run
        copies.append(again)
    runs = runs_frame([(r, "here") for r in [*RECORDS[:4], *copies]])
    assert recipe_line(runs).endswith("; 2 seeds per row")
    # rows of unequal seeds say the range (found by a mutation test: only the largest
    # count was checked)
    assert recipe_line(runs_frame([(r, "here") for r in RECORDS[:3]])).endswith(
        "; 1-2 seeds per row")


def test_the_recipe_line_and_a_curves_label_say_one_epoch_in_the_singular():
    """Found in the sweep review: a one-epoch sweep's table said "1 epochs"."""
    import copy

    from basisconv.analysis.figures import _qualifier
    from basisconv.analysis.notes import recipe_line

    once = copy.deepcopy(RECORDS[0])
    once["config"]["trainer"]["epochs"] = 1
    runs = runs_frame([(once, "here")])
    assert ", 1 epoch, batch " in recipe_line(runs)
    assert _qualifier(runs.iloc[0], ["epochs"]) == " (1 epoch)"
    assert ", 1, 2 epochs, " in recipe_line(runs_frame([(once, "here"), (RECORDS[1], "here")]))


def test_the_accuracy_plot_names_the_settings_that_tell_its_points_apart(tmp_path, monkeypatch):
    """Found rebuilding results/frobenius-decay: its two points of each size were both
    labelled "m=0.5" (and a swept policy's points had no label at all), so which was which
    could not be read from the plot; the table names their settings."""
    from basisconv.analysis import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    runs = [swept(record("all", 0.5, seed=seed), **{"basis.frobenius_decay": decay})
            for decay in (False, True) for seed in (0, 1)]
    runs += [swept(record("sensitivity_threshold", 0.5), **{"selection.threshold": t})
             for t in (0.01, 0.02)]
    figures.accuracy_vs_parameters(compare(runs_frame([(r, "a") for r in runs])),
                                   tmp_path / "a.png", "note")
    labels = sorted(text.get_text() for text in drawn[0].axes[0].texts)
    figures.pyplot().close(drawn[0])
    assert labels == ["m=0.5, basis.frobenius_decay=False", "m=0.5, basis.frobenius_decay=True",
                      "selection.threshold=0.01", "selection.threshold=0.02"]


def test_an_accuracy_change_has_its_standard_error_paired_by_seed():
    """Each seed's basis run against the dense run of that seed: the differences -0.05,
    -0.04, -0.06 have std 0.01, so a standard error of 0.01 / sqrt(3), though each row's
    own spread over the seeds is 2 points (a seed's luck, shared by both rows of it,
    cancels in the pair); NaN with one shared seed, 0 for the baseline; shown in the
    table as ± beside the change."""
    from basisconv.analysis.tables import display_table

    dense = [record(seed=s, accuracy=a) for s, a in enumerate((0.90, 0.92, 0.88))]
    basis = [record("all", 0.5, s, a) for s, a in enumerate((0.85, 0.88, 0.82))]
    alone = [record("all", 0.25, 0, 0.70), record("all", 0.25, 7, 0.72)]
    table = compare(runs_frame([(r, "here") for r in dense + basis + alone]))
    table = table.set_index(["selection", "basis_size"])
    assert table.loc[("all", 0.5), "accuracy_change"] == pytest.approx(-0.05)
    assert table.loc[("all", 0.5), "accuracy_change_se"] == pytest.approx(0.01 / 3 ** 0.5)
    assert table.loc[("none", "-"), "accuracy_change_se"] == 0
    assert pd.isna(table.loc[("all", 0.25), "accuracy_change_se"])  # seed 0 alone shared
    shown = display_table(table.reset_index()).set_index("basis size")
    assert shown.loc["0.5", "vs baseline (points, ± s.e.)"] == "-5.00 ± 0.58"
    assert shown.loc["-", "vs baseline (points, ± s.e.)"] == "+0.00"
    assert shown.loc["0.25", "vs baseline (points, ± s.e.)"] == "-19.00"


def test_the_accuracy_plot_names_a_swept_epoch_count_or_training_set(tmp_path, monkeypatch):
    """Review: the points' labels left out the settings a curve's label names in its own
    words (trainer.epochs, data.train_subset), which the accuracy plot's labels do not: a
    sweep over trainer.epochs drew its two points of one size both as "m=0.5"."""
    from basisconv.analysis import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    runs = []
    for epochs in (2, 4):
        for selection in ("none", "all"):
            rec = record(selection, 0.5)
            rec["config"]["trainer"]["epochs"] = epochs
            runs.append(swept(rec, **{"trainer.epochs": epochs}))
    figures.accuracy_vs_parameters(compare(runs_frame([(r, "a") for r in runs])),
                                   tmp_path / "a.png", "note")
    labels = sorted(text.get_text() for text in drawn[0].axes[0].texts)
    figures.pyplot().close(drawn[0])
    assert labels == ["m=0.5, trainer.epochs=2", "m=0.5, trainer.epochs=4",
                      "trainer.epochs=2", "trainer.epochs=4"]  # the dense points too


def test_unfinished_wandb_runs_are_named_under_the_table_as_local_ones_are(tmp_path,
                                                                           monkeypatch):
    """Review: a wandb project's crashed or still-running training runs were dropped without
    a word (the local records' "Left out: N unfinished runs" had no wandb counterpart), so a
    row that lost a seed, or a whole row that crashed, read as the whole experiment."""
    from basisconv.analysis import report

    crashed, running = FakeRun(RECORDS[1], state="crashed"), FakeRun(RECORDS[3], state="running")
    crashed.url, running.url = "https://wandb.ai/me/basisconv/runs/c", "https://wandb.ai/r"
    other = FakeRun(RECORDS[2], state="failed")
    del other.summary["test_accuracy"]  # not a training run of ours: not named
    api = FakeApi([FakeRun(RECORDS[0]), crashed, running, other, FakeRun(RECORDS[2])])
    monkeypatch.setattr(report, "wandb_records", functools.partial(wandb_records, api=api))
    write_report(analyze_cfg(tmp_path, source="wandb"), "python scripts/analyze.py")
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert index["unfinished_runs"] == [f"{crashed.url} (crashed)", f"{running.url} (running)"]
    table = (tmp_path / "results" / "comparison-cpu-fp32.md").read_text()
    assert (f"Left out: 2 unfinished runs: {crashed.url} (crashed), {running.url} (running)."
            in table)


def test_a_diverged_wandb_run_is_named_diverged_as_a_local_one_is(tmp_path, monkeypatch):
    """A diverged run's wandb run ends failed: the tables named it "(failed)", as a crash,
    and one diverged in its first epoch (no test_accuracy logged) not at all. Its summary's
    ``diverged`` (basisconv.training) names it as the local record does."""
    from basisconv.analysis import report

    later, first = FakeRun(RECORDS[1], state="failed"), FakeRun(RECORDS[3], state="failed")
    later.url, first.url = "https://wandb.ai/r/later", "https://wandb.ai/r/first"
    later.summary.update(epoch=1, diverged="the test loss became nan with trainer.lr=10.0")
    first.summary = {k: v for k, v in first.summary.items() if k not in RECORDS[3]["final"]}
    first.summary["diverged"] = "the training loss became inf with trainer.lr=1000000.0"
    crashed = FakeRun(RECORDS[2], state="failed")  # failed, said nothing of a divergence
    api = FakeApi([FakeRun(RECORDS[0]), later, first, crashed, FakeRun(RECORDS[2])])
    monkeypatch.setattr(report, "wandb_records", functools.partial(wandb_records, api=api))
    write_report(analyze_cfg(tmp_path, source="wandb"), "python scripts/analyze.py")
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert index["unfinished_runs"] == [
        f"{later.url} diverged in epoch 2 of 2 (the test loss became nan with trainer.lr=10.0)",
        f"{first.url} diverged in epoch 1 of 2 (the training loss became inf with "
        f"trainer.lr=1000000.0)", f"{crashed.url} (failed)"]


def test_the_accuracy_plots_labels_cover_no_marker_and_its_log_axis_says_so(repo, tmp_path,
                                                                            monkeypatch):
    """Found in review: on the committed quick runs, "m=0.5" (above right of its point) sat
    on the markers of the selected rows beside it, and the log parameter axis said
    "parameters" alone."""
    from basisconv.analysis import figures
    from basisconv.analysis.record_sources import read_records, training_records

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    records = training_records(read_records(repo / "results" / "quick" / "runs"))
    table = compare(runs_frame(records))
    figures.accuracy_vs_parameters(table, tmp_path / "a.png", "note")
    (fig,) = drawn
    ax = fig.axes[0]
    assert "log scale" in ax.get_xlabel()
    renderer = fig.canvas.get_renderer()
    labels = [text for text in ax.texts if text.get_text().startswith("m=")]
    assert len(labels) == 4
    markers = ax.transData.transform(list(zip(table["params"], 100 * table["test_accuracy"])))
    radius = 3 * fig.dpi / 72  # (matplotlib's default marker: 6 points across)
    for label in labels:
        box = label.get_window_extent(renderer)
        for x, y in markers:
            assert not (box.x0 - radius < x < box.x1 + radius
                        and box.y0 - radius < y < box.y1 + radius), label.get_text()
    figures.pyplot().close(fig)


def test_a_label_clear_at_no_corner_goes_back_to_the_first_one():
    """Found by a mutation test (the corners tried without the first again at the end
    failed no test): a label that fits at no corner is left above right of its point, as
    the first label would be, not at the last corner tried."""
    from basisconv.analysis import figures

    fig, ax = figures.pyplot().subplots(figsize=(1, 1))
    ax.plot([0.5], [0.5], "o")
    label = ax.annotate("a label far wider than its axes", (0.5, 0.5),
                        xytext=(-4, -4), textcoords="offset points")
    figures.place_clear(ax, [label], [(0.5, 0.5, 0.5)])
    assert label.xyann == figures.LABEL_CORNERS[0][:2]
    assert (label.get_horizontalalignment(), label.get_verticalalignment()) == ("left", "bottom")
    figures.pyplot().close(fig)


def test_a_label_keeps_a_markers_radius_from_a_point_beside_it():
    """Found by a mutation test (no margin round a marker failed no test): a point 2
    points above the labelled one and 30 to its right is clear of the label above right
    by itself, but its marker is not, so the label goes to another corner."""
    from basisconv.analysis import figures

    fig, ax = figures.pyplot().subplots(figsize=(4, 3))
    ax.set(xlim=(0, 100), ylim=(0, 100))
    fig.canvas.draw()
    point = ax.transData.transform((30, 50))
    beside = point + (30 * fig.dpi / 72, 2 * fig.dpi / 72)
    bx, by = ax.transData.inverted().transform(beside)
    label = ax.annotate("a label wider than 30 points", (30, 50), xytext=(4, 4),
                        textcoords="offset points")
    figures.place_clear(ax, [label], [(30, 50, 50), (bx, by, by)])
    box = label.get_window_extent(fig.canvas.get_renderer())
    radius = 3 * fig.dpi / 72  # (matplotlib's default marker: 6 points across)
    assert not (box.x0 - radius < beside[0] < box.x1 + radius
                and box.y0 - radius < beside[1] < box.y1 + radius), label.xyann
    figures.pyplot().close(fig)


def test_a_table_of_one_setting_shows_no_settings_column_and_its_csv_no_internal_one():
    """compare() gives every table a settings column and the columns that only choose
    baselines; a table whose rows differ in no setting shows no empty settings column, and
    its CSV leaves the internal columns out (INTERNAL_COLUMNS)."""
    from basisconv.analysis.tables import csv_text

    table = compare(runs_frame([(r, "here") for r in RECORDS[:2]]))
    assert "settings" in table and not table["settings"].astype(bool).any()
    assert "settings" not in display_table(table)
    table = table.assign(recipe="x", same_run=True)
    header = csv_text(table).splitlines()[0].split(",")
    assert "recipe" not in header and "same_run" not in header and "settings" in header


def test_run_folders_set_aside_once_or_again_are_not_read(tmp_path):
    """Found by a mutation test (``-<n>`` dropped from the set-aside pattern failed no
    test): scripts/reproduce.sh names a run folder it sets aside ``seed<k>.rejected``, and
    ``seed<k>.rejected-2``, ... when that name is taken
    (:func:`basisconv.records.protocol_checks.set_aside_run_folder`); neither is read, so the
    retrained run counts once, not beside the records it replaced."""
    from basisconv.analysis.record_sources import record_files

    row = tmp_path / "basis-all-0.5"
    for name in ("seed0", "seed0.rejected", "seed0.rejected-2", "seed0.rejected-12"):
        (row / name).mkdir(parents=True)
        (row / name / "run.json").write_text("{}")
    assert record_files(tmp_path) == [row / "seed0" / "run.json"]


def test_runs_in_symlinked_folders_are_read_once_and_a_link_loop_ends(tmp_path):
    """Found in the sweeps review: a user who links runs from another disk into
    ``results/<profile>/runs/`` (a run folder, or a row's folder of published records) got
    them silently left out of the tables (``Path.rglob`` follows no link). Followed now,
    each folder once by its resolved path: a link back to a folder above (a loop) or a
    second link to one folder ends there, not in a walk without end or a run read twice."""
    from basisconv.analysis.record_sources import record_files

    other_disk, runs = tmp_path / "other_disk", tmp_path / "runs"
    (other_disk / "seed0").mkdir(parents=True)
    (other_disk / "seed0" / "run.json").write_text("{}")
    (other_disk / "published-row").mkdir()
    (other_disk / "published-row" / "seed1.json").write_text("{}")
    (runs / "row").mkdir(parents=True)
    (runs / "row" / "seed0").symlink_to(other_disk / "seed0", target_is_directory=True)
    (runs / "linked-row").symlink_to(other_disk / "published-row", target_is_directory=True)
    (runs / "row" / "loop").symlink_to(runs, target_is_directory=True)  # a folder above
    (runs / "again").symlink_to(other_disk / "published-row", target_is_directory=True)
    found = record_files(runs)
    assert len(found) == 2, found
    assert found[1] == runs / "row" / "seed0" / "run.json", found
    assert found[0] in (runs / "linked-row" / "seed1.json", runs / "again" / "seed1.json")


def test_a_key_only_one_recipe_has_is_no_difference_from_the_baseline():
    """Found by a mutation test (every key of either recipe compared failed no test): a
    key only a newer run's record has, or one removed since, is no difference between a row
    and its dense baseline (the older record ran as the key's default), and was a KeyError
    from the comparison."""
    from basisconv.analysis.comparison import recipe_differences

    row = json.dumps({"trainer.lr": 0.1, "trainer.new_key": 1})
    assert recipe_differences(row, json.dumps({"trainer.lr": 0.1})) == []
    assert recipe_differences(row, json.dumps({"trainer.lr": 0.2, "old": "x"})) == [
        "trainer.lr=0.2"]


def test_a_change_over_other_seeds_than_its_baselines_has_no_paired_standard_error():
    """Found in review: the change is the difference of the two rows' means over all their
    seeds, and its standard error was paired over the seeds they share alone: a basis row
    of seeds 0-5 against a dense one of seeds 0-2 showed -15.00 ± 0.58 points, though its
    seeds 3-5 (no pair) spread over 10 points. A paired error describes a change over one
    set of seeds; where the sets differ it is NaN (the notes name such rows)."""
    dense = [record(seed=s, accuracy=a) for s, a in enumerate((0.90, 0.92, 0.88))]
    basis = [record("all", 0.5, s, a)
             for s, a in enumerate((0.85, 0.88, 0.82, 0.60, 0.70, 0.65))]
    table = compare(runs_frame([(r, "here") for r in dense + basis])).set_index("selection")
    assert table.loc["all", "accuracy_change"] == pytest.approx(-0.15)
    assert pd.isna(table.loc["all", "accuracy_change_se"])
    assert table.loc["none", "accuracy_change_se"] == 0
