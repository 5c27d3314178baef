"""Steps replayed as CUDA graphs (basisconv.graphs, ``trainer.cuda_graphs``) train and
evaluate what eager steps do.

On the CPU (``make test``) every capture is replaced by calling the step again on the
static buffers, so these tests check the buffers, the device learning rate the scheduler
fills, the two phases and the padded last evaluation batch; ``make gpu-check`` runs the
same tests with ``--device cuda``, where the graphs are really captured and replayed.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from basisconv import execution, graphs, loop, optim
from basisconv.data import TensorBatches
from basisconv.models import build_model
from basisconv.penalties import basis_penalty
from basisconv.skip_training import CoefficientSkipSchedule
from basisconv.surgery import apply_basis
from interruption import fit_stopped_before

TRAINER = OmegaConf.create({"lr": 0.05, "momentum": 0.9, "nesterov": True,
                            "weight_decay": 5e-4, "epochs": 2, "schedule": "onecycle",
                            "warmup_fraction": 0.3})


def _data(device, n, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    return images.to(device), torch.randint(0, 10, (n,), generator=g).to(device)


def _model(device, basis: bool):
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, width=0.5)
    if basis:
        model = apply_basis(model, "all", 0.5, inplace=True, only_where_saves=True,
                            fuse_norm=True)
    return model.to(device, memory_format=torch.channels_last)


def _train(model, device, graphed, *, extra_loss=None):
    """Two epochs of four steps (one-cycle: the rate changes every step), then evaluation
    of 37 images in batches of 16 (the last one has 5)."""
    train_images, train_labels = _data(device, 64, 1)
    test_images, test_labels = _data(device, 37, 2)
    batches = TensorBatches(train_images, train_labels, 16, train=True, seed=3,
                            memory_format=torch.channels_last)
    tests = TensorBatches(test_images, test_labels, 16, train=False,
                          memory_format=torch.channels_last)
    optimizer = optim.build_optimizer(model, TRAINER)
    scheduler = optim.build_scheduler(optimizer, TRAINER, len(batches))
    stats = []
    for _ in range(TRAINER.epochs):
        stats.append(loop.train_one_epoch(model, batches, optimizer, scheduler,
                                          graphed=graphed, extra_loss=extra_loss(model)
                                          if extra_loss else None))
        stats.append(loop.evaluate(model, tests, graphed=graphed))
    return stats, optimizer


@pytest.fixture
def graph_calls(monkeypatch):
    """Calls of the graphed train and eval steps (found in review: the equivalence tests
    passed with graphed=True ignored, comparing the eager path with itself)."""
    calls = {"train": 0, "eval": 0}
    for kind, step in (("train", graphs.GraphedTrainStep), ("eval", graphs.GraphedEvalStep)):
        def counted(self, *args, _call=step.__call__, _kind=kind, **kwargs):
            calls[_kind] += 1
            return _call(self, *args, **kwargs)
        monkeypatch.setattr(step, "__call__", counted)
    return calls


def _assert_same_training(device, basis, graph_calls, extra_loss=None):
    if device.type == "cuda":
        # Full float32 and deterministic cuDNN (the autouse fixture puts the flags back): with
        # TF32 (cuDNN's default) conv inputs are rounded to 10 bits, so runs that differ only
        # in cuDNN's algorithms and their summation order ended 5e-4 apart on an H200.
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.deterministic = True
    eager_model, graphed_model = _model(device, basis), _model(device, basis)
    eager, eager_opt = _train(eager_model, device, False, extra_loss=extra_loss)
    assert graph_calls == {"train": 0, "eval": 0}
    graphed, graphed_opt = _train(graphed_model, device, True, extra_loss=extra_loss)
    assert graph_calls == {"train": 8, "eval": 6}  # two epochs: 4 steps, 3 test batches
    # On the CPU the same arithmetic in the same order; on CUDA the same kernels, captured
    # and replayed: equal to float tolerance.
    tol = {"rtol": 1e-5, "atol": 1e-6} if device.type == "cpu" else {"rtol": 2e-3, "atol": 2e-4}
    for a, b in zip(eager, graphed):
        torch.testing.assert_close(torch.tensor([a.loss, a.accuracy]),
                                   torch.tensor([b.loss, b.accuracy]), **tol)
    for (name, a), b in zip(eager_model.state_dict().items(), graphed_model.state_dict().values()):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    for a, b in zip(eager_opt.state.values(), graphed_opt.state.values()):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], **tol)
    # the schedule's value stays a float (checkpoints, resume and logs read it)
    assert isinstance(graphed_opt.param_groups[0]["lr"], float)
    assert graphed_opt.param_groups[0]["lr"] == eager_opt.param_groups[0]["lr"]


@pytest.mark.device
def test_graphed_steps_train_and_evaluate_as_eager_steps(device, graph_calls):
    _assert_same_training(device, False, graph_calls)


@pytest.mark.device
def test_graphed_steps_of_a_basis_model_with_folded_norms_and_an_l1_penalty(device, graph_calls):
    """The L1 penalty and Frobenius decay's correction are in the captured forward."""
    _assert_same_training(device, True, graph_calls, extra_loss=lambda model: basis_penalty(
        model, 5e-4, coefficient_l1=1e-3, frobenius_decay=True))


