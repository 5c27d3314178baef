"""``selection.budget_metric=time``: layers chosen by what they save in measured training
time; measured on the run's device in the run's settings, once per machine and setting
(cached), and kept by a resumed run whatever it would measure now."""

import json
import logging

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import basisconv.config  # noqa: F401  (registers the schema)
from basisconv import (distributed, selection, sensitivity, sensitivity_estimate,
                       sensitivity_key, time_budget)
from basisconv.errors import ConfigError
from basisconv.models import build_model
from basisconv.train import fit
from interruption import fit_stopped_before


def compose_timed(repo, cache, *overrides, config="train"):
    with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
        return compose(config, overrides=[
            "model=resnet8", "model.width=0.5", "trainer.batch_size=16", "logger=none",
            "selection=first_k", "selection.budget_metric=time",
            "selection.budget_reduction=0.1", f"sensitivity.cache_dir={cache}", *overrides])


def fake_timings(calls: list, fastest=lambda names, call: names[0]):
    """A stand-in for :func:`basisconv.timing.layer_time_savings`: one layer saves time
    (``fastest`` says which, per call), the others cost time; it counts its calls and the
    thread count it ran with."""
    def measure(model, basis_model, names, runner, batch, image, **_):
        calls.append({"names": list(names), "threads": torch.get_num_threads()})
        fast = fastest(names, len(calls))
        rows = [{"layer": n, "dense_ms": 1.0, "basis_ms": 0.1 if n == fast else 2.0,
                 "seconds_saved": (0.9e-3 if n == fast else -1e-3)} for n in names]
        return pd.DataFrame(rows), 10e-3
    return measure


@pytest.mark.device
def test_a_time_budget_measures_every_candidate_on_the_training_device(repo, device, tmp_path,
                                                                       monkeypatch):
    """Each candidate's dense and basis forward+backward is timed on ``trainer.device``
    at the run's batch size, and the dense model's step is the budget's 100 %; the choice
    takes only layers that save time; torch's random state is left alone; under torchrun
    it is refused."""
    # one thread: a 2-thread op on a loaded 2-core machine can stall 100x at its barriers
    cfg = compose_timed(repo, tmp_path, f"trainer.device={device}", "trainer.threads=1")
    model = build_model("resnet8", width=0.5)
    table = selection.layer_savings(model, cfg.basis)
    state = torch.get_rng_state()
    timed, dense = time_budget.with_measured_time(cfg, table, selection.dense_totals(model))
    assert torch.equal(torch.get_rng_state(), state)
    assert list(timed["layer"]) == list(table["layer"])
    assert timed.attrs["measured_on"].startswith(device.type)  # for the record: config says auto
    assert (timed["dense_ms"] > 0).all() and (timed["basis_ms"] > 0).all()
    assert timed["seconds_saved"].tolist() == pytest.approx(
        ((timed["dense_ms"] - timed["basis_ms"]) / 1e3).tolist())
    # the whole step, not a layer's (against the median layer: a loaded CPU can make any
    # one layer's median slow, as seen here with other processes running)
    assert dense["time"] > timed["dense_ms"].median() / 1e3 > 0
    chosen = sensitivity.choose_layers(cfg) or []
    assert set(chosen) <= set(table["layer"])
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match="torchrun"):
        time_budget.with_measured_time(cfg, table, selection.dense_totals(model))


def test_timings_are_measured_once_per_setting_in_the_runs_settings(repo, tmp_path,
                                                                    monkeypatch):
    """Every seed of a row, and the sensitivity run that records the timings, choose from
    the same numbers: measured once, in the run's thread count (not the caller's), cached
    by key; another batch size measures again, ``sensitivity.recompute`` too, and a
    damaged cache file is one error naming the fix."""
    calls = []
    monkeypatch.setattr(time_budget, "layer_time_savings", fake_timings(calls))
    torch.set_num_threads(2)  # the caller's; the run says 1 (restored by conftest)
    cfg = compose_timed(repo, tmp_path, "trainer.threads=1")
    first = sensitivity.choose_layers(cfg)
    assert first == [calls[0]["names"][0]]
    assert calls[0]["threads"] == 1 and torch.get_num_threads() == 2
    assert sensitivity.choose_layers(compose_timed(repo, tmp_path, "trainer.threads=1",
                                                   "seed=1")) == first
    assert len(calls) == 1
    compose_other = compose_timed(repo, tmp_path, "trainer.threads=1", "trainer.batch_size=32")
    sensitivity.choose_layers(compose_other)
    sensitivity.choose_layers(compose_timed(repo, tmp_path, "trainer.threads=1",
                                            "sensitivity.recompute=true"))
    assert len(calls) == 3
    files = sorted((tmp_path / "layer-times").glob("*.json"))
    assert len(files) == 2
    files[0].write_text("{not json")
    with pytest.raises(ConfigError, match="delete the file"):
        for c in (cfg, compose_other):
            sensitivity.choose_layers(c)


