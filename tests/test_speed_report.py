"""scripts/speed_report.py (basisconv.analysis.speed, the tables; speed_summary, the page and
plot): the speed records of several folders, CPU and GPU, in one summary whose every row
names its record."""

import hashlib
import json
import re
import shlex
import subprocess

import pandas as pd
import pytest

from basisconv.analysis import speed, speed_summary
from basisconv.errors import DatasetError

CPU = {"cpu": "AMD EPYC", "cpu_capability": "AVX512"}
GPU = {"cpu": "Intel Xeon", "gpu": "NVIDIA H200"}


def _provenance(hardware, commit="b"):
    return {"date": "2026-11-29T10:00:00+00:00", "git": {"commit": commit * 8},
            "hardware": hardware}


def _model_record(folder, tag, hardware, precision, ratios, batch=128, columns=None):
    """A model-speed record and its table, as scripts/benchmark_layers.py writes them
    (``columns``: more of them, per fraction)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"model": "resnet18", "batch": batch, "fraction": f, "theory_fwdbwd_ratio": f,
             "time_bound_ratio": f + 0.05, "fwdbwd_ratio": r, "fwdbwd_vs_theory": r / f,
             "fwdbwd_spread": 0.02, "dense_fwdbwd_ms": 7.5, **(columns or {}).get(f, {})}
            for f, r in ratios.items()]
    pd.DataFrame(rows).to_csv(folder / f"model-speed-{tag}.csv", index=False)
    (folder / f"model-speed-{tag}.json").write_text(json.dumps({
        "kind": "benchmark", "status": "complete", "config": {},
        "provenance": _provenance(hardware, "a"), "settings": {"precision": precision},
        "file": f"model-speed-{tag}.csv"}))


def _train_record(folder, name, hardware, seconds, commit="b", **options):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"train-throughput-{name}.json").write_text(json.dumps({
        "kind": "benchmark", "status": "complete", "config": {},
        "provenance": _provenance(hardware, commit), "batch_size": 128, "amp": "bf16",
        "seconds_per_step": seconds, "images_per_second": 128 / seconds,
        "epoch_seconds": seconds * 390, "basis_size": None, "compile_mode": None,
        "cuda_graphs": False, **options}))


@pytest.fixture
def folders(tmp_path):
    cpu, gpu = tmp_path / "results", tmp_path / "results" / "gpu"
    _model_record(cpu, "cpu-fp32", CPU, "fp32", {0.25: 0.39, 0.5: 0.64})
    _model_record(gpu, "cuda-bf16-fused-b512", GPU, "bf16", {0.25: 0.35, 0.5: 0.62}, batch=512)
    _train_record(gpu, "cuda-bf16", GPU, 0.0075)
    _train_record(gpu, "cuda-bf16-graphs", GPU, 0.0025, cuda_graphs=True)
    _train_record(gpu, "cuda-bf16-basis0.25-fused-graphs", GPU, 0.0020, cuda_graphs=True,
                  basis_size=0.25, combine="fused")
    return [cpu, gpu]


def test_rows_name_hardware_form_and_record_and_compare_like_with_like(folders):
    model = speed.model_speed(folders)
    assert set(model["hardware"]) == {"AMD EPYC (AVX512)", "NVIDIA H200"}
    gpu = model[model["hardware"] == "NVIDIA H200"]
    assert list(gpu["form"]) == ["fused", "fused"] and list(gpu["batch"]) == [512, 512]
    assert gpu["source"].str.endswith("model-speed-cuda-bf16-fused-b512.json").all()
    assert (gpu["fwdbwd_spread"] == 0.02).all()  # how far to trust each ratio

    train = speed.training_speed(folders).set_index(["mode", "model"])
    # the graphed basis model against the graphed dense one, not the eager one
    assert train.loc[("graphs", "basis 0.25"), "relative_to_dense"] == pytest.approx(0.8)
    assert train.loc[("graphs", "basis 0.25"), "form"] == "fused"
    assert train.loc[("eager", "dense"), "relative_to_dense"] == 1.0


def test_a_basis_step_is_relative_to_the_dense_step_of_its_own_architecture_and_layout(
        folders):
    """A dense record of another architecture, layout or commit on the same GPU is not the
    reference (it was once: the fastest dense row of the hardware was); with none that
    matches there is no ratio; two that match are refused, naming both files."""
    gpu = folders[1]
    _train_record(gpu, "cuda-bf16-graphs-resnet20", GPU, 0.0005, cuda_graphs=True,
                  model="resnet20")
    _train_record(gpu, "cuda-bf16-graphs-nchw", GPU, 0.0010, cuda_graphs=True,
                  channels_last=False)
    _train_record(gpu, "cuda-bf16-basis0.5-graphs-nchw", GPU, 0.0015, cuda_graphs=True,
                  channels_last=False, basis_size=0.5)
    train = speed.training_speed(folders).set_index(["mode", "architecture", "layout", "model"])
    assert train.loc[("graphs", "resnet18", "NHWC", "basis 0.25"),
                     "relative_to_dense"] == pytest.approx(0.8)
    assert train.loc[("graphs", "resnet18", "NCHW", "basis 0.5"),
                     "relative_to_dense"] == pytest.approx(1.5)
    _train_record(gpu, "cuda-bf16-basis0.5-eager-nchw", GPU, 0.0015, channels_last=False,
                  basis_size=0.5)
    unmatched = speed.training_speed(folders).set_index(["mode", "layout", "model"])
    assert pd.isna(unmatched.loc[("eager", "NCHW", "basis 0.5"), "relative_to_dense"])
    _train_record(gpu, "cuda-bf16-again", GPU, 0.0070)
    with pytest.raises(DatasetError, match=r"cuda-bf16-again\.json and .*cuda-bf16\.json are"):
        speed.training_speed(folders)


def test_a_basis_step_is_relative_to_the_dense_step_of_its_own_precision_batch_and_commit(
        folders):
    """Faster dense records of another precision, batch or commit on the same GPU are not
    the reference of the bf16, batch-128 basis row (nor, being of other settings, two
    references of one setting); a basis row of a batch no dense record has gets no ratio."""
    gpu = folders[1]
    _train_record(gpu, "cuda-fp32-graphs", GPU, 0.0010, cuda_graphs=True, amp="none")
    _train_record(gpu, "cuda-bf16-graphs-b256", GPU, 0.0011, cuda_graphs=True, batch_size=256)
    _train_record(gpu, "cuda-bf16-graphs-later", GPU, 0.0012, commit="c", cuda_graphs=True)
    train = speed.training_speed(folders)
    basis = train[train["model"] != "dense"].set_index("commit")
    assert basis.loc["bbbbbbb", "relative_to_dense"] == pytest.approx(0.8)
    _train_record(gpu, "cuda-bf16-basis0.25-graphs-b512", GPU, 0.0040, cuda_graphs=True,
                  basis_size=0.25, batch_size=512)
    train = speed.training_speed(folders).set_index(["batch", "model"])
    assert pd.isna(train.loc[(512, "basis 0.25"), "relative_to_dense"])


def test_a_basis_step_is_relative_to_the_dense_step_of_as_many_timed_steps(folders):
    """A graphed epoch pays its eager first step and its capture once, so its time per step
    depends on how many steps it timed (the 1/4 fused H200 record: 4.75 ms a step over 60,
    its replays 3.53 ms): a dense record of 300 steps (``make gpu-speed SPEED=kernels``)
    is not the reference of a basis record of 60 (``SPEED=quick``) of the same commit."""
    gpu = folders[1]
    (gpu / "train-throughput-cuda-bf16-graphs.json").unlink()
    _train_record(gpu, "cuda-bf16-graphs", GPU, 0.0021, cuda_graphs=True, steps=300)
    _train_record(gpu, "cuda-bf16-basis0.25-fused-graphs", GPU, 0.0030, cuda_graphs=True,
                  basis_size=0.25, combine="fused", steps=60)
    train = speed.training_speed(folders).set_index(["mode", "model"])
    assert pd.isna(train.loc[("graphs", "basis 0.25"), "relative_to_dense"])
    _train_record(gpu, "cuda-bf16-graphs-60", GPU, 0.0025, cuda_graphs=True, steps=60)
    train = speed.training_speed(folders)
    basis = train[train["model"] == "basis 0.25"]
    assert basis["relative_to_dense"].tolist() == [pytest.approx(1.2)]


def test_a_basis_step_is_relative_to_the_dense_step_of_as_many_warm_up_steps(tmp_path):
    """Found in review: ``benchmark_train.py --warmup 0`` times the first step (its
    allocations, cuDNN's algorithm search) with the others, and its file has the default's
    name; a basis step timed after 3 warm-up steps was shown relative to it as if alike."""
    _train_record(tmp_path, "cpu-fp32", CPU, 2.0, config={"warmup": 0})
    _train_record(tmp_path, "cpu-fp32-basis0.25", CPU, 1.0, basis_size=0.25,
                  config={"warmup": 3})
    train = speed.training_speed([tmp_path]).set_index("model")
    assert pd.isna(train.loc["basis 0.25", "relative_to_dense"])
    _train_record(tmp_path, "cpu-fp32", CPU, 2.0, config={"warmup": 3})
    train = speed.training_speed([tmp_path]).set_index("model")
    assert train.loc["basis 0.25", "relative_to_dense"] == pytest.approx(0.5)


def test_a_basis_step_is_relative_to_the_dense_step_of_its_own_thread_count(tmp_path):
    """Found by a mutation test (threads dropped from what a step is matched on passed): a
    CPU step timed on 2 threads is not relative to a dense step timed on 16."""
    _train_record(tmp_path, "cpu-fp32-t16", CPU, 1.0, threads=16)
    _train_record(tmp_path, "cpu-fp32-basis0.25-t2", CPU, 3.0, basis_size=0.25, threads=2)
    train = speed.training_speed([tmp_path]).set_index("model")
    assert pd.isna(train.loc["basis 0.25", "relative_to_dense"])
    _train_record(tmp_path, "cpu-fp32-t2", CPU, 4.0, threads=2)
    train = speed.training_speed([tmp_path]).set_index(["model", "threads"])
    assert train.loc[("basis 0.25", 2), "relative_to_dense"] == pytest.approx(0.75)


def test_records_of_one_dirty_commit_with_different_changes_are_not_compared(tmp_path):
    """``-dirty`` alone does not say the code was the same: the diff's hash does."""
    def dirty(diff):
        return {"git": {"commit": "d" * 40, "dirty": True, "diff_sha256": diff}}
    _train_record(tmp_path, "cuda-bf16", GPU, 0.0075)
    _train_record(tmp_path, "cuda-bf16-basis0.5", GPU, 0.0090, basis_size=0.5)
    for name, diff in [("cuda-bf16", "a" * 64), ("cuda-bf16-basis0.5", "b" * 64)]:
        path = tmp_path / f"train-throughput-{name}.json"
        record = json.loads(path.read_text())
        record["provenance"].update(dirty(diff))
        path.write_text(json.dumps(record))
    train = speed.training_speed([tmp_path]).set_index("model")
    assert train.loc["basis 0.5", "commit"] == train.loc["dense", "commit"] == "ddddddd-dirty"
    assert pd.isna(train.loc["basis 0.5", "relative_to_dense"])
    # the same changes: the same code, compared
    record = json.loads(path.read_text())
    record["provenance"].update(dirty("a" * 64))
    path.write_text(json.dumps(record))
    train = speed.training_speed([tmp_path]).set_index("model")
    assert train.loc["basis 0.5", "relative_to_dense"] == pytest.approx(1.2)


def test_a_cpu_benchmark_on_a_gpu_machine_is_the_cpus_and_not_compared_with_the_gpu(tmp_path):
    """The provenance of any run on a GPU machine lists its GPU; a CPU benchmark run there
    (the scripts' default device) is the CPU's row and panel, and a dense CPU step is not the
    reference of a basis step on the GPU (it once was: both were "NVIDIA H200")."""
    machine = {"cpu": "Intel Xeon", "cpu_capability": "AVX512", "gpu": "NVIDIA H200"}
    _model_record(tmp_path, "cpu-fp32", machine, "fp32", {0.25: 0.45})
    record = json.loads((tmp_path / "model-speed-cpu-fp32.json").read_text())
    record["settings"]["device"] = "cpu"
    (tmp_path / "model-speed-cpu-fp32.json").write_text(json.dumps(record))
    _model_record(tmp_path, "cuda-bf16", machine, "bf16", {0.25: 0.9})
    record = json.loads((tmp_path / "model-speed-cuda-bf16.json").read_text())
    record["settings"]["device"] = "cuda"
    (tmp_path / "model-speed-cuda-bf16.json").write_text(json.dumps(record))
    model = speed.model_speed([tmp_path]).set_index("precision")
    assert model.loc["fp32", "hardware"] == "Intel Xeon (AVX512)"
    assert model.loc["bf16", "hardware"] == "NVIDIA H200"

    _train_record(tmp_path, "cpu-bf16", machine, 2.0, device="cpu")
    _train_record(tmp_path, "cuda-bf16-basis0.25", machine, 0.006, device="cuda:0",
                  basis_size=0.25)
    train = speed.training_speed([tmp_path]).set_index("model")
    assert train.loc["dense", "hardware"] == "Intel Xeon (AVX512)"
    assert train.loc["basis 0.25", "hardware"] == "NVIDIA H200"
    assert pd.isna(train.loc["basis 0.25", "relative_to_dense"])  # no GPU dense step


def test_the_threads_of_a_model_record_are_a_column_not_a_form(tmp_path):
    """``-t1`` in a file name is the thread count (recorded in its settings), as ``-b512``
    is the batch; the form of a default run at 1 thread is still the stacked one."""
    _model_record(tmp_path, "cpu-fp32-t1", CPU, "fp32", {0.25: 0.5})
    _model_record(tmp_path, "cpu-fp32", CPU, "fp32", {0.25: 0.45})
    _model_record(tmp_path, "cpu-fp32-t0", CPU, "fp32", {0.25: 0.4})
    for tag, threads in (("cpu-fp32-t1", 1), ("cpu-fp32", 2), ("cpu-fp32-t0", 0)):
        record = json.loads((tmp_path / f"model-speed-{tag}.json").read_text())
        record["settings"]["threads"] = threads
        (tmp_path / f"model-speed-{tag}.json").write_text(json.dumps(record))
    model = speed.model_speed([tmp_path]).set_index("threads")
    assert list(model.loc[[1, 2, 0], "form"]) == ["stacked"] * 3
    assert list(model.loc[[1, 2, 0], "fwdbwd_ratio"]) == [0.5, 0.45, 0.4]  # 0: torch's default


def test_a_gpu_rows_threads_are_shown_as_none_as_they_do_not_bound_its_step(tmp_path):
    """The recorded torch CPU threads (2) stood beside every H200 row as though they set
    its step; a CPU row keeps its count, and a GPU basis step its dense reference."""
    _model_record(tmp_path, "cuda-bf16", GPU, "bf16", {0.25: 0.9})
    _model_record(tmp_path, "cpu-fp32", CPU, "fp32", {0.25: 0.45})
    for tag, device in (("cuda-bf16", "cuda"), ("cpu-fp32", "cpu")):
        record = json.loads((tmp_path / f"model-speed-{tag}.json").read_text())
        record["settings"].update(threads=2, device=device)
        (tmp_path / f"model-speed-{tag}.json").write_text(json.dumps(record))
    model = speed.model_speed([tmp_path]).set_index("precision")
    assert model.loc["bf16", "threads"] == "-" and model.loc["fp32", "threads"] == 2
    _train_record(tmp_path, "cuda-bf16", GPU, 0.004, device="cuda", threads=2)
    _train_record(tmp_path, "cuda-bf16-basis0.25", GPU, 0.002, device="cuda:0", threads=16,
                  basis_size=0.25)
    _train_record(tmp_path, "cpu-bf16", CPU, 2.0, device="cpu", threads=2)
    train = speed.training_speed([tmp_path])
    assert sorted(map(str, train["threads"])) == ["-", "-", "2"]
    gpu = train[train["hardware"] == "NVIDIA H200"].set_index("model")
    assert list(gpu["threads"]) == ["-", "-"]
    assert gpu.loc["basis 0.25", "relative_to_dense"] == pytest.approx(0.5)


def test_a_quick_measurement_is_marked_beside_its_form_not_taken_for_one(tmp_path):
    """``--quick`` files (``-quick``: few repeats) show their form, marked as quick; the
    first GPU records (an H200, 2026-11-30) were shown as a form called "quick"."""
    _model_record(tmp_path, "cuda-bf16-quick", GPU, "bf16", {0.25: 1.7})
    _model_record(tmp_path, "cuda-bf16-b512-quick", GPU, "bf16", {0.25: 1.3}, batch=512)
    _model_record(tmp_path, "cuda-bf16-fused-quick", GPU, "bf16", {0.25: 0.9})
    model = speed.model_speed([tmp_path]).set_index("fwdbwd_ratio")
    assert list(model.loc[[1.7, 1.3, 0.9], "form"]) == ["stacked (quick)", "stacked (quick)",
                                                        "fused (quick)"]


def test_how_a_file_was_measured_is_marked_beside_its_form(tmp_path):
    _model_record(tmp_path, "cuda-bf16-fused-b512-r5_7_2", GPU, "bf16", {0.25: 0.9})
    assert list(speed.model_speed([tmp_path])["form"]) == ["fused (r5_7_2)"]


def test_an_older_training_record_without_the_epoch_time_has_it_from_its_batch(tmp_path):
    """An epoch is 50000 // batch steps of the record's own batch size."""
    _train_record(tmp_path, "cuda-bf16-b256", GPU, 0.02, batch_size=256)
    record = json.loads((tmp_path / "train-throughput-cuda-bf16-b256.json").read_text())
    del record["epoch_seconds"]
    (tmp_path / "train-throughput-cuda-bf16-b256.json").write_text(json.dumps(record))
    (row,) = speed.training_speed([tmp_path]).to_dict("records")
    assert row["epoch_seconds"] == pytest.approx(0.02 * 195)


def test_the_checkpoint_time_and_gpu_peak_are_columns_and_an_older_record_shows_none(
        tmp_path):
    _train_record(tmp_path, "cuda-bf16", GPU, 0.0075, checkpoint_seconds_median=0.42,
                  cuda_peak_mib=1234.5)
    _train_record(tmp_path, "cuda-bf16-graphs", GPU, 0.0025, cuda_graphs=True)
    _train_record(tmp_path, "cpu-fp32", CPU, 2.0, cuda_peak_mib=None)
    table = speed.training_speed([tmp_path]).set_index(["hardware", "mode"])
    gpu = table.loc["NVIDIA H200"]
    assert gpu.loc["eager", "checkpoint_seconds"] == 0.42
    assert pd.isna(gpu.loc["graphs", "checkpoint_seconds"])
    assert gpu.loc["eager", "cuda_peak_mib"] == 1234.5
    assert pd.isna(gpu.loc["graphs", "cuda_peak_mib"])  # before b697cd8
    assert pd.isna(table.loc[("AMD EPYC (AVX512)", "eager"), "cuda_peak_mib"])  # a CPU
    shown = speed_summary._markdown(table.reset_index())
    assert "| 0.42 | 1234 |" in shown and shown.count("| - |") >= 3


def test_the_script_writes_the_summary_tables_and_the_side_by_side_plot(folders, repo, tmp_path,
                                                                      script_starts):
    out = tmp_path / "speed-summary"
    result = script_starts.run(repo / "scripts" / "speed_report.py",
                               [*map(str, folders), "--out", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = out.with_suffix(".md").read_text()
    assert "NVIDIA H200" in text and "AMD EPYC (AVX512)" in text
    assert "made by `python scripts/speed_report.py" in text.splitlines()[0]
    assert text.count("train-throughput-cuda-bf16") == 3  # each training row names its file
    assert len(pd.read_csv(tmp_path / "speed-summary-model.csv")) == 4
    assert len(pd.read_csv(tmp_path / "speed-summary-training.csv")) == 3
    assert out.with_suffix(".png").stat().st_size > 0


def test_by_default_the_script_reads_the_repositorys_results_from_any_folder(repo, tmp_path,
                                                                           script_starts):
    """Found in review: the default folders were ``results`` relative to where it ran, so
    from another folder it found no records, while the benchmarks write to the repository's
    ``results/`` wherever they run."""
    result = script_starts.run(repo / "scripts" / "speed_report.py", ["--out", "s"],
                               cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first = (tmp_path / "s.md").read_text().splitlines()[0]
    named = first.removeprefix("From the records in ").split(";")[0].split(", ")[0]
    assert (tmp_path / named).resolve() == repo / "results"


def test_a_damaged_record_or_a_missing_table_is_one_clear_error(folders, repo, tmp_path,
                                                                 script_starts):
    (folders[1] / "model-speed-cuda-bf16-fused-b512.csv").unlink()
    with pytest.raises(DatasetError, match="not beside it"):
        speed.model_speed(folders)
    (folders[0] / "model-speed-cpu-fp32.json").write_text("{not json")
    result = script_starts.run(repo / "scripts" / "speed_report.py",
                               [*map(str, folders), "--out", str(tmp_path / "s")],
                               cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "model-speed-cpu-fp32.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(DatasetError, match="no folder"):
        speed_summary.write_summary([tmp_path / "nowhere"], tmp_path / "s", "test")


def test_a_record_that_does_not_parse_is_restored_from_git_or_measured_again(tmp_path):
    """Found in review: a cut-off record said only "measure it again" (minutes to hours on
    a GPU), where a committed one under results/ is had back by ``git checkout`` in a
    second; the line gives both, worded as the damaged session log's hint."""
    path = tmp_path / "model-speed-cpu-fp32.json"
    path.write_text('{"kind": "bench')
    with pytest.raises(DatasetError) as caught:
        speed.model_speed([tmp_path])
    line = str(caught.value)
    assert f"restore it with `git checkout -- {shlex.quote(str(path))}`" in line
    assert "measure it again" in line and "\n" not in line


@pytest.mark.parametrize("damage", ["{\"kind\": \"bench", "[1, 2]"])
def test_a_damaged_record_says_the_sentence_benchmark_layers_redraw_says(tmp_path, damage):
    """A record cut off or not a JSON object is refused in the one sentence
    ``benchmark_layers.py --redraw`` says of it (tests/test_bench.py): one rule, one home."""
    path = tmp_path / "model-speed-cpu-fp32.json"
    path.write_text(damage)
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))} is not a readable "
                                           rf"benchmark record \(.+\); restore it with .+ if it is "
                                           rf"committed, or measure it again or move it out "
                                           rf"of the folder$"):
        speed.model_speed([tmp_path])


def test_a_json_file_of_another_kind_under_the_record_name_is_named_as_no_record(tmp_path):
    """Found in review: an unrelated JSON file named like a whole-model record (no ``file``
    naming a table) was refused as a record whose table "None" is not beside it, which
    read as a record to mend by copying its table over."""
    (tmp_path / "model-speed-cpu-fp32.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(DatasetError, match=r"model-speed-cpu-fp32.json names no table \(no "
                                           r"'file'\): it is no record of "
                                           r"scripts/benchmark_layers.py"):
        speed.model_speed([tmp_path])
    # found by a mutation test: a 'file' that is no name (a number) is no table either
    (tmp_path / "model-speed-cpu-fp32.json").write_text(json.dumps({"file": 3}))
    with pytest.raises(DatasetError, match=r"model-speed-cpu-fp32.json names no table"):
        speed.model_speed([tmp_path])


def test_an_output_named_with_its_suffix_names_every_file_from_the_same_stem(folders,
                                                                            tmp_path):
    """``--out s.md`` once wrote ``s.md``, ``s.png`` and ``s.md-model.csv`` (and ``--out
    s.json`` ``s.json.md``, found in review)."""
    for name in ("s.md", "s.json"):
        written = speed_summary.write_summary(folders, tmp_path / name, "test")
        assert sorted(p.name for p in written) == ["s-memory.csv", "s-model.csv",
                                                    "s-training.csv", "s.json", "s.md", "s.png"]
    # found in review: a stem with dots (a date) lost its last part in the .md and .png
    written = speed_summary.write_summary(folders, tmp_path / "s-2026.12.01", "test")
    assert sorted(p.name for p in written) == [
        "s-2026.12.01-memory.csv", "s-2026.12.01-model.csv", "s-2026.12.01-training.csv",
        "s-2026.12.01.json",
        "s-2026.12.01.md", "s-2026.12.01.png"]


def test_the_summary_carries_its_provenance_and_reads_a_folder_named_twice_once(folders,
                                                                                tmp_path):
    """Found in review: the summary had no versions or hardware (results/README.md says
    every file has its provenance), and a folder named twice (`make speed-report
    ARGS=results/gpu-h200` beside the default results/gpu*/) gave its rows twice, or called
    one training record two measurements of one setting."""
    speed_summary.write_summary(folders, tmp_path / "s", "python scripts/speed_report.py")
    sidecar = json.loads((tmp_path / "s.json").read_text())
    assert {"command", "git", "versions", "hardware", "date"} <= set(sidecar["provenance"])
    assert sidecar["files"] == ["s.md", "s-model.csv", "s-training.csv", "s-memory.csv",
                                "s.png"]
    twice = [*folders, folders[1].parent / "." / folders[1].name]
    assert len(speed.model_speed(twice)) == len(speed.model_speed(folders))
    assert len(speed.training_speed(twice)) == len(speed.training_speed(folders))


def test_an_out_that_is_a_folder_and_a_command_with_spaces(folders, load_script, tmp_path):
    """Found in review: --out naming a folder wrote the summary beside it, named after it;
    a recorded command was joined with spaces, so one with a path holding a space could
    not be run again."""
    script = load_script("speed_report")
    with pytest.raises(SystemExit) as stop:
        script.main([*map(str, folders), "--out", str(tmp_path)])
    assert stop.value.code == 2
    out = tmp_path / "a b" / "s"
    out.parent.mkdir()
    script.main([*map(str, folders), "--out", str(out)])
    command = json.loads(out.with_suffix(".json").read_text())["provenance"]["command"]
    assert shlex.split(command)[-1] == str(out)


def test_an_output_that_cannot_be_written_is_one_clear_error(folders, repo, tmp_path,
                                                             script_starts):
    """--out under a file once ended in a FileExistsError stack trace."""
    (tmp_path / "file").write_text("")
    result = script_starts.run(repo / "scripts" / "speed_report.py",
                               [*map(str, folders), "--out", str(tmp_path / "file" / "s")],
                               cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"speed_report.py: error: --out {tmp_path / 'file' / 's'} cannot be written "
        f"({tmp_path / 'file'} is not a folder); give another path")


@pytest.mark.parametrize("table", ["", "garbage\x00\x01 not,a\ntable", "model,batch,fract",
                                   "model,batch,fraction,theory_fwdbwd_ratio,fwdbwd_ratio,"
                                   "fwdbwd_vs_theory,dense_fwdbwd_ms\nresnet18,128,0.25,0.2"],
                         ids=["empty", "garbage", "cut-in-header", "cut-in-row"])
def test_a_damaged_table_beside_a_valid_record_is_one_clear_error(folders, table):
    (folders[0] / "model-speed-cpu-fp32.csv").write_text(table)
    with pytest.raises(DatasetError, match=r"model-speed-cpu-fp32\.csv, the table of "
                                           r"model-speed-cpu-fp32\.json, .*measure again"):
        speed.model_speed(folders)


def test_a_table_with_a_header_alone_or_an_empty_value_says_which(folders):
    """A whole-model table of its header alone, or with a value left empty (a benchmark
    stopped as it wrote), is refused saying which (neither ran in a test before the
    coverage review: the damaged tables above lack a column)."""
    table = folders[0] / "model-speed-cpu-fp32.csv"
    whole = table.read_text()
    for text, problem in ((whole.splitlines()[0] + "\n", "has no rows"),
                          (whole.replace(",0.39,", ",,", 1),
                           r"has empty or non-numeric values in fwdbwd_ratio \(cut off\?\)"),
                          # found by a mutation test: a last number cut short still reads
                          # as one (7.5 as 7.), in a record from before the tables' sha256
                          (whole.rstrip("\n")[:-1],
                           r"is cut off \(its last line is not complete\)")):
        table.write_text(text)
        with pytest.raises(DatasetError, match=rf"model-speed-cpu-fp32\.csv, the table of "
                                               rf"model-speed-cpu-fp32\.json, {problem}: "
                                               rf"measure again"):
            speed.model_speed(folders)


def test_a_table_other_than_the_one_its_record_was_written_with_is_refused(folders):
    """The benchmark writes its table, then its record: a run stopped between the two (or
    one file replaced) left a new table beside an older record, read as that record's
    commit and hardware. The record's sha256 of its table ties the two."""
    record_path = folders[0] / "model-speed-cpu-fp32.json"
    table = folders[0] / "model-speed-cpu-fp32.csv"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(record | {
        "file_sha256": hashlib.sha256(table.read_bytes()).hexdigest()}))
    assert len(speed.model_speed(folders)) == 4  # the table it was written with
    table.write_text(table.read_text().replace("0.39", "0.41"))
    with pytest.raises(DatasetError, match=r"model-speed-cpu-fp32\.csv, the table of "
                                           r"model-speed-cpu-fp32\.json, is not the table its "
                                           r"record was written with"):
        speed.model_speed(folders)


def test_a_training_record_whose_number_is_a_boolean_is_one_clear_error(tmp_path):
    """Found by a mutation test (the bool case dropped failed no test): ``true`` is no
    batch size, though Python counts it an int (a batch of 1, an epoch of 50,000 steps)."""
    _train_record(tmp_path, "cpu-fp32", CPU, 2.0, batch_size=True)
    with pytest.raises(DatasetError, match=r"train-throughput-cpu-fp32\.json lacks the numbers "
                                           r"batch_size of a training-step record"):
        speed.training_speed([tmp_path])


@pytest.mark.parametrize("field", ["batch_size", "seconds_per_step", "images_per_second"])
def test_a_training_record_lacking_a_number_is_one_clear_error(repo, tmp_path, field,
                                                               script_starts):
    """It once stopped the report with a KeyError's stack trace."""
    _train_record(tmp_path, "cpu-fp32", CPU, 2.0)
    path = tmp_path / "train-throughput-cpu-fp32.json"
    record = json.loads(path.read_text())
    del record[field]
    path.write_text(json.dumps(record))
    result = script_starts.run(repo / "scripts" / "speed_report.py",
                               [str(tmp_path), "--out", str(tmp_path / "s")], cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: {path} lacks the numbers {field}")
    assert "measure again" in result.stderr and not list(tmp_path.glob("s*"))


@pytest.mark.parametrize("pattern, change", [
    ("train-throughput", {"batch_size": 0}), ("train-throughput", {"basis_size": "0.5"}),
    ("train-throughput", {"provenance": "x"}),
    ("train-throughput", {"provenance": {"hardware": "x"}}),
    # a list where a number or a name is compared (found in review: a TypeError trace from
    # pandas, "unhashable type: 'list'", as the dense steps were matched)
    ("train-throughput", {"steps": [60]}), ("train-throughput", {"model": ["resnet18"]}),
    ("model-speed", {"settings": "x"}), ("model-speed", {"provenance": ["x"]})])
def test_a_record_with_fields_of_the_wrong_kind_is_one_clear_error(tmp_path, pattern, change):
    """Found in review: an edited record (a batch of 0, a basis size in quotes, provenance
    that is not an object) stopped the report with a ZeroDivisionError, ValueError or
    AttributeError from inside it."""
    _train_record(tmp_path, "cpu-fp32", CPU, 2.0)
    _model_record(tmp_path, "cpu-fp32", CPU, "fp32", {0.25: 0.39})
    path = tmp_path / f"{pattern}-cpu-fp32.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    writer = "benchmark_train" if pattern == "train-throughput" else "benchmark_layers"
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))} is not a benchmark record "
                                           rf"the summary can read \(\w+: .*\): measure again "
                                           rf"\(`python scripts/{writer}.py`\)"):
        speed.training_speed([tmp_path]) if pattern == "train-throughput" \
            else speed.model_speed([tmp_path])


