"""``combine="auto"``: the form each shape runs is chosen by timing on the device, once;
whatever it chooses computes the layer's function, and measuring leaves no trace in the
caller's graph or random state."""

import functools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from basisconv.kernels import auto, dense_forward, graph_trials
from basisconv.layers import BasisConv2d


@pytest.fixture(autouse=True)
def fresh_choices():
    auto.forget()
    yield
    auto.forget()


def layer_and_input(device, seed=0, **options):
    torch.manual_seed(seed)
    conv = nn.Conv2d(6, 12, 3, padding=1, stride=2, bias=True)
    layer = BasisConv2d.from_conv(conv, 5, combine="auto", **options).to(device, torch.float64)
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64, device=device, requires_grad=True)
    return layer, x


def reference(layer, x):
    return F.conv2d(x, layer.dense_weight(), layer.bias, layer.stride, layer.padding,
                    layer.dilation)


@pytest.mark.device
@pytest.mark.parametrize("form", ["stacked", "dense"])
def test_each_chosen_form_gives_the_layers_output_and_gradients(form, device, monkeypatch):
    monkeypatch.setattr(auto, "_time", lambda f, args, backward: 0.0 if f == form else 1.0)
    layer, x = layer_and_input(device)
    out = layer(x)
    assert list(auto.choices().values()) == [form]
    grads = torch.autograd.grad(out.square().sum(), [x, layer.basis_weight, layer.coefficients,
                                                     layer.bias])
    expected = reference(layer, x)
    want = torch.autograd.grad(expected.square().sum(), [x, layer.basis_weight,
                                                         layer.coefficients, layer.bias])
    torch.testing.assert_close(out, expected)
    for got, ref in zip(grads, want):
        torch.testing.assert_close(got, ref)


def test_a_shape_is_measured_once_per_kind_of_call(monkeypatch):
    calls = []
    real = auto._time
    monkeypatch.setattr(auto, "_time", lambda f, args, backward: calls.append((f, backward))
                        or real(f, args, backward))
    layer, x = layer_and_input("cpu")
    layer(x)
    layer(x)
    rounds = auto.REPEATS + 1  # a call of each form a round (interleaved: test below)
    assert sorted(calls) == [("dense", True)] * rounds + [("stacked", True)] * rounds
    with torch.no_grad():  # inference is another call: forward only, measured once
        layer(x)
        layer(x)
    assert sorted(calls[2 * rounds:]) == [("dense", False)] * rounds + [("stacked", False)] * rounds
    layer(x[:1])  # another batch size is another shape
    assert len(calls) == 6 * rounds and len(auto.choices()) == 3
    assert all(set(t) == {"stacked", "dense"} for t in auto.TIMINGS.values())