def test_every_setting_that_changes_a_timing_changes_its_cache_file(repo, tmp_path):
    """A setting missing from the key would reuse another setting's timings (only the
    batch size is shown above); the settings are listed here, not read from key_fields."""
    cfg = compose_timed(repo, tmp_path)
    layers = ["layer1.0.conv1", "layer2.0.conv1"]
    path = time_budget.cache_path(cfg, time_budget.key_fields(cfg, layers))
    assert time_budget.cache_path(cfg, time_budget.key_fields(cfg, layers[:1])) != path
    for key, value in {"model.name": "resnet20", "model.width": 0.25, "basis.size": 0.25,
                       "basis.combine": "split", "basis.coefficient_rank": 2,
                       "basis.fuse_norm": True, "basis.share_coefficients": True,
                       "basis.only_where_saves": False, "trainer.device": "cpu",
                       "trainer.batch_size": 32, "trainer.channels_last": False,
                       "trainer.amp": "bf16", "trainer.threads": 3,
                       "trainer.deterministic": True, "data.num_classes": 100}.items():
        changed = cfg.copy()
        assert OmegaConf.select(changed, key) != value, key
        OmegaConf.update(changed, key, value, merge=False)
        assert time_budget.cache_path(changed, time_budget.key_fields(changed, layers)) != path, key


GPU_MACHINE = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "gpu": "NVIDIA H100",
               "cuda": "12.4", "cudnn": 90100, "cuda_matmul_allow_tf32": False,
               "cudnn_allow_tf32": True, "float32_matmul_precision": "highest"}


@pytest.mark.parametrize("device, amp, flags_change_it", [("cuda", "none", True),
                                                          ("auto", "none", True),
                                                          ("cuda", "bf16", False),
                                                          ("cpu", "none", False)])
def test_the_tf32_flags_change_the_cache_file_of_float32_timings_on_a_gpu(
        repo, tmp_path, monkeypatch, device, amp, flags_change_it):
    """Found in review: the key left out whether float32 may run in TF32, so layer times
    measured with TF32 on were reused with it off. The flags count only where they change
    what is measured (float32 on the GPU): elsewhere the key is as before, and a cached
    timing of those settings is still read."""
    cfg = compose_timed(repo, tmp_path, f"trainer.device={device}", f"trainer.amp={amp}")
    layers = ["layer1.0.conv1"]

    def path_on(machine: dict):
        monkeypatch.setattr(time_budget, "hardware", lambda: machine)
        return time_budget.cache_path(cfg, time_budget.key_fields(cfg, layers))

    default = path_on(GPU_MACHINE)
    for flag, other in {"cuda_matmul_allow_tf32": True, "cudnn_allow_tf32": False,
                        "float32_matmul_precision": "high"}.items():
        assert (path_on({**GPU_MACHINE, flag: other}) != default) is flags_change_it, flag
    if not flags_change_it:  # the key of a machine whose record had no flags (before them)
        before = {k: v for k, v in GPU_MACHINE.items() if "tf32" not in k and "float32" not in k}
        assert path_on(before) == default


@pytest.mark.parametrize("width, size, name", [(0.5, 0.5, "resnet8-w0.5-m0.5-"),
                                               (1.0, 8, "resnet8-w1-m8-")])
def test_the_timings_and_the_table_are_named_by_model_width_and_basis_size(repo, tmp_path,
                                                                           width, size, name):
    """Both caches name an entry ``<model>-w<width>-m<size>-<digest of its key>`` (one rule,
    ``time_budget.readable_key``): a changed name would not find what is cached."""
    from basisconv.records import json_digest

    cfg = compose_timed(repo, tmp_path, f"model.width={width}", f"basis.size={size}")
    fields = time_budget.key_fields(cfg, ["layer1.0.conv1"])
    assert time_budget.cache_path(cfg, fields) == (
        tmp_path / "layer-times" / f"{name}{json_digest(fields)}.json")
    assert sensitivity_key.cache_key(cfg) == (
        f"{name}{json_digest(sensitivity_key.key_fields(cfg))}")