def test_an_older_table_without_the_time_bound_is_still_read(tmp_path):
    _model_record(tmp_path, "cpu-fp32", CPU, "fp32", {0.25: 0.39})
    table = tmp_path / "model-speed-cpu-fp32.csv"
    pd.read_csv(table).drop(columns=["time_bound_ratio", "fwdbwd_spread"]).to_csv(table, index=False)
    model = speed.model_speed([tmp_path])
    assert len(model) == 1 and model[["time_bound_ratio", "fwdbwd_spread"]].isna().all().all()
    assert "| - |" in speed_summary.summary(model, speed.training_speed([tmp_path]))


def test_folders_without_any_speed_record_are_one_clear_error(repo, tmp_path, script_starts):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    result = script_starts.run(repo / "scripts" / "speed_report.py",
                               [str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                                str(tmp_path / "s")], cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"error: no speed records in {tmp_path / 'a'}, {tmp_path / 'b'}")
    assert "model-speed-*.json" in result.stderr and "train-throughput-*.json" in result.stderr
    assert not list(tmp_path.glob("s*"))  # no summary saying "(no records)"


def test_the_side_by_side_plot_shows_the_speedup_over_dense(folders, monkeypatch, tmp_path):
    """One panel per hardware; each line is 1 / the measured ratio, beside 1 / the FLOP
    ratio."""
    shown = []
    monkeypatch.setattr(speed_summary, "save_figure", lambda fig, path: shown.append(fig) or path)
    speed_summary.speed_across_hardware(speed.model_speed(folders), tmp_path / "plot.png", "note")
    gpu = [ax for ax in shown[0].axes if ax.get_title() == "NVIDIA H200"][0]
    lines = {line.get_label(): list(line.get_ydata()) for line in gpu.lines}
    assert lines["bf16, batch 512, fused (aaaaaaa)"] == pytest.approx([1 / 0.35, 1 / 0.62])
    assert lines["theory (FLOPs)"] == pytest.approx([4.0, 2.0])
    # what the records time (found in the docs review: the axis said "training step")
    assert shown[0].axes[0].get_ylabel() == "speedup over dense, training forward+backward (x)"
    speed_summary.pyplot().close(shown[0])