class _ReadsItsLabel(torch.nn.Module):
    """Logits: the first ten pixels of an image's top row, whose largest is its label."""

    def forward(self, images):
        return images[:, 0, 0, :10] * 3.0


@pytest.mark.device
def test_graphed_evaluation_masks_the_padding_of_the_last_batch(device, graph_calls):
    """Every image of 21, in batches of 8 (the last padded from 5), counts once: all are
    predicted right, so a padding row counted would lift the accuracy above 1, a real row
    dropped lower it below."""
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 10, (21,), generator=g)
    images = torch.randint(0, 100, (21, 3, 16, 16), dtype=torch.uint8, generator=g)
    images[torch.arange(21), 0, 0, labels] = 255
    tests = TensorBatches(images.to(device), labels.to(device), 8, train=False)
    eager = loop.evaluate(_ReadsItsLabel(), tests)
    graphed = loop.evaluate(_ReadsItsLabel(), tests, graphed=True)
    assert graph_calls["eval"] == 3
    padded = loop.evaluate(_ReadsItsLabel(), tests, padded=True)  # (for compiled models)
    assert eager.accuracy == graphed.accuracy == padded.accuracy == 1.0
    assert padded.loss == graphed.loss
    logits = _ReadsItsLabel()(tests.augment(images.to(device)))
    expected = F.cross_entropy(logits, labels.to(device)).item()
    assert eager.loss == pytest.approx(expected, rel=1e-5)
    assert graphed.loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.device
def test_a_graphed_step_uses_the_learning_rate_the_scheduler_set_for_that_step(device):
    """Rates 0.1, 0.05, 0, 0 over four steps: the weights end where the second step put
    them. A rate frozen at capture (the second step's) would move them twice more; on the
    CPU, where every call runs the Python again, the fused optimizer must read the device
    tensor at every step."""
    model = _model(device, basis=False)
    images, labels = _data(device, 64, 5)
    batches = TensorBatches(images, labels, 16, train=True, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: {0: 1.0, 1: 0.5}
                                                  .get(step, 0.0))
    after_second, rates = {}, []

    def read_rate(optimizer, *_):
        lr = optimizer.param_groups[0]["lr"]
        assert isinstance(lr, torch.Tensor) and lr.device.type == device.type
        rates.append(lr)

    def remember(*_):
        if len(rates) == 2 and not after_second:
            after_second.update(copy.deepcopy(model.state_dict()))
    hooks = [optimizer.register_step_pre_hook(read_rate),
             optimizer.register_step_post_hook(remember)]
    loop.train_one_epoch(model, batches, optimizer, scheduler, graphed=True)
    for hook in hooks:
        hook.remove()
    assert after_second and rates
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), after_second[name], rtol=0, atol=0)
        assert param.grad is None  # the graph pool the grads lived in is released


@pytest.mark.parametrize("key, value", [("momentum", 0.5), ("weight_decay", 1e-3),
                                        ("dampening", 0.1), ("nesterov", True),
                                        ("maximize", True)])
def test_optimizer_settings_a_capture_froze_cannot_change_silently(key, value):
    """A captured optimizer step replays these settings as they were at capture: each one
    changed after it is refused (a setting left out of the check, e.g. a weight decay
    lowered during training, would keep its old value on CUDA without a word)."""
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = graphs.GraphedTrainStep(lambda x, y: F.cross_entropy(model(x), y), optimizer,
                                   torch.device("cpu"))
    images, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    step(images, labels)
    step(images, labels)  # captured here
    optimizer.param_groups[0]["lr"] = 0.01  # the rate may change: the graph reads a tensor
    step(images, labels)
    optimizer.param_groups[0][key] = value
    with pytest.raises(RuntimeError, match="momentum.*changed after"):
        step(images, labels)