def measured_by_a_fake(monkeypatch) -> list:
    """``time_budget.measure`` replaced by a fake that times each layer at 2 ms dense and
    1 ms in basis form; returns the list of the layer lists it was asked to time."""
    measured = []
    monkeypatch.setattr(time_budget, "measure", lambda cfg, names: measured.append(names) or {
        "layers": [{"layer": n, "dense_ms": 2.0, "basis_ms": 1.0, "seconds_saved": 1e-3}
                   for n in names], "dense_step_seconds": 0.1})
    return measured


def test_an_edited_model_definition_is_timed_again(repo, tmp_path, monkeypatch, caplog):
    """The same name and width, other layers (a user's model file edited between runs):
    the timings are measured again, where the old ones were read back."""
    from basisconv.models import registry

    cfg = compose_timed(repo, tmp_path)
    measured = measured_by_a_fake(monkeypatch)
    table = pd.DataFrame({"layer": ["layer1.0.conv1", "layer2.0.conv1"]})
    time_budget.with_measured_time(cfg, table, {"params": 1, "flops": 1})
    time_budget.with_measured_time(cfg, table, {"params": 1, "flops": 1})
    assert len(measured) == 1
    original = registry._REGISTRY[cfg.model.name]
    monkeypatch.setitem(registry._REGISTRY, cfg.model.name,
                        lambda num_classes, width: original(num_classes, width=2 * width))
    with caplog.at_level("INFO", logger="basisconv.time_budget"):
        time_budget.with_measured_time(cfg, table, {"params": 1, "flops": 1})
    assert len(measured) == 2 and "another definition of model" in caplog.text
    # a file written before the architecture was kept beside the times is read as it is
    # (found by a mutation test, failing no test before: it was measured again)
    path = time_budget.cache_path(cfg, time_budget.key_fields(cfg, list(table["layer"])))
    kept = json.loads(path.read_text())
    del kept["architecture"]
    path.write_text(json.dumps(kept))
    time_budget.with_measured_time(cfg, table, {"params": 1, "flops": 1})
    assert len(measured) == 2


def compose_short_run(repo, cache):
    """A time-budget run of two short epochs on a little generated data (stopped and
    resumed by the tests below)."""
    return compose_timed(repo, cache, "data=stripes", "data.synthetic_train=100",
                         "data.synthetic_test=40", "trainer.epochs=2", "trainer.batch_size=50",
                         "trainer.progress=false", "trainer.threads=1")

def test_a_resumed_run_keeps_the_layers_its_checkpoint_was_built_with(repo, tmp_path,
                                                                      monkeypatch):
    """Resumed where its timings are gone (another machine) and measuring again would
    choose another layer, a run converts the layers it started with, and its record says
    which."""
    calls = []
    monkeypatch.setattr(time_budget, "layer_time_savings",
                        fake_timings(calls, lambda names, call: names[0 if call == 1 else -1]))
    cfg = compose_short_run(repo, tmp_path / "cache")
    fit_stopped_before(2, cfg, tmp_path / "run")
    first = calls[0]["names"][0]
    for cached in (tmp_path / "cache" / "layer-times").glob("*.json"):
        cached.unlink()
    resumed = fit(cfg, tmp_path / "run")
    assert resumed["status"] == "complete" and resumed["provenance"]["resumed_from_epoch"] == 1
    assert resumed["layers"] == [first] and resumed["model"]["basis_layers"] == [first]
    assert len(calls) == 1  # nothing measured again


