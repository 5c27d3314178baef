"""``combine="auto"`` with ``fuse_norm``: each conv-norm(-ReLU) shape runs the fastest of
the fold in standard ops, the fold through the kernels and the unfused modules, timed on
the device once; every form computes what the layer, its batch norm and ReLU compute one
after another, and the timing trials leave the norm's statistics alone."""

import copy

import pytest
import torch
import torch.nn as nn

from basisconv.kernels import auto, auto_norm, graph_trials
from basisconv.conv_norm import conv_norm_act
from basisconv.layers import BasisConv2d

NORMS = {"default": {}, "cumulative": {"momentum": None}, "no-affine": {"affine": False},
         "no-running-stats": {"track_running_stats": False}}


@pytest.fixture(autouse=True)
def fresh_choices():
    auto.forget()
    yield
    auto.forget()


def layer_norm_input(norm_kwargs=None, combine="auto", seed=0):
    """A converted basis layer (permuted output order, conv bias) with ``fuse_norm`` and
    a batch norm whose affine parameters are not the identity, in float64."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(6, 10, 3, padding=1, stride=2, bias=True)
    layer = BasisConv2d.from_conv(conv, 4, combine=combine).double()
    layer.fuse_norm = True
    norm = nn.BatchNorm2d(10, **(norm_kwargs or {})).double()
    if norm.affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 6, 9, 8, dtype=torch.float64) + 0.5
    return layer, norm, x


def unfused(layer, norm, x, relu):
    """The same modules one after another: the stacked layer, then the norm's own forward."""
    layer = copy.deepcopy(layer)
    layer.fuse_norm, layer.combine = False, "stacked"
    out = norm(layer(x))
    return (out.relu() if relu else out), layer


def chosen(monkeypatch, form):
    """Timings that make ``form`` the choice for every norm shape (the conv's forms are
    timed for real)."""
    monkeypatch.setattr(auto_norm, "_time", lambda f, args, options, backward:
                        0.0 if f == form else 1.0)


def norm_choices():
    return {key: form for key, form in auto.choices().items() if key.extras}


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("norm_kwargs", NORMS.values(), ids=NORMS.keys())
@pytest.mark.parametrize("form", ["folded", "unfused"])
def test_each_chosen_form_is_the_layer_its_norm_and_relu(form, norm_kwargs, relu, monkeypatch):
    """Two training steps and an evaluation: outputs, every gradient, the running
    statistics and the batch counter equal the unfused modules' (float64)."""
    chosen(monkeypatch, form)
    layer, norm, x = layer_norm_input(norm_kwargs)
    ref_layer, ref_norm = copy.deepcopy(layer), copy.deepcopy(norm)
    for step in range(2):
        xs = [x.clone().requires_grad_() for _ in range(2)]
        out = conv_norm_act(layer, norm, xs[0], relu=relu)
        want, plain = unfused(ref_layer, ref_norm, xs[1], relu)
        torch.testing.assert_close(out, want)
        upstream = torch.randn_like(out)
        out.backward(upstream)
        want.backward(upstream)
        torch.testing.assert_close(xs[0].grad, xs[1].grad)
        for p, q in zip([*layer.parameters(), *norm.parameters()],
                        [*plain.parameters(), *ref_norm.parameters()]):
            torch.testing.assert_close(p.grad, q.grad)
        with torch.no_grad():  # the copy's gradients went to its stacked twin: move them
            for p, q in zip(ref_layer.parameters(), plain.parameters()):
                p.grad = q.grad
        for module, ref in ((layer, ref_layer), (norm, ref_norm)):
            for p, q in zip(module.parameters(), ref.parameters()):
                with torch.no_grad():
                    p -= 0.1 * p.grad
                    q -= 0.1 * q.grad
                p.grad = q.grad = None
        for name, buffer in norm.named_buffers():
            torch.testing.assert_close(buffer, dict(ref_norm.named_buffers())[name])
    norm.eval()
    ref_norm.eval()
    with torch.no_grad():
        torch.testing.assert_close(conv_norm_act(layer, norm, x, relu=relu),
                                   unfused(ref_layer, ref_norm, x, relu)[0])
    assert set(norm_choices().values()) == {form}