def test_evaluation_pads_only_models_whose_rows_are_independent_in_eval():
    """A batch norm without running statistics normalizes over the batch in eval mode:
    padding rows would change the real rows' outputs, so a graphed evaluation refuses and
    a padded one (compiled models) evaluates the last batch as it is."""
    from basisconv.errors import ConfigError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(
        4, track_running_stats=False), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    images, labels = _data(torch.device("cpu"), 21, 8)
    tests = TensorBatches(images, labels, 8, train=False)
    eager = loop.evaluate(model, tests)
    padded = loop.evaluate(model, tests, padded=True)
    assert (padded.loss, padded.accuracy) == (eager.loss, eager.accuracy)
    with pytest.raises(ConfigError, match="trainer.cuda_graphs=false"):
        loop.evaluate(model, tests, graphed=True)
    assert graphs.rows_independent_in_eval(_model(torch.device("cpu"), basis=True))


@pytest.mark.parametrize("norm, independent", [
    (torch.nn.BatchNorm1d(4, track_running_stats=False), False),
    (torch.nn.BatchNorm3d(4, track_running_stats=False), False),
    (torch.nn.SyncBatchNorm(4, track_running_stats=False), False),
    (torch.nn.BatchNorm1d(4), True),
    (torch.nn.InstanceNorm2d(4), True),  # (its own rows' statistics, never the batch's)
    (torch.nn.InstanceNorm2d(4, track_running_stats=True), True)])
def test_every_batch_norm_without_running_statistics_makes_rows_depend_on_each_other(
        norm, independent):
    """Found by a mutation test of graphs: checking BatchNorm2d alone passed every test;
    an instance norm, which normalizes each row by itself, was taken for one."""
    assert graphs.rows_independent_in_eval(torch.nn.Sequential(norm)) is independent