def test_a_training_record_names_the_layer_times_that_chose_its_layers(repo, tmp_path,
                                                                       monkeypatch):
    """Found in review: a run chosen by a time budget kept no trace of the times that chose
    its layers (a sensitivity policy's keeps its table's key): its record names the cached
    timings' key and holds their device and times, and a resumed run, which measures
    nothing, keeps them."""
    calls = []
    monkeypatch.setattr(time_budget, "layer_time_savings", fake_timings(calls))
    cfg = compose_short_run(repo, tmp_path / "cache")
    fit_stopped_before(2, cfg, tmp_path / "run")
    [cached] = (tmp_path / "cache" / "layer-times").glob("*.json")
    measured = json.loads((tmp_path / "run" / "run.json").read_text())["measured_time"]
    assert measured["key"] == cached.stem and measured["device"] == "cpu"
    assert measured["dense_step_seconds"] == 10e-3
    assert measured["layers"] == json.loads(cached.read_text())["layers"]
    cached.unlink()
    resumed = fit(cfg, tmp_path / "run")
    assert resumed["measured_time"] == measured and len(calls) == 1


def test_a_checkpoint_from_before_records_kept_layers_resumes_with_its_basis_layers(
        repo, tmp_path, monkeypatch):
    """Its record names no ``layers`` but describes its model: choosing again (another
    machine's table) gave other layers and a load_state_dict traceback. And a checkpoint
    that does not fit the model built is one line naming the fix."""
    from basisconv import training

    cfg = compose_timed(repo, tmp_path / "cache")
    old = {"record": {"model": {"basis_layers": ["layer2.0.conv1"]}}}
    monkeypatch.setattr(training, "choose_layers_and_table", lambda cfg: (
        ["layer1.0.conv1"], {"sensitivity_key": None, "sensitivity_table": None}))
    # (an older record names no layer times: None, as a run that no time budget chose)
    assert training.layers_to_convert(cfg, old) == (["layer2.0.conv1"], {
        "sensitivity_key": None, "sensitivity_table": None, "measured_time": None})
    warm_up = {"record": {"model": {"basis_layers": []}}}  # dense so far: chosen now
    assert training.layers_to_convert(cfg, warm_up)[0] == ["layer1.0.conv1"]
    # a record whose selection chose no layer (layers None: dense) keeps it; choosing
    # again (another machine's times) could convert layers its dense checkpoint lacks
    chose_none = {"record": {"layers": None, "model": {"basis_layers": []}}}
    assert training.layers_to_convert(cfg, chose_none)[0] is None

    calls = []
    monkeypatch.setattr(time_budget, "layer_time_savings", fake_timings(calls))
    cfg = compose_short_run(repo, tmp_path / "cache")
    fit_stopped_before(2, cfg, tmp_path / "run")
    monkeypatch.setattr(training, "layers_to_convert", lambda cfg, checkpoint: (
        ["layer3.0.conv1"], {}))
    with pytest.raises(ConfigError, match="does not fit the model this config builds.*"
                                          "trainer.resume=false"):
        fit(cfg, tmp_path / "run")


def test_a_run_of_torchs_default_thread_count_keys_its_timings_by_the_count_it_ran_with(
        repo, tmp_path):
    """``trainer.threads=null`` times with whatever torch's default is in that process
    (the cores, ``OMP_NUM_THREADS``, a CPU affinity): a run with 1 thread must not reuse
    timings measured with 2 (it did: the key held ``null`` for both)."""
    cfg = compose_timed(repo, tmp_path)
    assert cfg.trainer.threads is None
    layers = ["layer1.0.conv1"]
    paths = set()
    for threads in (1, 2):
        torch.set_num_threads(threads)  # (restored by conftest)
        paths.add(time_budget.cache_path(cfg, time_budget.key_fields(cfg, layers)))
    assert len(paths) == 2