def test_the_timing_trials_leave_the_norms_statistics_and_the_callers_graph_alone():
    """Timed for real: after the first call, measured there, the running averages and the
    batch counter are one step's, as after a call of a layer that chose without timing;
    the trials' backward reached none of the caller's tensors."""
    layer, norm, x = layer_norm_input()
    folded_layer, folded_norm = copy.deepcopy(layer), copy.deepcopy(norm)
    folded_layer.combine = "stacked"  # the fold in standard ops, never timed
    x = x.requires_grad_()
    state = torch.get_rng_state()
    out = conv_norm_act(layer, norm, x, relu=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert x.grad is None and layer.basis_weight.grad is None and norm.weight.grad is None
    conv_norm_act(folded_layer, folded_norm, x.detach(), relu=True)
    for name, buffer in norm.named_buffers():
        torch.testing.assert_close(buffer, dict(folded_norm.named_buffers())[name])
    assert int(norm.num_batches_tracked) == 1
    out.sum().backward()
    assert x.grad is not None and norm.weight.grad is not None
    [key] = norm_choices()
    assert set(auto.TIMINGS[key]) == {"folded", "unfused"}


def test_a_shape_is_measured_once_per_kind_of_call(monkeypatch):
    calls = []
    real = auto_norm._time
    monkeypatch.setattr(auto_norm, "_time", lambda f, args, options, backward:
                        calls.append((f, backward, options["running"] is None))
                        or real(f, args, options, backward))
    layer, norm, x = layer_norm_input()
    x.requires_grad_()
    for _ in range(2):
        conv_norm_act(layer, norm, x, relu=True)
    rounds = auto.REPEATS + 1  # a call of each form a round
    assert sorted(calls) == [("folded", True, True)] * rounds + [("unfused", True, True)] * rounds
    norm.eval()
    with torch.no_grad():  # evaluation: forward only, the running statistics
        for _ in range(2):
            conv_norm_act(layer, norm, x, relu=True)
    assert sorted(calls[2 * rounds:]) == ([("folded", False, False)] * rounds
                                          + [("unfused", False, False)] * rounds)
    norm.train()
    conv_norm_act(layer, norm, x[:1], relu=True)  # another batch size is another shape
    assert len(calls) == 6 * rounds and len(norm_choices()) == 3


def test_a_norm_that_moves_running_averages_is_another_kind_of_call(monkeypatch):
    """Found by a mutation test (``updates_running`` dropped from the key failed no test):
    a training call that also moves the running averages times apart from one of a norm
    that tracks none (``track_running_stats=False``), same shape and all."""
    chosen(monkeypatch, "folded")
    layer, tracking, x = layer_norm_input()
    untracked = nn.BatchNorm2d(10, track_running_stats=False).double()
    untracked.load_state_dict(tracking.state_dict(), strict=False)
    for norm in (tracking, untracked):
        conv_norm_act(layer, norm, x, relu=True)
    assert len(norm_choices()) == 2


def test_a_shape_that_cannot_be_measured_runs_the_fold(monkeypatch):
    """While torch.compile traces (or a CUDA graph is captured) nothing is timed: a shape
    never measured runs the fold in standard ops, what ``combine="auto"`` ran before it
    chose under ``fuse_norm``; an empty batch is not timed either (the fold's own
    handling: nothing to normalize, no statistics moved)."""
    ran = []
    for name in ("folded", "unfused"):
        monkeypatch.setitem(auto_norm.FORMS, name, lambda *a, name=name,
                            form=auto_norm.FORMS[name], **k: ran.append(name) or form(*a, **k))
    monkeypatch.setattr(auto_norm, "_time", lambda *a: pytest.fail("timed"))
    layer, norm, x = layer_norm_input()
    conv_norm_act(layer, norm, x[:0], relu=True)
    assert int(norm.num_batches_tracked) == 1 and torch.equal(norm.running_mean,
                                                              torch.zeros(10).double())
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    conv_norm_act(layer, norm, x, relu=True)
    assert ran == ["folded", "folded"] and auto.choices() == {}


def test_int_conv_options_are_taken_as_the_folds_forms_take_them():
    """Found in review: ``auto_conv_batch_norm`` called directly with ``stride=2`` (an int,
    as ``F.conv2d`` and the fold's forms take it) ended in "'int' object is not iterable"
    while it built the shape's key; ``auto_forward`` already took it."""
    layer, norm, x = layer_norm_input()
    options = dict(norm_weight=norm.weight, norm_bias=norm.bias, eps=norm.eps, running=None,
                   relu=True)
    args = (x, layer.basis_weight, layer.coefficients, layer.output_index, layer.bias)
    for conv in ((2, 1, 1), ((2,), [1], (1,))):
        torch.testing.assert_close(auto_norm.auto_conv_batch_norm(*args, *conv, **options),
                                   auto_norm.FORMS["folded"](*args, *conv, **options))
    assert [(key.stride, key.padding, key.dilation) for key in norm_choices()] == [
        ((2, 2), "(1, 1)", (1, 1))]


@pytest.mark.parametrize("padding, image, fused", [
    ("same", 9, True),    # an even kernel pads one side more: F.conv2d makes the maps anyway
    ("valid", 9, True),
    ((1, 1), 9, True),
    ((1, 1), 300, False),      # more output pixels than the kernels' int32 rows allow
])
def test_the_kernels_are_a_candidate_only_where_they_would_run(monkeypatch, padding, image,
                                                                fused):
    from basisconv.kernels import triton_conv

    x = torch.zeros(1, 4, image, image)
    weight = torch.zeros(3, 4, 2, 2)
    # on CPU, and under the interpreter, the kernels would not run compiled: never offered
    assert auto_norm.candidates(x, weight, (1, 1), (1, 1), (1, 1)) == ["folded", "unfused"]
    monkeypatch.setattr(triton_conv, "interpreting", lambda: False)  # as on a GPU
    monkeypatch.setattr(triton_conv, "unsupported",  # a CUDA tensor, with a small row limit
                        lambda x, dtype, m, out_pixels=0: "rows" if out_pixels > 60_000 else None)
    forms = auto_norm.candidates(x, weight, (1, 1), padding, (1, 1))
    assert ("folded-fused" in forms) == fused and forms[:2] == ["folded", "unfused"]


def test_a_record_names_the_norm_a_choice_was_made_with(monkeypatch):
    """The conv's own choice and the triple's, for one input shape, do not read alike;
    training and evaluation calls are two choices."""
    chosen(monkeypatch, "unfused")
    layer, norm, x = layer_norm_input()
    conv_norm_act(layer, norm, x, relu=True)
    norm.eval()
    with torch.no_grad():
        conv_norm_act(layer, norm, x, relu=False)
    described = auto.described()
    with_norm = [d for d in described if "norm" in d]
    assert len(with_norm) == 2 and all(d["form"] == "unfused" for d in with_norm)
    assert sorted(d["norm"]["statistics"] for d in with_norm) == ["batch", "running"]
    assert {d["norm"]["relu"] for d in with_norm} == {True, False}
    assert all(d["form"] in ("stacked", "dense") for d in described if "norm" not in d)


def test_forms_are_chosen_for_a_folded_model_before_compiling():
    """``choose_forms_now`` times the triples too, and leaves the model as it was."""
    from basisconv.models import build_model
    from basisconv.network import choose_forms_now
    from basisconv.surgery import apply_basis

    torch.manual_seed(0)
    model = apply_basis(build_model("resnet8", width=0.25), "all", 0.5, combine="auto",
                        fuse_norm=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    choose_forms_now(model, [(4, 3, 16, 16), (2, 3, 16, 16)], device=torch.device("cpu"))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics too
    kinds = {(key.input[0], dict(dict(key.extras)["norm"])["statistics"])
             for key in norm_choices()}
    assert kinds == {(4, "batch"), (2, "running")}


def test_the_cost_model_counts_a_folded_auto_model_as_the_fold(monkeypatch):
    """The cost model's shape-only dry run times nothing and counts the fold (what a shape
    never measured runs); ``measure_flops`` counts the forms chosen, not the trials: where
    the fold wins, the two agree."""
    from basisconv.cost import measure_flops, model_cost
    from basisconv.models import build_model
    from basisconv.surgery import apply_basis

    torch.manual_seed(0)
    model, stacked = (apply_basis(build_model("resnet8", width=0.25), "all", 0.5, convert=False,
                                  combine=combine, fuse_norm=True)
                      for combine in ("auto", "stacked"))
    cost = model_cost(model, (2, 3, 16, 16))
    assert cost.total_flops == model_cost(stacked, (2, 3, 16, 16)).total_flops
    assert auto.choices() == {}
    real = auto_norm._time  # the trials run for real (and would be counted); the fold wins
    monkeypatch.setattr(auto_norm, "_time", lambda f, args, options, backward:
                        real(f, args, options, backward) * 0 + (f != "folded"))
    monkeypatch.setattr(auto, "_time", lambda f, args, backward: float(f != "stacked"))
    counted = measure_flops(model, (2, 3, 16, 16))
    assert set(norm_choices().values()) == {"folded"}
    assert (counted["forward_flops"], counted["backward_flops"]) == \
        (cost.forward_flops, cost.backward_flops)


@pytest.mark.parametrize("fuse", [True, False], ids=["folded-norm", "plain-layer"])
def test_a_first_call_inside_activation_checkpointing_is_timed_without_leaving_a_trace(fuse):
    """Found in review: the trials (with their backward) ran inside a non-reentrant
    checkpoint's forward and saved tensors into its frame; the recomputation, which times
    nothing, saved others, and the backward failed (``CheckpointError``)."""
    from torch.utils.checkpoint import checkpoint

    layer, norm, x = layer_norm_input()
    layer.fuse_norm = fuse
    x.requires_grad_()
    out = checkpoint(lambda t: conv_norm_act(layer, norm, t, relu=True), x,
                     use_reentrant=False)
    out.sum().backward()
    assert x.grad is not None and layer.basis_weight.grad is not None and auto.choices()


def test_a_record_lists_only_the_choices_the_calls_ran(monkeypatch):
    """Found in review: the unfused trial looks up the conv's own choice, which a record of
    the run then listed although the fold was chosen, so two identical runs in one process
    recorded differently (the second times nothing)."""
    real = auto_norm._time
    monkeypatch.setattr(auto_norm, "_time", lambda f, args, options, backward:
                        real(f, args, options, backward) * 0 + (f != "folded"))
    for run in range(2):
        auto.start_run()
        layer, norm, x = layer_norm_input()
        conv_norm_act(layer, norm, x, relu=True)
        described = auto.described(this_run=True)
        assert [d["form"] for d in described] == ["folded"] and "norm" in described[0], run
    assert len(auto.choices()) == 2  # the conv's choice was made, for the unfused trial


def test_a_kernel_that_fails_to_compile_is_left_out_and_the_step_goes_on(monkeypatch):
    """Found in review: as on a GPU where the folded norm's kernels run out of shared
    memory for a shape, the kernels' trial raised Triton's error out of the layer's call;
    now that form is left out (said once) and the others are timed and chosen from."""
    import warnings

    from basisconv.kernels import fused, triton_combine, triton_fold

    OutOfResources = type("OutOfResources", (Exception,), {"__module__": "triton.runtime.errors"})

    def no_resources(*args, **kwargs):
        raise OutOfResources("out of resource: shared memory")

    monkeypatch.setattr(fused, "_FAILED", {})
    monkeypatch.setattr(fused, "_WARNED", set())
    monkeypatch.setattr(triton_conv_module(), "interpreting", lambda: False)
    monkeypatch.setattr(triton_conv_module(), "unsupported", lambda *args, **kwargs: None)
    monkeypatch.setattr(triton_conv_module(), "basis_conv", no_resources)  # the conv's own
    monkeypatch.setattr(triton_combine, "unsupported", lambda *args, **kwargs: None)
    monkeypatch.setattr(triton_fold, "fold", no_resources)
    layer, norm, x = layer_norm_input()
    layer.float(), norm.float()
    x = x.float().requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = conv_norm_act(layer, norm, x, relu=True)
    out.sum().backward()
    [(key, form)] = norm_choices().items()
    assert form in ("folded", "unfused") and set(auto.TIMINGS[key]) == {"folded", "unfused"}
    assert sum("failed to compile" in str(w.message) for w in caught) == 1
    with pytest.raises(ValueError, match="not Triton's"):  # other errors are not swallowed
        auto_norm._unless_it_fails_to_compile(lambda: (_ for _ in ()).throw(
            ValueError("not Triton's")))()


def test_a_kernel_error_without_text_is_left_out_with_its_type_named(monkeypatch):
    """Found in review: the folded norm's trial quoted a Triton error's first line by a
    copy of :func:`basisconv.errors.error_head` without its guard for an error
    with no text (IndexError inside the handler, out of the layer's call); now the form is
    left out (``math.inf``) and the warning names the error's type."""
    import math

    from basisconv.kernels import fused

    monkeypatch.setattr(fused, "_WARNED", set())
    CompilationError = type("CompilationError", (Exception,),
                            {"__module__": "triton.compiler.errors"})

    def silent():
        raise CompilationError()

    with pytest.warns(UserWarning, match=r"\(CompilationError: \); it runs the fold"):
        assert auto_norm._unless_it_fails_to_compile(silent)() == math.inf


def triton_conv_module():
    from basisconv.kernels import triton_conv
    return triton_conv


@pytest.mark.parametrize("unfused_ms, chosen_form", [(98.0, "folded"), (96.0, "unfused")])
def test_the_fold_is_kept_unless_another_form_is_clearly_faster(monkeypatch, unfused_ms,
                                                                chosen_form):
    """The unfused modules keep more for the backward than the fold: within
    ``FOLD_MARGIN`` (3 %) of the fold's time, a timing's noise, the fold is chosen."""
    monkeypatch.setattr(auto_norm, "_time", lambda f, args, options, backward:
                        {"folded": 100.0, "unfused": unfused_ms}[f])
    layer, norm, x = layer_norm_input()
    conv_norm_act(layer, norm, x, relu=True)
    assert list(norm_choices().values()) == [chosen_form]


@pytest.mark.device
def test_on_cuda_a_graphed_runs_choices_are_timed_as_graph_replays(device, monkeypatch, caplog):
    """On a GPU, where a run replays CUDA graphs, each trial (forward and backward of the
    fold, its kernels, the unfused modules, and the conv's own forms inside) is captured
    and timed as replays, without falling back; the output is the modules' all the same."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs run on CUDA only (--device cuda)")
    captured = []
    capture = graph_trials.GraphTrial._capture
    monkeypatch.setattr(graph_trials.GraphTrial, "_capture",
                        lambda self: captured.append(self) or capture(self))
    layer, norm, x = layer_norm_input()
    layer, norm = layer.float().to(device), norm.float().to(device)
    ref_layer, ref_norm = copy.deepcopy(layer), copy.deepcopy(norm)
    x = x.float().to(device).requires_grad_()
    with graph_trials.graph_replays():
        out = conv_norm_act(layer, norm, x, relu=True)
    assert captured and not any(trial.failed for trial in captured)
    assert "could not be captured" not in caplog.text
    [(key, form)] = norm_choices().items()
    assert set(auto.TIMINGS[key]) >= {"folded", "unfused"}
    want, _ = unfused(ref_layer, ref_norm, x, relu=True)
    torch.testing.assert_close(out, want, rtol=1e-2, atol=1e-2)  # (TF32 convs on a GPU)
    out.sum().backward()
    assert x.grad is not None


def test_an_input_with_the_wrong_channels_gets_torchs_error_and_no_trial_warnings(caplog):
    # Found in review: each form's trial failed on it, said as warnings, before the
    # default form's call raised
    layer, norm, x = layer_norm_input()
    with caplog.at_level("WARNING", logger=auto.log.name), \
            pytest.raises(RuntimeError, match=r"to have 6 channels, but got 5 channels"):
        conv_norm_act(layer, norm, x[:, :5], relu=True)
    assert caplog.text == ""