def test_graphed_training_refuses_a_hook_that_changes_the_step():
    model = _model(torch.device("cpu"), basis=False)
    images, labels = _data(torch.device("cpu"), 16, 6)
    batches = TensorBatches(images, labels, 8, train=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(ValueError, match="before_step"):
        loop.train_one_epoch(model, batches, optimizer, scheduler, graphed=True,
                             before_step=lambda: None)
    scaler = torch.amp.GradScaler("cpu", enabled=True)  # fp16's, which a graph cannot run
    with pytest.raises(ValueError, match="graphed=True replays one fixed step without loss "
                                         "scaling, which fp16 autocast"):
        loop.train_one_epoch(model, batches, optimizer, scheduler, graphed=True,
                             scaler=scaler)


def test_a_graphed_evaluation_needs_its_largest_batch_first():
    step = graphs.GraphedEvalStep(lambda *args: None, torch.device("cpu"))
    step(torch.zeros(4, 3, 2, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="largest"):
        step(torch.zeros(5, 3, 2, 2), torch.zeros(5, dtype=torch.long))


def test_cuda_graphs_apply_to_single_process_cuda_runs_only(caplog):
    trainer = OmegaConf.create({"cuda_graphs": True})
    assert execution.use_cuda_graphs(trainer, torch.device("cuda"))
    with caplog.at_level("INFO", logger="basisconv.execution"):
        assert not execution.use_cuda_graphs(trainer, torch.device("cpu"))
    assert "running eagerly" in caplog.text
    assert not execution.use_cuda_graphs(OmegaConf.create({"cuda_graphs": False}),
                                         torch.device("cuda"))


@pytest.mark.device
def test_a_training_run_with_cuda_graphs_matches_an_eager_one_and_resumes(tmp_path, repo,
                                                                          device):
    """``trainer.cuda_graphs=true`` end to end: a run (basis layers, padded evaluation
    batches) ends as the eager run does, and one stopped after its first epoch resumes to
    the same end. Off CUDA the setting is ignored, so the runs are identical."""
    from hydra import compose, initialize_config_dir

    import basisconv.config  # noqa: F401  (registers the schema)
    from basisconv.train import fit

    def cfg(*overrides):
        with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
            return compose("train", overrides=[
                "data=stripes", "data.synthetic_train=200", "data.synthetic_test=50",
                "model=resnet8", "model.width=0.25", "experiment=basis_all",
                "trainer.epochs=2", "trainer.batch_size=50", "trainer.eval_batch_size=32",
                "trainer.deterministic=true", "trainer.progress=false", "logger=none",
                f"trainer.device={device}", *overrides])

    eager = fit(cfg(), tmp_path / "eager")["epochs"]
    graphed = fit(cfg("trainer.cuda_graphs=true"), tmp_path / "graphed")["epochs"]
    fit_stopped_before(2, cfg("trainer.cuda_graphs=true"), tmp_path / "resumed")
    resumed = fit(cfg("trainer.cuda_graphs=true"), tmp_path / "resumed")["epochs"]
    tol = {"rel": 1e-6} if device.type == "cpu" else {"rel": 1e-3, "abs": 1e-4}
    for key in ("train_loss", "test_loss", "test_accuracy"):
        for a, b, c in zip(eager, graphed, resumed):
            assert b[key] == pytest.approx(a[key], **tol) and c[key] == pytest.approx(b[key], **tol)


@pytest.mark.device
@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graphed"])
def test_an_epoch_synchronizes_the_gpu_a_fixed_number_of_times_not_per_step(device, graphed):
    """Steps queue work without waiting for the GPU (a sync per step, e.g. a blocking
    copy of a constant, would leave it idle while the CPU launches): an epoch of 6 steps
    synchronizes as often as one of 3 (reading the metrics at its end, the capture)."""
    if device.type != "cuda":
        pytest.skip("CUDA synchronization is counted on CUDA (make gpu-check)")
    import warnings

    def syncs(steps):
        model = _model(device, basis=False)
        images, labels = _data(device, 16 * steps, 7)
        batches = TensorBatches(images, labels, 16, train=True,
                                memory_format=torch.channels_last)
        optimizer = optim.build_optimizer(model, TRAINER)
        scheduler = optim.build_scheduler(optimizer, TRAINER, len(batches))
        loop.train_one_epoch(model, batches, optimizer, scheduler, graphed=graphed)  # warm
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                loop.train_one_epoch(model, batches, optimizer, scheduler, graphed=graphed)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        return sum("synchronizing" in str(w.message) for w in caught)

    assert syncs(6) == syncs(3)


#: The ways Python reads a tensor's value back (on a GPU each waits for the queued work).
_VALUE_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__",
                "__index__")


@pytest.mark.device
@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graphed"])
def test_an_epoch_reads_its_metrics_back_once_not_per_step_on_any_device(device, graphed,
                                                                          monkeypatch):
    """The test above counts CUDA's synchronizations, so only under ``make gpu-check`` and
    for a dense model; this one counts every read of a tensor's value into Python (a
    ``float(loss)``, an ``if torch.isfinite(...)``, a logged ``.item()``) on any device,
    through ``run_epoch`` (training, evaluation, the logged row and the divergence check)
    of a basis model with folded norms, its L1 penalty and Frobenius correction, and
    (eagerly) the coefficient skip schedule: an epoch of 6 steps reads as often as one of 2."""
    trainer = OmegaConf.merge(TRAINER, {"label_smoothing": 0.0, "progress": False,
                                        "compile": False})

    def reads(steps):
        model = _model(device, basis=True)
        images, labels = _data(device, 16 * steps, 7)
        batches = TensorBatches(images, labels, 16, train=True,
                                memory_format=torch.channels_last)
        tests = TensorBatches(images, labels, 16, train=False, memory_format=torch.channels_last)
        optimizer = optim.build_optimizer(model, trainer)
        scheduler = optim.build_scheduler(optimizer, trainer, len(batches))
        penalty = basis_penalty(model, 5e-4, coefficient_l1=1e-3, frobenius_decay=True)
        skip = None if graphed else CoefficientSkipSchedule(model, 2)
        step = iter(range(steps))
        counted = []
        with monkeypatch.context() as patch:
            for name in _VALUE_READS:
                def read(self, *args, _real=getattr(torch.Tensor, name), **kwargs):
                    counted.append(1)
                    return _real(self, *args, **kwargs)
                patch.setattr(torch.Tensor, name, read)
            loop.run_epoch(1, model, batches, tests, optimizer, scheduler, trainer, None,
                           graphed=graphed, extra_loss=penalty,
                           before_step=None if graphed else lambda: skip(next(step)))
        return len(counted)

    assert reads(6) == reads(2)


def _reported(logits, labels, train: bool) -> tuple[float, float]:
    """What an epoch reports, summed here from the logits the model gave each batch: the
    float32 sums of the losses and the hits, read back and divided by the image count."""
    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    for out, y in zip(logits, labels):
        loss_sum.add_(F.cross_entropy(out, y) * y.numel() if train
                      else F.cross_entropy(out.float(), y, reduction="sum"))
        correct.add_((out.argmax(1) == y).sum())
    seen = sum(y.numel() for y in labels)
    return loss_sum.item() / seen, correct.to(loss_sum.dtype).item() / seen


def test_an_epochs_loss_and_accuracy_are_its_float32_sums_to_the_bit():
    """Pins the numbers ``train_one_epoch`` and ``evaluate`` report, exactly, so that how
    they are read back at an epoch's end (one read, not one per number) cannot change them:
    a run's recorded metrics stay the same to the last bit."""
    model = _model(torch.device("cpu"), basis=False)
    images, labels = _data("cpu", 40, 7)
    batches = TensorBatches(images, labels, 16, train=True, seed=3,
                            memory_format=torch.channels_last)
    tests = TensorBatches(images, labels, 16, train=False, memory_format=torch.channels_last)
    optimizer = optim.build_optimizer(model, TRAINER)
    scheduler = optim.build_scheduler(optimizer, TRAINER, len(batches))
    train_labels = [y for _, y in TensorBatches(images, labels, 16, train=True, seed=3)]
    logits = []
    handle = model.register_forward_hook(lambda module, args, out: logits.append(out.detach()))
    try:
        trained = loop.train_one_epoch(model, batches, optimizer, scheduler)
        train_logits, logits[:] = logits[:], []
        evaluated = loop.evaluate(model, tests)
    finally:
        handle.remove()
    assert (trained.loss, trained.accuracy) == _reported(train_logits, train_labels, True)
    assert (evaluated.loss, evaluated.accuracy) == _reported(
        logits, [y for _, y in tests], False)


@pytest.mark.parametrize("phase", ["train", "evaluate"])
def test_an_epoch_reads_its_metrics_back_in_one_read(monkeypatch, phase):
    """The end of an epoch reads its sums into Python once (``.tolist()``): on a GPU each
    read (an ``.item()``) waits for the queued work, a synchronization each."""
    model = _model(torch.device("cpu"), basis=False)
    images, labels = _data("cpu", 32, 7)
    batches = TensorBatches(images, labels, 16, train=phase == "train", seed=3)
    optimizer = optim.build_optimizer(model, TRAINER)
    scheduler = optim.build_scheduler(optimizer, TRAINER, len(batches))
    counted = []
    with monkeypatch.context() as patch:
        for name in _VALUE_READS:
            def read(self, *args, _real=getattr(torch.Tensor, name), _name=name, **kwargs):
                counted.append(_name)
                return _real(self, *args, **kwargs)
            patch.setattr(torch.Tensor, name, read)
        if phase == "train":
            loop.train_one_epoch(model, batches, optimizer, scheduler)
        else:
            loop.evaluate(model, batches)
    assert counted == ["tolist"]


@pytest.mark.parametrize("kind", ["train", "eval"])
def test_a_graphed_step_is_freed_when_its_epoch_ends_without_the_cycle_collector(kind):
    """An epoch's graphs hold their memory pool (activations, gradients) until they are
    freed: no reference cycle may leave that to the cycle collector's next run."""
    import gc
    import weakref

    model = torch.nn.Linear(4, 3)
    images, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    if kind == "train":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        step = graphs.GraphedTrainStep(lambda x, y: F.cross_entropy(model(x), y), optimizer,
                                       torch.device("cpu"))
    else:
        step = graphs.GraphedEvalStep(lambda x, y, count: model(x), torch.device("cpu"))
    for _ in range(3):
        step(images, labels)
    freed = weakref.ref(step)
    enabled = gc.isenabled()
    gc.disable()
    try:
        del step
        assert freed() is None
    finally:
        if enabled:
            gc.enable()


def test_a_graphed_call_runs_once_eagerly_then_replays():
    """Off CUDA the capture is the call itself: one run per call, the first one eager."""
    calls = []
    graphed = graphs.GraphedCall(lambda: calls.append(len(calls)), torch.device("cpu"))
    assert graphed.capture is False
    for _ in range(3):
        graphed()
    assert calls == [0, 1, 2] and graphed.graph is not None


def test_a_graphed_calls_first_launch_is_in_its_untimed_first_call(monkeypatch):
    """A captured graph's first launch uploads it to the GPU, a one-time cost (as
    ``kernels.graph_trials.GraphTrial`` says): the first call, which the benchmark's warm-up round
    leaves untimed, must launch it once, else with ``--warmup 1`` (``--quick``) the first
    timed round pays it (one of the two rounds a quick model row takes the median of)."""
    events = []

    class CapturedGraph:  # graphs._Replay with a capture: nothing runs until a launch
        def __init__(self, fn, *, capture, stream, pool=None):
            events.append("capture")

        def replay(self):
            events.append("launch")

    monkeypatch.setattr(graphs, "_Replay", CapturedGraph)
    monkeypatch.setattr(graphs, "_capture_stream", lambda device: None)  # (no CUDA here)
    call = graphs.GraphedCall(lambda: events.append("eager"), torch.device("cpu"), capture=True)
    call()  # the warm-up round's
    assert events == ["eager", "capture", "launch"]
    call()  # a timed round's: a launch like every later one
    assert events == ["eager", "capture", "launch", "launch"]


@pytest.mark.device
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_a_benchmarks_graphed_training_step_computes_what_the_eager_one_does(device, amp):
    """``Runner(graphs=True)`` (``benchmark_layers.py --cuda-graphs``): after three timed
    calls, the gradients and the batch-norm statistics are those of as many eager calls as
    ran; on CUDA the first call runs eagerly and launches its capture once (the graph's
    upload), the second and third replay it: four runs."""
    from basisconv.timing import Runner, output_gradient

    torch.manual_seed(0)
    base = apply_basis(build_model("resnet8", num_classes=10, width=0.5), "all", 0.5,
                       only_where_saves=True)
    x = torch.randn(4, 3, 16, 16)
    grad = torch.randn(4, 10)
    after = {}
    eager_runs = 4 if device.type == "cuda" else 3  # (off CUDA each call is one run)
    for graphed in (False, True):
        runner = Runner(device, amp=amp, graphs=graphed)
        model = runner.prepare(copy.deepcopy(base))
        inputs = x.to(device, memory_format=runner.memory_format).requires_grad_(True)
        step = runner.training_step(model, inputs, output_gradient(grad.to(device)))
        forward = runner.forward(model, inputs)
        for _ in range(3 if graphed else eager_runs):
            step()
            forward()
        assert isinstance(step, graphs.GraphedCall) is graphed
        after[graphed] = [inputs.grad, *(p.grad for p in model.parameters()),
                          *(b for b in model.buffers() if b.is_floating_point())]
    tolerance = 1e-5 if amp == "none" else 2e-2
    for eager, replayed in zip(after[False], after[True]):
        torch.testing.assert_close(replayed, eager, rtol=tolerance, atol=tolerance)


def test_the_static_buffers_keep_the_batchs_channels_last_layout():
    """Every replay reads its batch from the static buffers. Made contiguous (NCHW) for a
    channels_last batch, each copy into them would transpose the batch and the captured
    step would run its convs on another layout than the eager step and the model: equal in
    value (so the equivalence tests above pass), but slower on the GPU the graphs are for."""
    images = torch.randn(4, 3, 8, 8).to(memory_format=torch.channels_last)
    labels = torch.zeros(4, dtype=torch.long)
    seen = []

    def evaluate(images, labels, count):
        seen.append(images.is_contiguous(memory_format=torch.channels_last))

    step = graphs.GraphedEvalStep(evaluate, torch.device("cpu"))
    step(images, labels)
    step(images, labels)
    assert seen == [True, True]  # the eager first batch, then the "replay"

    weight = torch.nn.Parameter(torch.ones(()))

    def forward(images, labels):
        seen.append(images.is_contiguous(memory_format=torch.channels_last))
        return weight * images.sum()

    train = graphs.GraphedTrainStep(forward, torch.optim.SGD([weight], lr=0.1),
                                    torch.device("cpu"))
    seen.clear()
    for _ in range(3):
        train(images, labels)
    assert seen == [True, True, True]


def test_the_first_graphed_step_ignores_gradients_left_on_the_parameters():
    """Found by a mutation test (the first, eager step's ``zero_grad`` removed, failing no
    test): gradients a model already holds (a backward run before the epoch) were added to
    the first step's, which an eager step (zeroing them first) does not."""
    torch.manual_seed(0)
    models = [torch.nn.Linear(4, 3), None]
    models[1] = copy.deepcopy(models[0])
    images, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    for model in models:
        F.cross_entropy(model(images), labels).backward()  # left from before
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.1) for model in models]
    optimizers[0].zero_grad(set_to_none=True)  # an eager step's own first step
    F.cross_entropy(models[0](images), labels).backward()
    optimizers[0].step()
    graphs.GraphedTrainStep(lambda x, y: F.cross_entropy(models[1](x), y), optimizers[1],
                            torch.device("cpu"))(images, labels)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b)