def test_a_layer_that_folds_its_norm_is_timed_with_it(monkeypatch):
    """Found in review: with basis.fuse_norm=true each layer was timed alone, so the fold
    the run trains with never ran in the measurement, nor did the dense norm and ReLU."""
    from basisconv import layers, timing
    from basisconv.surgery import apply_basis

    model = build_model("resnet8", width=0.25)
    names = ["layer1.0.conv1", "layer2.0.conv2"]
    basis_model = apply_basis(model, names, 0.5, convert=False, fuse_norm=True)
    folds, fold = [], layers.fused_batch_norm  # (the name the layer's forward calls)
    monkeypatch.setattr(layers, "fused_batch_norm",
                        lambda *a, **k: folds.append(1) or fold(*a, **k))
    norms, forward = [], torch.nn.BatchNorm2d.forward
    monkeypatch.setattr(torch.nn.BatchNorm2d, "forward",
                        lambda self, x: norms.append(1) or forward(self, x))
    runner = timing.Runner(torch.device("cpu"), channels_last=False, amp="none")
    assert timing.folded_norms(basis_model, names, runner.input(2, 3, 32, 32)) == {
        "layer1.0.conv1": ("layer1.0.bn1", True), "layer2.0.conv2": ("layer2.0.bn2", False)}
    timed = []  # per timed step: the folds and the plain norms it ran

    def run(self, steps, repeats, warmup):
        for form, step in steps.items():
            folds.clear(), norms.clear()
            step()
            timed.append((form, len(folds), len(norms)))
        return {form: 1.0 for form in steps}

    monkeypatch.setattr(timing.Timer, "run", run)
    rows, _ = timing.layer_time_savings(model, basis_model, names, runner, 2, (3, 32, 32))
    assert rows["layer"].tolist() == names
    # each layer: the dense conv with its norm, the basis layer with its fold (then the
    # dense model's whole step, with all its norms)
    assert timed[:4] == [("dense", 0, 1), ("basis", 1, 0)] * 2


def test_a_layers_saving_is_its_dense_minus_its_basis_training_step(monkeypatch):
    """The arithmetic on the medians (mutation review: the saving's sign inverted, the
    stem timed with a gradient into the images, or the budget's 100 % timed as a forward
    only all passed): with the dense layer at 3 ms and its basis form at 1 ms, 2 ms saved;
    the stem's input needs no gradient and a later layer's does; the model's step is a
    training step (its head gets a gradient), 50 ms -> 0.05 s."""
    from basisconv import timing
    from basisconv.surgery import apply_basis

    model = build_model("resnet8", width=0.25)
    names = ["conv1", "layer1.0.conv1"]
    basis_model = apply_basis(model, names, 0.5, convert=False)
    runner = timing.Runner(torch.device("cpu"), channels_last=False, amp="none")
    inputs, make_input = [], runner.input
    monkeypatch.setattr(runner, "input", lambda *shape, requires_grad=False: inputs.append(
        (shape[1], requires_grad)) or make_input(*shape, requires_grad=requires_grad))
    head_grads = []

    def run(self, steps, repeats, warmup):
        for step in steps.values():
            model.linear.weight.grad = None
            step()
        head_grads.append(model.linear.weight.grad is not None)
        return {"model": 50.0} if "model" in steps else {"dense": 3.0, "basis": 1.0}

    monkeypatch.setattr(timing.Timer, "run", run)
    rows, step = timing.layer_time_savings(model, basis_model, names, runner, 2, (3, 32, 32))
    assert rows["seconds_saved"].tolist() == pytest.approx([2e-3, 2e-3])
    assert step == pytest.approx(0.05)
    # the images (3 channels, no gradient), then each layer's input
    assert inputs == [(3, False), (3, False), (model.conv1.out_channels, True)]
    assert head_grads[-1]


@pytest.mark.parametrize("damage", ["no_saving", "null_saving", "other_layers"])
def test_a_cache_with_a_layer_or_number_missing_is_refused(repo, tmp_path, monkeypatch, damage):
    """Found in review: a cache whose seconds_saved were deleted converted every layer (a
    missing saving read as NaN); a null one ended in a TypeError."""
    import json

    monkeypatch.setattr(time_budget, "layer_time_savings", fake_timings([]))
    cfg = compose_timed(repo, tmp_path, "trainer.threads=1")
    sensitivity.choose_layers(cfg)
    (path,) = (tmp_path / "layer-times").glob("*.json")
    cached = json.loads(path.read_text())
    for row in cached["layers"]:
        if damage == "no_saving":
            del row["seconds_saved"]
        elif damage == "null_saving":
            row["seconds_saved"] = None
    if damage == "other_layers":
        cached["layers"] = cached["layers"][1:]
    path.write_text(json.dumps(cached))
    with pytest.raises(ConfigError, match=f"cached layer timings {path} are unreadable .*"
                                          f"delete the file"):
        sensitivity.choose_layers(cfg)