def test_a_form_of_several_parts_takes_its_basis_form_colour_not_the_flop_lines(
        tmp_path, monkeypatch):
    """The H200's graph-replayed fused records (form ``graphs, fused (quick)``) took the
    first spare colour, black, and were drawn like the FLOP line beside them."""
    _model_record(tmp_path, "cuda-bf16-graphs-fused-quick", GPU, "bf16", {0.25: 1.2})
    model = speed.model_speed([tmp_path])
    assert list(model["form"]) == ["graphs, fused (quick)"]
    shown = []
    monkeypatch.setattr(speed_summary, "save_figure", lambda fig, path: shown.append(fig) or path)
    speed_summary.speed_across_hardware(model, tmp_path / "plot.png", "note")
    colours = {line.get_label(): line.get_color() for line in shown[0].axes[0].lines}
    speed_summary.pyplot().close(shown[0])
    assert colours["bf16, batch 128, graphs, fused (quick) (aaaaaaa)"] == "tab:pink"


def test_a_record_that_names_no_precision_is_drawn_and_shown_with_a_dash(tmp_path,
                                                                          monkeypatch):
    """Found in the static-analysis review: the plot grouped its lines with pandas' default
    ``dropna``, so a whole-model record whose settings name no precision dropped out of the
    plot without a word (the table showed it)."""
    _model_record(tmp_path, "cpu-fp32", CPU, "fp32", {0.25: 0.39})
    _model_record(tmp_path, "cpu-fp32-nchw", CPU, None, {0.25: 0.45})
    model = speed.model_speed([tmp_path])
    shown = []
    monkeypatch.setattr(speed_summary, "save_figure", lambda fig, path: shown.append(fig) or path)
    speed_summary.speed_across_hardware(model, tmp_path / "plot.png", "note")
    labels = [line.get_label() for line in shown[0].axes[0].lines]
    speed_summary.pyplot().close(shown[0])
    assert "fp32, batch 128, stacked (aaaaaaa)" in labels
    assert "-, batch 128, nchw (aaaaaaa)" in labels
    assert set(model["precision"]) == {"-", "fp32"}