def test_measuring_leaves_the_random_state_and_the_callers_graph_alone(monkeypatch):
    timed = auto._time

    def drawing(form, args, backward):  # a measurement that draws (none does today), so
        torch.rand(1)                   # that a leak into the caller's state would show
        return timed(form, args, backward)

    monkeypatch.setattr(auto, "_time", drawing)
    layer, x = layer_and_input("cpu")
    state = torch.get_rng_state()
    out = layer(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert x.grad is None and layer.basis_weight.grad is None  # timing's backward went elsewhere
    out.sum().backward()
    assert x.grad is not None and layer.coefficients.grad is not None


def test_a_frozen_layer_with_gradients_enabled_is_timed_forward_only(monkeypatch):
    """Gradient mode alone does not make a backward: a frozen layer (a fixed backbone)
    on an input without a gradient is timed, and keyed, as a forward (timing a backward
    there would fail: nothing requires a gradient)."""
    calls = []
    real = auto._time
    monkeypatch.setattr(auto, "_time", lambda f, args, backward: calls.append((f, backward))
                        or real(f, args, backward))
    layer, x = layer_and_input("cpu")
    layer.requires_grad_(False)
    out = layer(x.detach())
    assert not out.requires_grad
    assert set(calls) == {("dense", False), ("stacked", False)}
    assert [d["backward"] for d in auto.described()] == [False]


def test_a_shape_that_cannot_be_measured_runs_the_stacked_form(monkeypatch):
    """While torch.compile traces (or on the cost model's meta tensors) a shape measured
    before runs its choice and a new one the stacked form, the form the cost model counts."""
    ran = []
    for name in ("stacked", "dense"):
        monkeypatch.setitem(auto.FORMS, name, lambda *a, name=name, form=auto.FORMS[name]:
                            ran.append(name) or form(*a))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    layer, x = layer_and_input("cpu")
    layer(x)
    assert ran == ["stacked"] and auto.choices() == {}


@pytest.mark.parametrize("form", ["stacked", "dense"])
@pytest.mark.parametrize("in_channels, layout", [(1, torch.channels_last),
                                                 (6, torch.contiguous_format)],
                         ids=["one-channel-input", "nchw-input"])
def test_each_chosen_form_gives_the_layout_the_conv_gives(form, in_channels, layout,
                                                          monkeypatch):
    """Found by a property sweep: in a channels_last model the dense form's materialized
    weight was NCHW, so where the weight decides the layout (a one-channel input, which
    is NCHW-strided even after ``.contiguous(memory_format=torch.channels_last)``, or an
    NCHW input) the layer gave NCHW where the conv it replaced gives channels_last."""
    monkeypatch.setattr(auto, "_time", lambda f, args, backward: 0.0 if f == form else 1.0)
    conv = nn.Conv2d(in_channels, 8, 3, padding=1).double().to(memory_format=torch.channels_last)
    layer = BasisConv2d.from_conv(conv, 3, combine="auto")
    x = torch.randn(2, in_channels, 7, 9, dtype=torch.float64).contiguous(memory_format=layout)
    out = layer(x)
    assert list(auto.choices().values()) == [form]
    torch.testing.assert_close(out, reference(layer, x))
    assert out.stride() == conv(x).stride()


# (stride, padding, dilation): the second, each of them in play and unlike the others, found
# by a mutation test (a dense form that dropped the dilation passed every test)
@pytest.mark.parametrize("geometry", [(1, 1, 1), ((1, 2), (2, 1), (2, 3))])
def test_dense_form_is_the_materialized_weights_conv(geometry):
    torch.manual_seed(1)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    basis = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    comb = torch.randn(7, 3, dtype=torch.float64)
    weight = torch.einsum("om,mikl->oikl", comb, basis)
    torch.testing.assert_close(dense_forward(x, basis, comb, None, *geometry),
                               F.conv2d(x, weight, None, *geometry))


def test_int_conv_options_are_taken_as_f_conv2d_takes_them(monkeypatch):
    """Found in review: ``auto_forward`` called directly with ``stride=2`` (an int, as
    ``F.conv2d`` takes it) ended in "'int' object is not iterable" where its key was made;
    it is the same call as with the pairs, and chooses for the same shape."""
    monkeypatch.setattr(auto, "_time", lambda f, args, backward: 0.0 if f == "dense" else 1.0)
    torch.manual_seed(1)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    basis = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    comb = torch.randn(7, 3, dtype=torch.float64)
    weight = torch.einsum("om,mikl->oikl", comb, basis)
    torch.testing.assert_close(auto.auto_forward(x, basis, comb, None, 2, 1, 1),
                               F.conv2d(x, weight, None, 2, 1, 1))
    auto.auto_forward(x, basis, comb, None, (2, 2), (1, 1), (1, 1))
    auto.auto_forward(x, basis, comb, None, (2,), [1], (1,))  # (one-element sequences too)
    assert list(auto.choices().values()) == ["dense"]


def test_numpy_int_conv_options_are_taken_as_f_conv2d_takes_them(monkeypatch):
    """Found in review: a stride or padding computed with numpy (``np.int64(2)``), which
    ``F.conv2d`` and the stacked form take, ended in "'numpy.int64' object is not
    iterable" in ``auto_forward`` and ``fused_forward`` (``conv_pairs``, their one rule)."""
    import numpy as np

    from basisconv.kernels import fused_forward
    from basisconv.kernels.fused import conv_pairs

    monkeypatch.setattr(auto, "_time", lambda f, args, backward: 0.0 if f == "dense" else 1.0)
    torch.manual_seed(1)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    basis = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    comb = torch.randn(7, 3, dtype=torch.float64)
    expected = F.conv2d(x, torch.einsum("om,mikl->oikl", comb, basis), None, 2, 1, 1)
    conv = (np.int64(2), np.int64(1), np.int32(1))
    torch.testing.assert_close(auto.auto_forward(x, basis, comb, None, *conv), expected)
    torch.testing.assert_close(fused_forward(x, basis, comb, None, *conv), expected)
    assert list(auto.choices()) == [auto.shape_key(x, basis, 7, False, (2, 2), (1, 1), (1, 1),
                                                   False)]  # the pairs' key
    # pairs of numpy ints too (a mutation round: the pass-through of a layer's pair took
    # any 2-tuple, and auto's key was written again with np.int64 in it)
    pairs = [(np.int64(2), np.int64(2)), (np.int64(1), np.int64(1)), (np.int32(1), 1)]
    assert conv_pairs(*pairs) == ((2, 2), (1, 1), (1, 1))
    assert all(type(v) is int for pair in conv_pairs(*pairs) for v in pair)
    torch.testing.assert_close(auto.auto_forward(x, basis, comb, None, *pairs), expected)
    assert len(auto.choices()) == 1


@pytest.mark.parametrize("name, conv", [("stride", (True, 1, 1)), ("padding", (2, (1, False), 1)),
                                        ("dilation", (2, 1, 1.0)), ("padding", (2, (1, 0.5), 1))])
def test_a_bool_or_float_conv_option_is_refused_as_f_conv2d_refuses_it(monkeypatch, name, conv):
    """Found in review: with numpy's ints taken by ``operator.index``, ``stride=True`` (a
    downsampling flag passed as the stride) ran as a stride of 1, silently, in every form,
    where ``F.conv2d`` refuses a bool; a float ended in "'float' object is not iterable".
    A float in a pair too (a mutation round: ``int`` for ``operator.index`` took 0.5 as 0)."""
    from basisconv.kernels import fused_forward

    monkeypatch.setattr(auto, "_time", lambda f, args, backward: 0.0 if f == "dense" else 1.0)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    basis = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    comb = torch.randn(7, 3, dtype=torch.float64)
    for forward in (auto.auto_forward, fused_forward):
        with pytest.raises(TypeError, match=rf"^{name}=.*: give an int or a pair of ints"):
            forward(x, basis, comb, None, *conv)
    assert not auto.choices()


@pytest.mark.parametrize("name, conv", [("stride", ((2, 2, 2), 1, 1)), ("padding", (2, (), 1)),
                                        ("dilation", (2, 1, [1, 1, 1]))])
def test_a_conv_option_of_another_length_is_refused_naming_it(monkeypatch, name, conv):
    """Found by a mutation round: ``conv_pairs`` passed a sequence of another length on, as
    if a pair: the kernel reads the first two (``stride=(2, 2, 2)`` ran as a stride of 2 on
    CUDA, where ``F.conv2d`` refuses it), and an empty one ended in "not enough values to
    unpack". Each is one line naming the option, in every form."""
    from basisconv.kernels import fused_forward
    from basisconv.kernels.fused import conv_pairs

    monkeypatch.setattr(auto, "_time", lambda f, args, backward: 0.0 if f == "dense" else 1.0)
    said = rf"^{name}=.*: give an int or a pair of ints, as F.conv2d takes them$"
    with pytest.raises(TypeError, match=said):
        conv_pairs(*conv)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    basis = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    comb = torch.randn(7, 3, dtype=torch.float64)
    for forward in (auto.auto_forward, fused_forward):
        with pytest.raises(TypeError, match=said):
            forward(x, basis, comb, None, *conv)
    assert not auto.choices()


@pytest.mark.parametrize("padding", ["full", "SAME", ""])
def test_a_padding_string_f_conv2d_does_not_take_is_refused_naming_it(monkeypatch, padding):
    """Found in review: ``conv_pairs`` passed any string padding on, as ``"same"`` or
    ``"valid"``; ``padding="full"`` ended in "invalid literal for int() with base 10: 'f'"
    in every form, where ``F.conv2d`` refuses it by name. One line naming the option."""
    from basisconv.kernels import fused_forward
    from basisconv.kernels.fused import conv_pairs

    monkeypatch.setattr(auto, "_time", lambda f, args, backward: 0.0 if f == "dense" else 1.0)
    said = r"^padding=.*: give 'same', 'valid', an int or a pair of ints, as F.conv2d takes them$"
    with pytest.raises(ValueError, match=said):
        conv_pairs(1, padding, 1)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    basis = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    comb = torch.randn(7, 3, dtype=torch.float64)
    for forward in (auto.auto_forward, fused_forward):
        with pytest.raises(ValueError, match=said):
            forward(x, basis, comb, None, 1, padding, 1)
    assert not auto.choices()


def test_nothing_is_measured_while_torch_compile_traces(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(auto, "_time", lambda *a: pytest.fail("measured while compiling"))
    layer, x = layer_and_input("cpu")
    torch.testing.assert_close(layer(x), reference(layer, x))
    assert auto.choices() == {}


@pytest.mark.parametrize("combine", ["auto", "fused"])
def test_the_cost_models_meta_dry_run_takes_auto_and_fused_layers(combine, recwarn):
    from basisconv.cost import model_cost

    conv = nn.Conv2d(3, 8, 3, padding=1)
    model = nn.Sequential(BasisConv2d.from_conv(conv, 4, combine=combine))
    stacked = nn.Sequential(BasisConv2d.from_conv(conv, 4))
    assert model_cost(model, (1, 3, 8, 8)).total_flops == \
        model_cost(stacked, (1, 3, 8, 8)).total_flops
    assert auto.choices() == {}
    assert not [w for w in recwarn if "combine=" in str(w.message)]


def test_measured_flops_of_an_auto_model_leave_out_its_timing_trials(monkeypatch):
    """measure_flops counts one step; an auto layer's first call of a shape times its forms
    (real forward and backward calls), which FlopCounterMode counted too."""
    from basisconv.cost import measure_flops, model_cost
    from basisconv.models import build_model
    from basisconv.surgery import apply_basis

    real = auto._time
    # the trials run for real (and were counted), and stacked wins: model_cost's form
    monkeypatch.setattr(auto, "_time", lambda f, args, backward:
                        real(f, args, backward) * 0 + (0.0 if f == "stacked" else 1.0))
    torch.manual_seed(0)
    model = apply_basis(build_model("resnet8", width=0.25), "all", 0.5, convert=False,
                        combine="auto")
    counted = measure_flops(model, (2, 3, 16, 16))
    cost = model_cost(model, (2, 3, 16, 16))
    assert auto.choices() and set(auto.choices().values()) == {"stacked"}
    assert (counted["forward_flops"], counted["backward_flops"]) == \
        (cost.forward_flops, cost.backward_flops)


def test_forms_are_chosen_before_compiling_and_the_model_is_left_as_it_was(monkeypatch):
    from basisconv.models import build_model
    from basisconv.network import choose_forms_now
    from basisconv.surgery import apply_basis

    torch.manual_seed(0)
    model = apply_basis(build_model("resnet8", width=0.25), "all", 0.5, combine="auto")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    choose_forms_now(model, [(4, 3, 16, 16), (2, 3, 16, 16)], device=torch.device("cpu"))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics too
    assert model.training and all(p.grad is None for p in model.parameters())
    chosen = auto.choices()
    assert {(d["input"][0], d["backward"]) for d in auto.described()} == {(4, True), (2, False)}

    monkeypatch.setattr(auto, "_time", lambda *a: pytest.fail("timed while compiled"))
    compiled = torch.compile(model, backend="eager")  # dynamo traces auto_forward
    x = torch.randn(4, 3, 16, 16)
    out = compiled(x)
    torch.testing.assert_close(out, model(x))
    assert auto.choices() == chosen
    # gradients the model holds are put back too (found in review: they were deleted)
    monkeypatch.undo()
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    choose_forms_now(model, [(6, 3, 16, 16)], device=torch.device("cpu"))  # a shape to time
    assert len(auto.choices()) > len(chosen)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


@pytest.mark.parametrize("padding, image, fused", [
    ("same", 9, False),   # an even kernel pads one side more: the kernel cannot
    ((1, 1), 9, True),
    ((1, 1), 300, False),      # more output pixels than the kernel's int32 rows allow
])
def test_the_fused_kernel_is_a_candidate_only_where_it_would_run(monkeypatch, padding, image,
                                                                  fused):
    """Found in review: ``fused`` was offered on CUDA for any geometry, so a one-sided
    ``"same"`` padding timed the stacked form under the kernel's name, warned of
    combine='fused' to a user who asked for "auto", and could record "fused"."""
    from basisconv.kernels import triton_conv

    monkeypatch.setattr(triton_conv, "interpreting", lambda: False)  # as on a GPU
    monkeypatch.setattr(triton_conv, "unsupported",  # a CUDA tensor, with a small row limit
                        lambda x, dtype, m, out_pixels=0: "rows" if out_pixels > 60_000 else None)
    x = torch.zeros(1, 4, image, image)
    forms = auto.candidates(x, torch.zeros(3, 4, 2, 2), (1, 1), padding, (1, 1), 6)
    assert ("fused" in forms) == fused and forms[:2] == ["stacked", "dense"]


def kernel_fails_to_compile(monkeypatch) -> None:
    """As on a GPU where the kernel runs out of shared memory for every shape: the fused
    op's Triton call raises Triton's error (each test starts with no failure remembered)."""
    from basisconv.kernels import fused, triton_conv

    monkeypatch.setattr(fused, "_FAILED", {})
    monkeypatch.setattr(fused, "_WARNED", set())
    monkeypatch.setattr(triton_conv, "interpreting", lambda: False)
    monkeypatch.setattr(triton_conv, "unsupported", lambda *args, **kwargs: None)
    OutOfResources = type("OutOfResources", (Exception,), {"__module__": "triton.runtime.errors"})

    def no_resources(*args, **kwargs):
        raise OutOfResources("out of resource: shared memory")

    monkeypatch.setattr(triton_conv, "basis_conv", no_resources)


def test_a_fused_kernel_that_failed_to_compile_is_neither_timed_nor_chosen(monkeypatch):
    """Found in review: where the kernel failed to compile for a shape (out of shared memory
    on some GPU), ``fused`` runs the stacked form; auto still timed it under the kernel's
    name, could choose and record it, and offered it again for the shape's other calls."""
    import warnings

    kernel_fails_to_compile(monkeypatch)
    timed = []
    real = auto._time

    def fused_fastest(form, args, backward):  # (the stacked form it ran, timed as fused)
        timed.append(form)
        seconds = real(form, args, backward)
        return 0.0 if form == "fused" else seconds

    monkeypatch.setattr(auto, "_time", fused_fastest)
    layer, x = layer_and_input("cpu")
    layer.float()
    x = x.detach().float().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer(x)  # forward+backward key: fused tried, failed, timed (as fastest) and dropped
        with torch.no_grad():
            layer(x)  # the forward key: not offered again
    rounds = auto.REPEATS + 1  # (each round's order reversed after the one before)
    assert timed == (["stacked", "dense", "fused", "fused", "dense", "stacked"] * (rounds // 2)
                     + ["stacked", "dense", "dense", "stacked"] * (rounds // 2))
    assert "fused" not in auto.choices().values()
    assert all("fused" not in times for times in auto.TIMINGS.values())


def test_forms_are_timed_in_turns_by_the_median_of_their_calls_after_an_untimed_round(
        monkeypatch):
    """A form's first call on a shape picks cuDNN's algorithm, autotunes Triton or
    allocates, and the next ones may still pay for memory the process never touched: timed
    one form after the other, that made the first form timed look slow (on the 2-core CPU
    a folded stem 1.4x its later calls). So the forms run in turns, ``REPEATS + 1`` rounds,
    and each gets the median of its calls but the first. On a clock that a call advances
    by 100 s, then 1, 2 and 3 s for one form, 50 s then 4, 4 and 9 s for the other, that is
    2 s and 4 s (the first call counted: 2.5 s and 6.5 s)."""
    from types import SimpleNamespace

    now, calls = [0.0], []
    durations = {"a": iter([100.0, 1.0, 2.0, 3.0]), "b": iter([50.0, 4.0, 4.0, 9.0])}

    def clocked(name):
        def form(x, *rest):
            calls.append(name)
            now[0] += next(durations[name])
            return x
        return form

    monkeypatch.setattr(auto, "REPEATS", 3)
    for name in durations:
        monkeypatch.setitem(auto.FORMS, name, clocked(name))
    monkeypatch.setattr(auto, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    x = torch.zeros(1, 2, 3, 3)
    args = (x, torch.zeros(2, 2, 1, 1), torch.zeros(4, 2), None, (1, 1), (0, 0), (1, 1))
    trials = {name: lambda name=name: auto._time(name, args, backward=False) for name in "ab"}
    assert auto.interleaved(trials) == {"a": 2.0, "b": 4.0}
    # the order reversed every other round, as timing.Timer's: the first form of a round
    # (which may pay for the cache or clock state the round starts in) is not always "a"
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_a_form_whose_trial_fails_is_not_chosen_and_the_others_are_timed(monkeypatch, caplog):
    """Found in review: a trial that raised for another reason than a Triton compile (a
    CUDA out-of-memory in the dense form's trial) ended the layer's forward; it is timed
    ``inf`` (not chosen), said once, and not run again."""
    monkeypatch.setattr(auto, "REPEATS", 3)
    runs = []

    def out_of_memory():
        runs.append("dense")
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")

    with caplog.at_level("WARNING", logger=auto.log.name):
        times = auto.interleaved({"stacked": lambda: 1.0, "dense": out_of_memory})
    assert times == {"stacked": 1.0, "dense": math.inf} and runs == ["dense"]
    assert caplog.text.count("the dense form's trial failed (RuntimeError: CUDA out of "
                             "memory. Tried to allocate 2.00 GiB); it is not chosen") == 1


def test_the_fused_kernel_is_not_timed_under_tritons_interpreter(monkeypatch):
    """Under ``TRITON_INTERPRET=1`` the kernel runs (on CPU, in float32), but timing it
    would time NumPy stepping through the kernel, seconds per call, never the fastest form:
    "auto" offers only the PyTorch forms there."""
    from basisconv.kernels import triton_conv

    monkeypatch.setattr(triton_conv, "interpreting", lambda: True)
    monkeypatch.setattr(triton_conv, "unsupported", lambda *args, **kwargs: None)  # it runs
    x = torch.zeros(1, 4, 9, 9)
    assert auto.candidates(x, torch.zeros(3, 4, 3, 3), (1, 1), (1, 1), (1, 1), 6) == [
        "stacked", "dense"]


def test_a_backward_with_the_inputs_gradient_is_measured_apart_from_one_without(monkeypatch):
    """Found in review: the key said whether a backward runs, not whether it computes the
    input's gradient, which the trials time (on the 2-core CPU, 32x64x16x16 at basis 16:
    the dense form's backward 2.3x slower with it, the stacked form's 1.2x): a shape
    chosen on images (no gradient) ran that choice where its input needs one, and the
    records of the two read alike."""
    calls = []
    real = auto._time
    monkeypatch.setattr(auto, "_time", lambda f, args, backward: calls.append(
        args[0].requires_grad) or real(f, args, backward))
    layer, x = layer_and_input("cpu")
    layer(x.detach())  # a trainable layer on images: its weights' gradients alone
    layer(x)  # the same shape inside a network: the input's gradient too
    rounds = 2 * (auto.REPEATS + 1)  # two forms a round
    assert calls == [False] * rounds + [True] * rounds and len(auto.choices()) == 2
    assert sorted(d["input_gradient"] for d in auto.described()) == [False, True]


def test_a_shape_in_channels_last_is_measured_apart_from_the_same_shape_in_nchw(monkeypatch):
    """The forms' speeds depend on the memory layout (cuDNN's and oneDNN's kernels differ
    between NCHW and NHWC), and a benchmark or a run may call one shape in both: a choice
    timed in one layout is not the other's."""
    calls = []
    real = auto._time
    monkeypatch.setattr(auto, "_time", lambda f, args, backward: calls.append(
        args[0].is_contiguous(memory_format=torch.channels_last)) or real(f, args, backward))
    layer, x = layer_and_input("cpu")
    with torch.no_grad():
        layer(x)
        layer(x.contiguous(memory_format=torch.channels_last))
    rounds = 2 * (auto.REPEATS + 1)  # two forms a round
    assert calls == [False] * rounds + [True] * rounds and len(auto.choices()) == 2


def test_a_shape_on_other_cpu_threads_is_measured_again(monkeypatch):
    """Found in review: the CPU's thread count changes which form is fastest (a 2-thread
    conv on 2 cores against a 1-thread one), and the choices last the process: a sweep
    ``trainer.threads=1,2`` (its jobs run in one process) reused the 1-thread choices,
    and their times, for its 2-thread runs, whose records did not say so. (Restored by
    conftest.)"""
    calls = []
    real = auto._time
    monkeypatch.setattr(auto, "_time", lambda f, args, backward: calls.append(
        torch.get_num_threads()) or real(f, args, backward))
    layer, x = layer_and_input("cpu")
    with torch.no_grad():
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            layer(x)
    rounds = 2 * (auto.REPEATS + 1)  # two forms a round
    assert calls == [1] * rounds + [2] * rounds and len(auto.choices()) == 2
    assert sorted(d["threads"] for d in auto.described()) == [1, 2]


def test_a_compiled_cpu_model_looks_up_its_choices_in_one_graph(monkeypatch):
    """Found in review: the CPU's thread count in a choice's key was read with
    ``torch.get_num_threads()``, which dynamo cannot trace: a compiled CPU model of auto
    layers broke its graph at every layer's lookup (one graph became five for two layers).
    The choices made before compiling are still the ones the graph runs."""
    monkeypatch.setattr(auto, "_time", lambda form, args, backward: (
        0.0 if form == "dense" else 1.0))
    torch.manual_seed(0)
    model = nn.Sequential(BasisConv2d(8, 16, 3, 4, padding=1, combine="auto"), nn.ReLU(),
                          BasisConv2d(16, 16, 3, 4, padding=1, combine="auto"))
    x = torch.randn(2, 8, 8, 8)
    model(x)  # the choices, as network.choose_forms_now makes them before compiling
    chosen = auto.choices()
    called = []
    monkeypatch.setitem(auto.FORMS, "dense", lambda *args: called.append(1) or dense_forward(*args))
    try:
        explained = torch._dynamo.explain(model)(x)
    finally:
        torch._dynamo.reset()  # no compiled frames left behind for other tests
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
        [b.reason for b in explained.break_reasons]
    assert auto.choices() == chosen and set(chosen.values()) == {"dense"} and len(called) == 2


def test_a_kernel_that_failed_to_compile_under_autocast_is_not_offered_again(monkeypatch):
    """Under autocast the kernel compiles for the autocast dtype (the inputs are cast
    first), and its failure is remembered by that dtype; the question "did it fail for this
    call?" is asked of the float32 input the layer got, so it must ask in the dtype the call
    computes in. Asked in the input's, a bf16 training run timed the stacked form as
    ``fused`` again for every shape whose kernel had failed."""
    import warnings

    from basisconv.kernels import fused

    kernel_fails_to_compile(monkeypatch)
    x, weight, combination = torch.randn(2, 4, 6, 6), torch.randn(3, 4, 3, 3), torch.randn(5, 3)
    conv = ((1, 1), (1, 1), (1, 1))  # stride, padding, dilation
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused.fused_forward(x, weight, combination, None, *conv)  # fails: the stacked form
        assert fused.failed_to_compile(x, weight, 5, *conv)
        assert "fused" not in auto.candidates(x, weight, *conv, 5)
    assert not fused.failed_to_compile(x, weight, 5, *conv)  # float32: not tried yet


def test_choices_in_a_record_name_all_they_were_chosen_by(monkeypatch):
    """One shape timed in NCHW and in channels_last is two choices (test above); in the
    record they must not read alike, nor two that differ in padding, dilation or bias."""
    layer, x = layer_and_input("cpu")
    with torch.no_grad():
        layer(x)
        layer(x.contiguous(memory_format=torch.channels_last))
    described = auto.described()
    assert len(described) == 2 and described[0] != described[1]
    assert sorted(d["channels_last"] for d in described) == [False, True]
    assert {"padding", "dilation", "bias"} <= described[0].keys()

def test_trials_are_eager_off_cuda_even_where_a_run_replays_graphs():
    """``graph_replays`` (a graphed run's eager first step) changes how CUDA trials are
    timed; on CPU, and outside it, a trial is the eager one; the setting is put back."""
    eager = lambda: 1.0  # noqa: E731
    x = torch.zeros(1, 2, 3, 3)
    with graph_trials.graph_replays():
        assert auto.trial(eager, lambda t: t, (x,), False) is eager
        with graph_trials.graph_replays(False):
            assert not graph_trials._GRAPH_REPLAYS
        assert graph_trials._GRAPH_REPLAYS
    assert not graph_trials._GRAPH_REPLAYS
    with pytest.raises(RuntimeError), graph_trials.graph_replays():
        raise RuntimeError
    assert not graph_trials._GRAPH_REPLAYS



def test_a_choice_timed_as_graph_replays_is_not_an_eagerly_timed_ones():
    """Found in review: whether the trials were timed as CUDA graph replays was not in the
    choice's key, so in a sweep over ``trainer.cuda_graphs`` run in one process (Hydra's
    multirun) the graphed job reused the eager job's choices. A CUDA tensor's key says it,
    by the rule :func:`auto.trial` makes its trials by; a CPU tensor's trials are eager
    either way, so its key is one. (The CUDA tensors are fake ones: a key reads the
    tensors' metadata alone, so no GPU is needed.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode

    def key_and_graph_trial(device: str) -> tuple:
        x, basis = torch.zeros(2, 4, 8, 8, device=device), torch.zeros(3, 4, 3, 3, device=device)
        made = auto.trial(lambda: 1.0, lambda t: t, (x,), False)
        return (auto.shape_key(x, basis, 6, False, (1, 1), (1, 1), (1, 1), False),
                isinstance(made, graph_trials.GraphTrial))

    with FakeTensorMode():
        (eager, eager_graphed), cpu_eager = key_and_graph_trial("cuda"), key_and_graph_trial("cpu")
        with graph_trials.graph_replays():
            (replays, replays_graphed), cpu_replays = (key_and_graph_trial("cuda"),
                                                       key_and_graph_trial("cpu"))
    assert eager != replays and cpu_eager == cpu_replays
    assert (eager.graph_replays, eager_graphed) == (False, False)
    assert (replays.graph_replays, replays_graphed) == (True, True)
    assert cpu_replays[0].graph_replays is cpu_replays[1] is False


class FakeCuda:
    """Just enough of ``torch.cuda`` for :class:`graph_trials.GraphTrial`'s steps on CPU: a
    "capture" records that it ran (the trial's call runs, as a real capture records its
    kernels without running them), a replay counts."""

    def __init__(self, monkeypatch, capture_fails=False):
        from contextlib import contextmanager, nullcontext

        self.replays, self.captures = 0, 0
        fake = self

        class Graph:
            def replay(self):
                fake.replays += 1

        @contextmanager
        def graph(g, pool=None, stream=None, capture_error_mode="global"):
            assert capture_error_mode == "thread_local" and stream is not None
            fake.captures += 1
            yield
            if capture_fails:
                raise RuntimeError("operation not permitted when stream is capturing")

        class Stream:
            def __init__(self, device=None):
                pass

            def wait_stream(self, other):
                pass

        for name, value in {"Stream": Stream, "CUDAGraph": Graph, "graph": graph,
                            "stream": lambda s: nullcontext(), "synchronize": lambda d=None: None,
                            "current_stream": lambda d=None: Stream(),
                            "graph_pool_handle": lambda: (0, 0)}.items():
            monkeypatch.setattr(torch.cuda, name, value)
        graph_trials._trial_stream.cache_clear()  # (else a stand-in stream outlives the test)
        monkeypatch.setattr(graph_trials, "_trial_stream", functools.lru_cache(Stream))


@pytest.mark.parametrize("capture_fails", [False, True])
def test_a_graph_trial_captures_once_then_times_replays(monkeypatch, capture_fails):
    """Round 0 (untimed) runs the call twice eagerly, captures it and replays it once (the
    upload); each timed round replays ``REPLAYS`` times, nothing else. A form that cannot
    be captured is never fastest (a graphed run could not capture it either)."""
    cuda = FakeCuda(monkeypatch, capture_fails)
    calls = []
    x = torch.zeros(2, 3, requires_grad=True)
    trial = graph_trials.GraphTrial(lambda t: calls.append(1) or t * 2, (x,), backward=True)
    times = auto.interleaved({"only": trial})
    assert cuda.captures == 1 and len(calls) == 3
    if capture_fails:
        assert times == {"only": math.inf} and cuda.replays == 0
    else:
        assert cuda.replays == 1 + auto.REPEATS * graph_trials.REPLAYS
        assert math.isfinite(times["only"])
    assert x.grad is None  # the trial's copies got the gradients


def test_a_form_whose_trial_failed_is_not_chosen_unless_all_did():
    x = torch.zeros(1, 2, 3, 3)

    def key(name: str) -> auto.ShapeKey:  # (every field but the extras: the name)
        return auto.ShapeKey(*(name,) * (len(auto.ShapeKey._fields) - 1), extras=())

    assert auto.choose(key("k1"), x, lambda: {"a": math.inf, "b": 2.0, "c": 3.0}) == "b"
    assert auto.TIMINGS[key("k1")] == {"b": 2.0, "c": 3.0}
    assert auto.choose(key("k2"), x, lambda: {"a": math.inf, "b": math.inf}) == "a"
    assert auto.choose(key("k3"), x, lambda: {"a": math.inf, "b": 1.0},
                       prefer="a", margin=0.5) == "b"


@pytest.mark.parametrize("step", ["choose_forms_now", "describe"])
def test_each_modules_own_mode_is_put_back(step):
    # Found in review: choose_forms_now ("the model is left exactly as it was: ... mode")
    # and describe put back the top module's mode only, model.train(was_training): norms
    # frozen in eval inside a training model (a fine-tuning recipe) came back training,
    # and their running statistics then moved with every step
    from basisconv.models import build_model
    from basisconv.network import choose_forms_now, describe
    from basisconv.surgery import apply_basis

    torch.manual_seed(0)
    model = apply_basis(build_model("resnet8", width=0.25), "layer3.*", 0.5, combine="auto")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    before = {name: m.training for name, m in model.named_modules()}
    assert model.training and not all(before.values())
    if step == "describe":
        describe(model, image_shape=(3, 16, 16))
    else:
        choose_forms_now(model, [(4, 3, 16, 16), (2, 3, 16, 16)], device=torch.device("cpu"))
    assert {name: m.training for name, m in model.named_modules()} == before


def test_a_model_whose_train_does_more_is_put_back_through_its_train():
    """modes_kept calls the top module's ``train`` with its mode before setting each
    module's flag (found by a mutation test of model_copy: flags alone passed every test),
    so what a recipe's ``train`` does besides (freezing its norms) is undone too."""
    from basisconv.model_copy import modes_kept

    class Recipe(nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.frozen = nn.Linear(2, 2), None

        def train(self, mode=True):
            self.frozen = not mode
            return super().train(mode)

    model = Recipe().eval()
    with modes_kept(model):
        model.train()
    assert model.frozen and not model.training


@pytest.mark.parametrize("shape", [(2, 5, 8, 8), (2, 3), (1, 2, 3, 8, 8)],
                         ids=["channels", "2-d", "5-d"])
def test_an_input_the_conv_refuses_gets_torchs_error_and_no_trial_warnings(shape, caplog):
    # Found in review: each form's trial failed on it, said as two warnings ("the stacked
    # form's trial failed", "the dense form's ...") before the default form's call raised;
    # a 2-D input ended in "not enough values to unpack"
    torch.manual_seed(0)
    x = torch.randn(shape)
    errors = {}
    for combine in ("stacked", "auto"):
        layer = BasisConv2d(3, 8, 3, num_basis=4, padding=1, combine=combine)
        with caplog.at_level("WARNING", logger=auto.log.name), \
                pytest.raises(RuntimeError) as raised:
            layer(x)
        errors[combine] = str(raised.value)
    assert errors["auto"] == errors["stacked"] and caplog.text == ""
    assert "but got 5 channels" in errors["stacked"] or "Expected 3D" in errors["stacked"]