@pytest.mark.parametrize("override", ["selection.count=2", "selection=sensitivity_threshold"])
def test_times_are_measured_only_where_the_budget_rule_chooses(repo, tmp_path, monkeypatch,
                                                               override):
    """Found in review: with a count (or a threshold) the times decided nothing, yet were
    measured, and chosen.md said the slower layers were never chosen while they were."""
    calls = []
    monkeypatch.setattr(time_budget, "layer_time_savings", fake_timings(calls))
    cfg = compose_timed(repo, tmp_path, "trainer.threads=1", override)
    table = pd.DataFrame({"layer": ["a", "b"], "position": [0, 1], "params_saved": [1, 1],
                          "flops_saved": [1, 1]})
    timed, dense = time_budget.with_measured_time(cfg, table, {"params": 10, "flops": 10})
    assert calls == [] and "time" not in dense and timed is table


def test_a_norm_passed_to_the_layer_by_position_is_seen_as_folded():
    from basisconv import timing
    from basisconv.layers import BasisConv2d

    class Positional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = BasisConv2d(3, 8, 3, 2, padding=1, fuse_norm=True)
            self.bn = torch.nn.BatchNorm2d(8)

        def forward(self, x):
            return self.conv(x, self.bn, True)

    assert timing.folded_norms(Positional(), ["conv"], torch.randn(2, 3, 8, 8)) == {
        "conv": ("bn", True)}


def test_the_timing_log_names_the_device_measured_on(repo, tmp_path, monkeypatch, caplog):
    """Found in review: with ``trainer.device=auto`` the log said "on auto"."""
    monkeypatch.setattr(time_budget, "layer_time_savings", fake_timings([]))
    cfg = compose_timed(repo, tmp_path, "trainer.threads=1", "trainer.device=auto")
    with caplog.at_level(logging.INFO, logger="basisconv"):
        sensitivity.choose_layers(cfg)
        sensitivity.choose_layers(cfg)  # from the cache
    lines = [r.getMessage() for r in caplog.records if "forward+backward on" in r.getMessage()]
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert len(lines) == 2 and all(f"forward+backward on {expected}" in x for x in lines)
    assert not any("on auto" in x for x in lines)


def test_a_sensitivity_run_records_the_threads_its_layers_were_timed_on(repo, tmp_path,
                                                                        monkeypatch):
    """Found in review: the run record and the timing cache named the process's thread
    count (taken after the run's settings were put back), not the 1 thread the layers
    were timed on, which is what says how its times were made."""
    calls = []
    monkeypatch.setattr(time_budget, "layer_time_savings", fake_timings(calls))
    torch.set_num_threads(2)  # the caller's; the run says 1 (restored by conftest)
    cfg = compose_timed(repo, tmp_path / "cache", "trainer.threads=1")
    table = sensitivity_estimate.candidate_table(cfg).assign(accuracy_drop=0.0, loss_increase=0.0)
    monkeypatch.setattr(sensitivity, "sensitivity_table", lambda cfg: (table, {
        "key": "k", "cache_hit": True, "seconds": 1.0, "reference": {}, "pretrained": {},
        "dense": selection.dense_totals(build_model("resnet8", width=0.5)),
        "provenance": {}}))
    record = sensitivity.run_sensitivity(cfg, tmp_path / "run")
    assert calls[0]["threads"] == 1 and torch.get_num_threads() == 2
    assert record["provenance"]["hardware"]["torch_threads"] == 1
    cached, = (tmp_path / "cache" / "layer-times").glob("*.json")
    assert json.loads(cached.read_text())["provenance"]["hardware"]["torch_threads"] == 1


def test_the_budgets_100_percent_is_the_dense_step_in_the_seconds_layers_save(repo, tmp_path,
                                                                              monkeypatch):
    """The dense step is the budget's 100 % and each layer's ``seconds_saved`` what it
    takes off it: both in seconds. At a 10 ms step and 10 % to save, two layers of 0.6 ms
    each meet the 1 ms target and a third is not converted; a step in other units (ms)
    makes the target unreachable and converts every layer that saves anything."""
    calls = []

    def every_layer_saves(model, basis_model, names, runner, batch, image, **_):
        calls.append(list(names))
        return pd.DataFrame([{"layer": n, "dense_ms": 1.0, "basis_ms": 0.4,
                              "seconds_saved": 0.6e-3} for n in names]), 10e-3

    monkeypatch.setattr(time_budget, "layer_time_savings", every_layer_saves)
    cfg = compose_timed(repo, tmp_path, "trainer.threads=1")
    model = build_model("resnet8", width=0.5)
    table = selection.layer_savings(model, cfg.basis)
    _, dense = time_budget.with_measured_time(cfg, table, selection.dense_totals(model))
    assert dense["time"] == pytest.approx(10e-3)
    assert len(calls[0]) > 2
    assert sensitivity.choose_layers(cfg) == calls[0][:2]