def test_the_script_reads_results_and_its_gpu_folders_by_default(folders, load_script,
                                                                 tmp_path, monkeypatch):
    """Without folders it reads ``results`` and each ``results/gpu*`` (where ``make
    gpu-speed`` writes), so the GPU rows stand beside the CPU ones."""
    script = load_script("speed_report")
    monkeypatch.chdir(tmp_path)
    script.main([])
    model = pd.read_csv(tmp_path / "results" / "speed-summary-model.csv")
    assert set(model["hardware"]) == {"AMD EPYC (AVX512)", "NVIDIA H200"}


def test_make_speed_report_passes_the_folders_named_as_given(repo):
    """Found in review: folders named with SPEED_FOLDERS= that did not exist were dropped
    without a word, and with none left the script summarized its default folders over the
    committed summary; now it gets them and refuses a missing one. The default list still
    leaves out the folders that do not exist."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("no make here")

    def dry(*variables):
        return subprocess.run(["make", "-n", "-o", ".venv/.installed", "speed-report",
                               *variables], cwd=repo, capture_output=True, text=True,
                              check=True).stdout

    assert "speed_report.py results/gpu-none " in dry("SPEED_FOLDERS=results/gpu-none")
    # (its line alone: under `make test` the nested make adds "Leaving directory" lines)
    line, = [line for line in dry().splitlines() if "speed_report.py" in line]
    default = line.split("speed_report.py", 1)[1].split()
    assert default[0] == "results" and all((repo / folder).is_dir() for folder in default)


def test_a_form_has_one_colour_in_every_panel_and_repeats_get_other_markers(tmp_path,
                                                                         monkeypatch):
    """The panels took matplotlib's colour cycle each in its own order: "stacked" was blue
    in one panel and purple in the next."""
    def rows(hardware, form, source, ratio):
        return [{"hardware": hardware, "precision": "fp32", "batch": 128, "threads": "-",
                 "form": form, "source": source, "commit": source, "fraction": f,
                 "theory_fwdbwd_ratio": f, "fwdbwd_ratio": ratio} for f in (0.25, 0.5)]
    model = pd.DataFrame(rows("CPU", "split", "a", 0.9) + rows("CPU", "stacked", "a", 0.5)
                         + rows("GPU", "stacked", "b", 1.5) + rows("GPU", "stacked", "c", 1.4))
    drawn = []
    monkeypatch.setattr(speed_summary, "save_figure", lambda fig, path: drawn.append(fig) or path)
    speed_summary.speed_across_hardware(model, tmp_path / "s.png", "note")
    lines = {(ax.get_title(), line.get_label().split(", ")[2]): line
             for ax in drawn[0].axes for line in ax.get_lines() if "batch" in line.get_label()}
    cpu, gpu_b, gpu_c = (lines[k] for k in [("CPU", "stacked (a)"), ("GPU", "stacked (b)"),
                                            ("GPU", "stacked (c)")])
    assert cpu.get_color() == gpu_b.get_color() == gpu_c.get_color()
    assert lines["CPU", "split (a)"].get_color() != cpu.get_color()
    assert gpu_b.get_marker() != gpu_c.get_marker()
    speed_summary.pyplot().close(drawn[0])


def test_the_memory_table_holds_the_records_that_measured_it(tmp_path):
    """Whole-model tables from f0cb738 on carry the training memory (CUDA: with the step's
    peak); older ones are left out of its table, not shown as empty rows."""
    _model_record(tmp_path, "cpu-fp32-nchw", CPU, "fp32", {0.25: 0.45})  # made before
    memory = {0.25: {"params": 25, "dense_params": 100, "dense_saved_mib": 574.0,
                     "basis_saved_mib": 650.0, "saved_ratio": 650 / 574,
                     "dense_peak_mib": 800.0, "basis_peak_mib": 840.0, "peak_ratio": 1.05}}
    _model_record(tmp_path, "cuda-bf16", GPU, "bf16", {0.25: 1.3}, columns=memory)
    written = speed_summary.write_summary([tmp_path], tmp_path / "s", "test")
    (row,) = pd.read_csv(tmp_path / "s-memory.csv").to_dict("records")
    assert (row["hardware"], row["form"], row["fraction"]) == ("NVIDIA H200", "stacked", 0.25)
    assert row["params_ratio"] == 0.25 and row["saved_ratio"] == pytest.approx(650 / 574)
    assert (row["dense_peak_mib"], row["peak_ratio"]) == (800.0, 1.05)
    text = (tmp_path / "s.md").read_text()
    assert "| NVIDIA H200 | bf16 | 128 | stacked | 0.25 | 0.25 | 574 | 1.13 | 800 | 1.05 |" in text
    assert len(pd.read_csv(tmp_path / "s-model.csv")) == 2 and len(written) == 6


def test_a_training_step_with_the_frobenius_correction_is_a_form_of_its_own(tmp_path):
    """Its step is compared with the dense one like any basis step, and named apart from
    the plain basis step of the same size."""
    _train_record(tmp_path, "cuda-bf16", GPU, 0.0050)
    _train_record(tmp_path, "cuda-bf16-basis0.25", GPU, 0.0060, basis_size=0.25)
    _train_record(tmp_path, "cuda-bf16-basis0.25-frobenius", GPU, 0.0063, basis_size=0.25,
                  frobenius_decay=True, fuse_norm=True)
    train = speed.training_speed([tmp_path]).set_index("form")
    assert train.loc["stacked, folded norms, Frobenius decay", "relative_to_dense"] == (
        pytest.approx(1.26))
    assert train.loc["stacked", "relative_to_dense"] == pytest.approx(1.2)


def test_a_training_step_of_chosen_layers_is_named_by_its_layers(tmp_path):
    """A ``--layers`` step (some convs in basis form) is compared with the dense step as any
    basis step, and named apart from the all-layer step by its count and list."""
    _train_record(tmp_path, "cpu-fp32", CPU, 1.0)
    _train_record(tmp_path, "cpu-fp32-basis0.25", CPU, 0.5, basis_size=0.25)
    _train_record(tmp_path, "cpu-fp32-basis0.25-layers0123abcd", CPU, 0.8, basis_size=0.25,
                  layers="layer3.*,layer4.*", basis_layers=["layer3.0.conv1"] * 9)
    train = speed.training_speed([tmp_path]).set_index("form")
    assert train.loc["stacked, 9 layers (layer3.* layer4.*)", "relative_to_dense"] == (
        pytest.approx(0.8))
    assert train.loc["stacked", "relative_to_dense"] == pytest.approx(0.5)


def test_a_step_is_compared_only_with_a_dense_step_of_its_torch_build(tmp_path):
    """Found in review: the matching took a CPU's name and the commit, not the torch build,
    so a step timed under one torch was relative to a dense step timed under another."""
    _train_record(tmp_path / "a", "cpu-fp32", CPU, 1.0)
    _train_record(tmp_path / "b", "cpu-fp32-basis0.25", CPU, 0.5, basis_size=0.25)
    for folder, version in (("a", "2.13.0+cpu"), ("b", "2.11.0+cpu")):
        path = next((tmp_path / folder).glob("*.json"))
        record = json.loads(path.read_text())
        record["provenance"]["versions"] = {"torch": version}
        path.write_text(json.dumps(record))
    train = speed.training_speed([tmp_path / "a", tmp_path / "b"]).set_index("model")
    assert pd.isna(train.loc["basis 0.25", "relative_to_dense"])
    (tmp_path / "a" / "train-throughput-cpu-fp32.json").unlink()
    _train_record(tmp_path / "a", "cpu-fp32", CPU, 1.0)  # no versions recorded: none matched
    assert pd.isna(speed.training_speed([tmp_path / "a", tmp_path / "b"]).set_index(
        "model").loc["basis 0.25", "relative_to_dense"])


def test_a_step_is_compared_only_with_a_dense_step_of_its_own_machine(tmp_path):
    """Found in review: the matching took the CPU's name, so a basis step was relative to a
    dense step of the same commit on another VM of that name (cf423c8's dense step took
    2.47 s on one 2-core AMD EPYC VM and 1.20 s on another: docs/speed.md)."""
    def on(host, cores):
        return {**CPU, "cpu_count": cores, "platform": f"Linux-6.18.44-{host}-x86_64"}
    _train_record(tmp_path / "a", "cpu-fp32", on("fc-v669", 2), 2.4)
    _train_record(tmp_path / "b", "cpu-fp32-basis0.25", on("fc-v657", 2), 0.6,
                  basis_size=0.25)
    train = speed.training_speed([tmp_path / "a", tmp_path / "b"]).set_index("model")
    assert train.loc["basis 0.25", "hardware"] == train.loc["dense", "hardware"]
    assert pd.isna(train.loc["basis 0.25", "relative_to_dense"])
    _train_record(tmp_path / "b", "cpu-fp32", on("fc-v657", 2), 1.2)  # its own machine's
    train = speed.training_speed([tmp_path / "b"]).set_index("model")
    assert train.loc["basis 0.25", "relative_to_dense"] == pytest.approx(0.5)
    # two dense steps of one commit, one per machine, are no ambiguity
    train = speed.training_speed([tmp_path / "a", tmp_path / "b"])
    assert sorted(train["relative_to_dense"].dropna()) == [0.5, 1.0, 1.0]


def test_a_step_is_compared_only_with_a_dense_step_of_its_own_tf32_flags(tmp_path):
    """A record says whether float32 ran in TF32 (records.hardware); a basis step with
    TF32 off is not relative to a dense step with it on, and records from before the
    flags were kept (none here) still compare among themselves."""
    def tf32(on):
        return {**GPU, "cudnn_allow_tf32": on, "cuda_matmul_allow_tf32": on,
                "float32_matmul_precision": "high" if on else "highest"}
    _train_record(tmp_path / "a", "cuda-fp32", tf32(True), 0.004, amp="none")
    _train_record(tmp_path / "a", "cuda-fp32-basis0.25", tf32(False), 0.006, amp="none",
                  basis_size=0.25)
    _train_record(tmp_path / "b", "cuda-fp32", GPU, 0.008, amp="none")
    _train_record(tmp_path / "b", "cuda-fp32-basis0.25", GPU, 0.006, amp="none",
                  basis_size=0.25)
    train = speed.training_speed([tmp_path / "a"]).set_index("model")
    assert pd.isna(train.loc["basis 0.25", "relative_to_dense"])
    train = speed.training_speed([tmp_path / "b"]).set_index("model")
    assert train.loc["basis 0.25", "relative_to_dense"] == pytest.approx(0.75)


def test_a_lines_label_says_its_threads_where_they_bound_the_step(tmp_path, monkeypatch):
    """Found in the speed review: the threads became a column, not a form, and so left the
    plot's legend; records at 1 and 2 threads of one commit were two lines labelled alike.
    A GPU line's threads ("-") are not said, as in the table."""
    for tag, threads in (("cpu-fp32-t1", 1), ("cpu-fp32", 2)):
        _model_record(tmp_path, tag, CPU, "fp32", {0.25: 0.4 + threads / 10})
        record = json.loads((tmp_path / f"model-speed-{tag}.json").read_text())
        record["settings"].update(threads=threads, device="cpu")
        (tmp_path / f"model-speed-{tag}.json").write_text(json.dumps(record))
    _model_record(tmp_path, "cuda-bf16", GPU, "bf16", {0.25: 0.9})
    shown = []
    monkeypatch.setattr(speed_summary, "save_figure", lambda fig, path: shown.append(fig) or path)
    speed_summary.speed_across_hardware(speed.model_speed([tmp_path]), tmp_path / "plot.png",
                                        "note")
    labels = {ax.get_title(): {line.get_label() for line in ax.lines} for ax in shown[0].axes}
    speed_summary.pyplot().close(shown[0])
    assert {"fp32, batch 128, 1 thread, stacked (aaaaaaa)",
            "fp32, batch 128, 2 threads, stacked (aaaaaaa)"} <= labels["AMD EPYC (AVX512)"]
    assert "bf16, batch 128, stacked (aaaaaaa)" in labels["NVIDIA H200"]