def test_the_table_names_the_device_measured_on_not_the_configs_auto(repo, tmp_path,
                                                                      monkeypatch):
    """The run's record says which device the times are of (``measured_on``): with
    ``trainer.device=auto`` that is the device auto resolved to, both when measured and
    when read back from the cache, never "auto"."""
    monkeypatch.setattr(time_budget, "layer_time_savings", fake_timings([]))
    cfg = compose_timed(repo, tmp_path, "trainer.threads=1", "trainer.device=auto")
    model = build_model("resnet8", width=0.5)
    table = selection.layer_savings(model, cfg.basis)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    for _ in ("measured", "cached"):
        timed, _ = time_budget.with_measured_time(cfg, table, selection.dense_totals(model))
        assert timed.attrs["measured_on"].startswith(expected)


def test_the_layers_timed_for_a_budget_are_not_listed_as_the_runs_auto_forms(repo, tmp_path):
    """Found in review: with ``basis.combine=auto`` the measurement's calls of every
    candidate's basis form (and a forward-only pass at the training batch) were looked up
    as the run's own, so a run that converted one layer recorded the forms of every
    candidate under ``auto_forms``, as if they had run. The choices stay (the run's own
    calls of a converted layer then reuse them); the record lists what the run ran."""
    from basisconv.kernels import auto

    cfg = compose_timed(repo, tmp_path, "trainer.threads=1", "basis.combine=auto",
                        "model.width=0.25", "trainer.batch_size=4")
    model = build_model("resnet8", width=0.25)
    table = selection.layer_savings(model, cfg.basis)
    auto.start_run()
    time_budget.with_measured_time(cfg, table, selection.dense_totals(model))
    assert auto.choices()  # the basis forms were timed, auto choosing theirs
    assert auto.described(this_run=True) == []


def test_timings_of_the_former_method_are_not_read_back(repo, tmp_path, monkeypatch):
    """Found by a mutation test (``method`` of the key set back to 1, failing no test): a
    cache of the former method (a folded norm timed apart from its layer) must not be read
    as this method's timings; its layers are measured again."""
    cfg = compose_timed(repo, tmp_path)
    measured = measured_by_a_fake(monkeypatch)
    table = pd.DataFrame({"layer": ["layer1.0.conv1", "layer2.0.conv1"]})
    former = {**time_budget.key_fields(cfg, list(table["layer"])), "method": 1}
    path = time_budget.cache_path(cfg, former)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"layers": [
        {"layer": n, "dense_ms": 9.0, "basis_ms": 1.0, "seconds_saved": 8e-3}
        for n in table["layer"]], "dense_step_seconds": 0.1}))
    timed, _ = time_budget.with_measured_time(cfg, table, {"params": 1, "flops": 1})
    assert len(measured) == 1 and timed["dense_ms"].tolist() == [2.0, 2.0]


def test_a_table_timed_before_is_timed_with_the_cached_times_alone(repo, tmp_path,
                                                                   monkeypatch):
    """Found by a mutation test (the table's own time columns kept, failing no test): a
    table that already has times (timed before, or a user's) merged into ``dense_ms_x``,
    ``seconds_saved_y`` ..., and the budget found no ``seconds_saved`` to choose by."""
    cfg = compose_timed(repo, tmp_path)
    monkeypatch.setattr(time_budget, "measure", lambda cfg, names: {
        "layers": [{"layer": n, "dense_ms": 2.0, "basis_ms": 1.0, "seconds_saved": 1e-3}
                   for n in names], "dense_step_seconds": 0.1})
    table = pd.DataFrame({"layer": ["layer1.0.conv1", "layer2.0.conv1"]})
    timed, _ = time_budget.with_measured_time(cfg, table, {"params": 1, "flops": 1})
    again, _ = time_budget.with_measured_time(cfg, timed, {"params": 1, "flops": 1})
    assert list(again.columns) == list(timed.columns)
    assert again["seconds_saved"].tolist() == [1e-3, 1e-3]