def test_the_flop_line_is_the_stacked_forms_also_of_quick_records(tmp_path, monkeypatch):
    """Found in the speed review: only a form named exactly "stacked" was taken for the
    FLOP line, so a panel of quick records (the H200's: "stacked (quick)") drew the first
    record's FLOP ratio whatever its form (here folded norms', counted otherwise)."""
    _model_record(tmp_path, "cuda-bf16-fusenorm-quick", GPU, "bf16", {0.25: 0.5},
                  columns={0.25: {"theory_fwdbwd_ratio": 0.3}})
    _model_record(tmp_path, "cuda-bf16-quick", GPU, "bf16", {0.25: 0.6})
    shown = []
    monkeypatch.setattr(speed_summary, "save_figure", lambda fig, path: shown.append(fig) or path)
    speed_summary.speed_across_hardware(speed.model_speed([tmp_path]), tmp_path / "plot.png",
                                        "note")
    lines = {line.get_label(): list(line.get_ydata()) for line in shown[0].axes[0].lines}
    speed_summary.pyplot().close(shown[0])
    assert lines["theory (FLOPs, stacked form)"] == pytest.approx([1 / 0.25])


def test_a_float32_gpu_row_says_whether_tf32_was_on_and_other_tables_have_no_such_column(
        tmp_path):
    """Found in review: the tables did not say whether a float32 GPU step ran in TF32,
    which changes its time several fold. ``tf32`` says which of cuDNN's convolutions and
    the matmuls could ("convs": torch's default); "-" on a row where it changes nothing
    (CPU, bf16) or whose record predates the flags; and a table without a float32 GPU row
    has no such column, as before."""
    def flags(hardware, convs, matmuls):
        return {**hardware, "cudnn_allow_tf32": convs, "cuda_matmul_allow_tf32": matmuls,
                "float32_matmul_precision": "high" if matmuls else "highest"}
    fp32, other = tmp_path / "fp32", tmp_path / "other"
    for name, convs, matmuls in (("on", True, True), ("off", False, False),
                                 ("convs", True, False), ("matmuls", False, True)):
        _train_record(fp32, f"cuda-fp32-{name}", flags(GPU, convs, matmuls), 0.004, amp="none")
    _train_record(fp32, "cuda-fp32-before-the-flags", GPU, 0.004, amp="none")
    _train_record(other, "cuda-bf16", flags(GPU, True, True), 0.002)
    _train_record(other, "cpu-fp32", flags(CPU, True, True), 2.0, amp="none")
    train = speed.training_speed([fp32, other])
    said = dict(zip(train["source"].map(lambda s: s.split("throughput-")[1][:-5]),
                    train["tf32"]))
    assert said == {"cuda-fp32-on": "on", "cuda-fp32-off": "off", "cuda-fp32-convs": "convs",
                    "cuda-fp32-matmuls": "matmuls", "cuda-fp32-before-the-flags": "-",
                    "cuda-bf16": "-", "cpu-fp32": "-"}
    assert list(train.columns[:3]) == ["hardware", "precision", "tf32"]
    assert "| tf32 |" in speed_summary.summary(speed.model_speed([fp32]), train)
    # no row float32 on a GPU: the table as it was, without the column
    assert "tf32" not in speed.training_speed([other]).columns
    # the whole-model tables alike
    _model_record(fp32, "cuda-fp32", flags(GPU, True, False), "fp32", {0.25: 0.9})
    _model_record(other, "cuda-bf16", flags(GPU, True, True), "bf16", {0.25: 0.7})
    _model_record(other, "cpu-fp32", flags(CPU, True, True), "fp32", {0.25: 0.4})
    cpu = json.loads((other / "model-speed-cpu-fp32.json").read_text())
    cpu["settings"]["device"] = "cpu"
    (other / "model-speed-cpu-fp32.json").write_text(json.dumps(cpu))
    model = speed.model_speed([fp32, other])
    assert dict(zip(model["source"].map(lambda s: s.split("speed-")[1][:-5]), model["tf32"])) == {
        "cuda-fp32": "convs", "cuda-bf16": "-", "cpu-fp32": "-"}
    assert "tf32" not in speed.model_speed([other]).columns
    assert "| tf32 |" not in speed_summary.summary(speed.model_speed([other]),
                                           speed.training_speed([other]))
