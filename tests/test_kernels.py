"""The fused Triton basis conv (``combine="fused"``) against the dense conv it stands for.

On CPU the kernel runs through Triton's interpreter: the autouse fixture sets
``TRITON_INTERPRET=1`` per test (the kernel module decorates its kernel on first use, once
per setting, so no import-order trick is needed; conftest's ``triton_backend`` restores the environment). With
``--device cuda`` (``make gpu-check``) the same tests run the compiled kernel, TF32 off so
that float32 tolerances stay tight, with one tile size (no autotuning, fewer compilations).
Every comparison also checks that the kernel ran (the ``kernel_runs`` fixture counts its
forwards): a silent fallback to the stacked form would match the reference too. One test also compiles the kernel for an
sm_90 GPU with Triton's own compiler, which needs no GPU.
"""

import copy
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("triton")

from basisconv.kernels import fused, triton_conv  # noqa: E402
from basisconv.kernels.torch_ops import stacked_forward  # noqa: E402
from basisconv.layers import BasisConv2d  # noqa: E402


# (C_in, C_out, m, kernel, stride, padding, dilation, bias, batch, (H, W), channels_last)
SHAPES = [
    (5, 12, 5, 3, 1, 1, 1, True, 3, (7, 6), False),       # non-power-of-2 channels
    (4, 8, 1, 1, 1, 0, 1, False, 1, (5, 5), False),       # m = 1, 1x1
    (6, 10, 9, 3, 2, 1, 1, True, 2, (9, 8), True),        # m = C_out - 1, stride 2
    (20, 40, 24, 3, 1, 2, 2, False, 1, (8, 7), True),     # dilation; several K, m and C_out blocks
    (3, 7, 3, (3, 5), 1, "same", 1, True, 2, (6, 9), False),  # non-square kernel, "same"
    (8, 16, 4, 1, 2, 0, 1, True, 2, (7, 7), True),        # 1x1 stride 2 (a shortcut)
    (4, 9, 5, 3, (2, 1), 1, (1, 2), True, 2, (9, 8), True),  # stride and dilation per axis
]


pytestmark = pytest.mark.usefixtures("triton_backend")


@pytest.fixture
def kernel_runs(monkeypatch):
    """The forwards the Triton kernel computed, one entry each."""
    runs = []
    launch = triton_conv.basis_conv

    def counted(*args, **kwargs):
        result = launch(*args, **kwargs)
        runs.append(tuple(args[0].shape))
        return result

    monkeypatch.setattr(triton_conv, "basis_conv", counted)
    return runs


def make_layer(c_in, c_out, m, k, stride, padding, dilation, bias, device, **options):
    torch.manual_seed(0)
    layer = BasisConv2d(c_in, c_out, k, m, stride=stride, padding=padding, dilation=dilation,
                        bias=bias, combine="fused", device=device, **options)
    with torch.no_grad():
        layer.output_index.copy_(torch.randperm(c_out))  # a converted layer's channel order
        if layer.bias is not None:
            layer.bias.normal_()
    return layer


def outputs_and_grads(y, grad, tensors):
    return [y.detach(), *torch.autograd.grad(y, tensors, grad)]


@pytest.mark.device
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}-{s[1]}-m{s[2]}-k{s[3]}-s{s[4]}")
def test_fused_matches_the_dense_conv_forward_and_backward(shape, device, kernel_runs):
    *config, batch, (h, w), channels_last = shape
    layer = make_layer(*config, device)
    x = torch.randn(batch, config[0], h, w, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    tensors = [x, layer.basis_weight, layer.coefficients]
    if layer.bias is not None:
        tensors.append(layer.bias)
    y = layer(x)
    assert kernel_runs == [tuple(x.shape)]
    reference = F.conv2d(x, layer.dense_weight(), layer.bias, layer.stride, layer.padding,
                         layer.dilation)
    assert y.shape == reference.shape
    grad = torch.randn_like(reference)
    got = outputs_and_grads(y, grad, tensors)
    want = outputs_and_grads(reference, grad, tensors)
    for name, a, b in zip(["output", "input", "basis_weight", "coefficients", "bias"], got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.device
def test_gradients_reach_low_rank_factors_and_respect_the_mask(device, kernel_runs):
    layer = make_layer(6, 14, 5, 3, 1, 1, 1, False, device, coefficient_rank=2)
    layer.coefficient_mask = (torch.rand(9, 5, device=device) > 0.4).float()
    x = torch.randn(2, 6, 6, 5, device=device)
    params = [layer.basis_weight, layer.coefficients_left, layer.coefficients_right]
    y = layer(x)
    assert kernel_runs == [tuple(x.shape)]
    reference = F.conv2d(x, layer.dense_weight(), None, 1, 1)
    grad = torch.randn_like(reference)
    for a, b in zip(outputs_and_grads(y, grad, params), outputs_and_grads(reference, grad, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.device
def test_full_rank_fused_layer_reproduces_the_conv(device, kernel_runs):
    torch.manual_seed(2)
    conv = nn.Conv2d(5, 9, 3, stride=2, padding=1, bias=True, device=device)
    layer = BasisConv2d.from_conv(conv, conv.out_channels, combine="fused")
    x = torch.randn(2, 5, 8, 7, device=device)
    y = layer(x)
    assert kernel_runs == [tuple(x.shape)]
    torch.testing.assert_close(y, conv(x), rtol=1e-4, atol=1e-4)


@pytest.mark.device
def test_no_grad_forward_skips_the_basis_maps(device, monkeypatch):
    layer = make_layer(4, 8, 3, 3, 1, 1, 1, True, device)
    calls = []
    launch = triton_conv.basis_conv
    monkeypatch.setattr(triton_conv, "basis_conv",
                        lambda *a, **k: calls.append(k["store_basis"]) or launch(*a, **k))
    x = torch.randn(1, 4, 5, 5, device=device)
    with torch.no_grad():
        y = layer(x)
    torch.testing.assert_close(y, layer.to_conv()(x), rtol=1e-4, atol=1e-4)
    layer(x)
    assert calls == [False, True]


@pytest.mark.device
def test_a_layer_on_another_gpu_runs_there(device, kernel_runs):
    """Triton launches on the current device, not the tensors': a layer on ``cuda:1`` while
    ``cuda:0`` is current must still run (and autotune) on ``cuda:1``."""
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    other = torch.device("cuda", 1)
    layer = make_layer(6, 12, 4, 3, 1, 1, 1, True, other)
    x = torch.randn(2, 6, 9, 9, device=other, requires_grad=True)
    with torch.cuda.device(0):
        y = layer(x)
        y.sum().backward()
    assert kernel_runs == [tuple(x.shape)] and y.device == other
    torch.testing.assert_close(y, layer.to_conv()(x), rtol=1e-4, atol=1e-4)


@pytest.mark.device
def test_bf16_autocast_is_close_to_float32(device, kernel_runs):
    if device.type != "cuda":
        pytest.skip("bfloat16 runs on the compiled kernel only (the interpreter has none)")
    layer = make_layer(32, 64, 16, 3, 1, 1, 1, True, device)
    x = torch.randn(4, 32, 16, 16, device=device, requires_grad=True)
    reference = layer.to_conv()(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and kernel_runs == [tuple(x.shape)]
    torch.testing.assert_close(y.float(), reference, rtol=5e-2, atol=5e-2 * reference.abs().max().item())
    y.float().sum().backward()
    assert layer.coefficients.grad.dtype == torch.float32 and x.grad.isfinite().all()


def test_wide_bases_prune_the_tiles_whose_accumulator_spills():
    """The GPU tile space (only the interpreter's single config runs here): at a 256-wide
    basis the 128-row 4-warp tile goes, the 8-warp ones (half the accumulator per thread)
    stay; narrower bases keep every tile."""
    configs = triton_conv._tile_configs(interpret=False)
    assert triton_conv._prune_configs(configs, {}, BLOCK_N=128) == configs
    kept = triton_conv._prune_configs(configs, {}, BLOCK_N=256)
    dropped = [(c.kwargs["BLOCK_M"], c.num_warps) for c in configs if c not in kept]
    assert dropped == [(128, 4)]
    assert any(c.kwargs["BLOCK_M"] == 128 and c.num_warps == 8 for c in kept)
    (single,) = triton_conv._tile_configs(interpret=False, tune=False)
    assert triton_conv._prune_configs([single], {}, BLOCK_N=256) == [single]


def test_autotuning_is_short_and_its_results_are_kept_on_disk(monkeypatch):
    """Each process would otherwise time every tile of every layer shape again, for
    Triton's default 125 ms each."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # (the GPU's autotuner)
    monkeypatch.setenv("BASISCONV_AUTOTUNE", "1")
    monkeypatch.setattr(triton_conv, "_KERNELS", {})  # built afresh, and forgotten after
    tuner = triton_conv._kernel()
    assert tuner.cache_results and len(tuner.configs) == len(triton_conv._GPU_TILES)
    assert tuner.do_bench.keywords == {"warmup": 5, "rep": 25}


def test_autotuning_options_suit_a_triton_without_do_bench(monkeypatch):
    """Triton before 3.2 (torch 2.4, 2.5) has no ``do_bench`` (nor ``cache_results``): its
    autotuner takes the times themselves; a ``do_bench`` there was a TypeError, which the
    layer does not catch."""
    def old_autotune(configs, key, prune_configs_by=None, reset_to_zero=None,
                     restore_value=None, pre_hook=None, post_hook=None, warmup=25, rep=100,
                     use_cuda_graph=False):
        pass

    monkeypatch.setattr(triton_conv.triton, "autotune", old_autotune)
    options = triton_conv._autotune_options()
    old_autotune([], [], **options)  # accepted
    assert options == {"warmup": 5, "rep": 25}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_the_kernel_compiles_to_hopper_machine_code(dtype, monkeypatch):
    """Triton's real compiler, to sm_90 machine code (its own ptxas: no GPU needed), where
    every other CPU test runs the interpreter, which accepts what a compiler may refuse
    (``tl.dot`` shapes, layouts, shared memory): the one tile used without autotuning, at
    the widest basis, fits an H100/H200 block's 227 KiB of shared memory, and in bf16 (the
    training precision) keeps its accumulator in registers (float32 spills a little)."""
    monkeypatch.delenv("TRITON_INTERPRET")
    from basisconv.bench.kernel_resources import Tile, tile_resources

    row = tile_resources(Tile(*triton_conv._SAFE_TILE), triton_conv.MAX_BASIS, dtype)
    assert row["fits"] and 0 < row["shared_kib"] and 0 < row["registers"] <= 255
    if dtype == "bf16":
        assert row["spill_store_bytes"] == 0


@pytest.mark.parametrize("case", ["no triton", "cpu without interpreter", "float64",
                                  "asymmetric same padding", "asymmetric same padding in H"])
def test_fallback_is_the_stacked_form_with_one_warning(case, monkeypatch, kernel_runs):
    monkeypatch.setattr(fused, "_WARNED", set())
    kernel, dtype, match = 3, torch.float32, "triton"
    if case == "no triton":
        monkeypatch.setattr(triton_conv, "triton", None)
    elif case == "cpu without interpreter":
        monkeypatch.delenv("TRITON_INTERPRET")
        match = "CUDA tensor"
    elif case == "float64":
        dtype, match = torch.float64, "float32 under TRITON_INTERPRET"
    elif case == "asymmetric same padding":
        kernel, match = 2, "symmetric padding"
    else:  # even in W: one uneven axis is enough
        kernel, match = (2, 3), "symmetric padding"
    torch.manual_seed(0)
    layer = BasisConv2d(3, 6, kernel, 2, padding="same", bias=True, combine="fused", dtype=dtype)
    x = torch.randn(2, 3, 5, 5, dtype=dtype)
    with pytest.warns(UserWarning, match=match) as warned:
        y = layer(x)  # (torch itself also warns about the asymmetric "same" padding)
    assert not kernel_runs
    # said at the line that ran the layer, not inside torch's custom-op machinery
    assert {w.filename for w in warned if "combine='fused'" in str(w.message)} == {__file__}
    expected = stacked_forward(x, layer.basis_weight, layer.combination_matrix(), layer.bias,
                               layer.stride, layer.padding, layer.dilation)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(x)
    assert not [w for w in caught if "combine='fused'" in str(w.message)]  # once per reason


def test_the_fallbacks_saved_basis_maps_give_the_combinations_gradient(monkeypatch):
    """Where the stacked form stands in for the kernel (float64 here), the basis maps it
    keeps for the backward are rows in the kernel's layout (pixel by pixel, channels_last),
    so the combination's gradient is that of the stacked form."""
    monkeypatch.setattr(fused, "_WARNED", set())  # its once-per-process notice stays unsaid
    torch.manual_seed(0)
    x, weight, combination, bias = (torch.randn(*shape, dtype=torch.float64, requires_grad=True)
                                    for shape in ((2, 3, 6, 5), (4, 3, 3, 3), (6, 4), (6,)))
    conv = ((1, 1), (1, 1), (1, 1))
    grad, grads = torch.randn(2, 6, 6, 5, dtype=torch.float64), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's notice
        for forward in (fused.fused_forward, stacked_forward):
            y = forward(x, weight, combination, bias, *conv)
            grads.append(torch.autograd.grad(y, (x, weight, combination, bias), grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_a_compiled_layer_falls_back_with_the_warning_at_the_users_line(backend, monkeypatch):
    """Compiled, the op is called from code torch.compile generated (an FX graph module's
    ``<eval_with_key>``, Inductor's output file), not the user's: the warning skips it."""
    monkeypatch.setattr(fused, "_WARNED", set())
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # a CPU tensor: the stacked form
    torch.manual_seed(0)
    layer = BasisConv2d(3, 6, 3, 2, padding=1, combine="fused")
    x = torch.randn(2, 3, 5, 5)
    try:
        compiled = torch.compile(layer, backend=backend)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = compiled(x)
    finally:
        torch._dynamo.reset()  # no compiled frames left behind for other tests
    warned = [w for w in caught if "combine='fused'" in str(w.message)]
    assert [w.filename for w in warned] == [__file__]
    torch.testing.assert_close(y, layer.to_conv()(x), rtol=1e-4, atol=1e-5)


def test_images_too_large_for_int32_offsets_are_refused_by_the_kernel(monkeypatch):
    """Offsets within one image are int32; a batch as a whole may be larger."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # (meta tensors: not CUDA ones, on any machine)
    huge = torch.empty(1, 128, 4096, 4096, device="meta")  # 2**31 elements, no memory
    assert "2**31" in triton_conv.unsupported(huge, torch.float32, 16)
    batch = torch.empty(256, 128, 256, 256, device="meta")  # 2**31 in all, small images
    assert triton_conv.unsupported(batch, torch.float32, 16) is None


def test_a_basis_larger_than_one_tile_is_refused_by_the_kernel(monkeypatch):
    """The kernel holds all m basis maps of a row block in one tile (BLOCK_N >= m, at most
    MAX_BASIS): a larger basis takes the stacked form, never the kernel, which would drop
    the maps past the tile. (This rule ran in no test before the coverage review.)"""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # (meta tensors: not CUDA ones, on any machine)
    x = torch.empty(2, 3, 5, 5, device="meta")
    most = triton_conv.MAX_BASIS
    assert triton_conv.unsupported(x, torch.float32, most) is None
    assert triton_conv.unsupported(x, torch.float32, most + 1) == (
        f"num_basis <= {most} (one tile; got {most + 1})")


def test_more_output_pixels_than_int32_rows_take_the_stacked_form(monkeypatch):
    """The kernel's row index, ``program_id * BLOCK_M + i``, is int32: a conv whose last
    tile would pass 2**31 - 1 is refused, counted on the output (padding adds pixels).
    Found in review: the limit was 2**31 pixels, so the last tile of a conv just under it
    wrapped to negative rows, which its mask let through."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.empty(2, 3, 5, 5, device="meta")
    largest_tile = max(tile[0] for tile in triton_conv._GPU_TILES)
    most = 2**31 - largest_tile
    assert triton_conv.unsupported(x, torch.float32, 2, out_pixels=most) is None
    assert (most - 1) // largest_tile * largest_tile + largest_tile - 1 < 2**31  # last row
    for pixels in (most + 1, 2**31 - 1, 2**31):
        assert f"at most {most} output pixels" in triton_conv.unsupported(
            x, torch.float32, 2, out_pixels=pixels)
    seen = []
    monkeypatch.setattr(fused, "_WARNED", set())  # the fallback's notice: said, then forgotten
    monkeypatch.setattr(triton_conv, "unsupported",
                        lambda *args, **kwargs: seen.append(kwargs["out_pixels"]) or "no")
    layer = make_layer(3, 6, 2, 3, 1, 2, 1, False, torch.device("cpu"))
    with pytest.warns(UserWarning, match="needs no"):
        layer(torch.randn(2, 3, 5, 5))
    assert seen == [2 * 7 * 7]  # padding 2 grows each side by one pixel


@pytest.mark.parametrize("bias_kind", ["strided", "broadcast"])
def test_a_bias_that_is_not_contiguous_gives_the_stacked_output(monkeypatch, bias_kind):
    """Found in review: the kernel read the bias as contiguous, so a strided or broadcast
    one (the op is public) gave a wrong output, silently."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    x, w, c = torch.randn(2, 5, 6, 6), torch.randn(3, 5, 3, 3), torch.randn(7, 3)
    b = torch.randn(14)[::2] if bias_kind == "strided" else torch.randn(1).expand(7)
    conv = ((1, 1), (1, 1), (1, 1))
    out, _ = torch.ops.basisconv.fused_basis_conv(x, w, c, b, *map(list, conv), False)
    torch.testing.assert_close(out, stacked_forward(x, w, c, b, *conv), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", ["wide", "narrow", "bias", "dtype"])
def test_a_combination_or_bias_of_the_wrong_size_is_refused_as_conv2d_refuses_it(
        monkeypatch, bad):
    """Found in review: only the input and the basis weight were checked, so a combination
    or a bias of another size was read in part or past its end."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, w = torch.randn(2, 5, 6, 6), torch.randn(3, 5, 3, 3)
    c, b = torch.randn(7, 3), torch.randn(7)
    if bad == "wide":
        c = torch.randn(7, 4)
    elif bad == "narrow":
        c = torch.randn(7, 2)
    elif bad == "bias":
        b = torch.randn(3)
    else:
        b = b.double()
    with pytest.raises(RuntimeError, match="combination of size|bias to be|bias type"):
        torch.ops.basisconv.fused_basis_conv(x, w, c, b, [1, 1], [1, 1], [1, 1], False)


def test_an_empty_batch_runs_through_the_kernels_path(kernel_runs, monkeypatch):
    """No rows, no launch (``basis_conv`` returns at once): the image-size check must not
    index the batch's first image, which it has not. The backward gives zero gradients,
    as the other forms do (it once reshaped the empty gradient with a -1 and failed)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # (a CPU tensor, on any machine)
    layer = make_layer(3, 6, 2, 3, 1, 1, 1, True, torch.device("cpu"))
    x = torch.randn(0, 3, 5, 5, requires_grad=True)
    assert triton_conv.unsupported(x, torch.float32, 2) is None
    y = layer(x)
    assert y.shape == (0, 6, 5, 5) and kernel_runs == [(0, 3, 5, 5)]
    y.sum().backward()
    assert x.grad.shape == x.shape
    for p in layer.parameters():
        assert p.grad is not None and not p.grad.any()


def test_the_package_works_without_triton(repo):
    """A machine without triton (or with one that does not import) gets the stacked form."""
    script = (
        "import sys, warnings; sys.modules['triton'] = None\n"  # `import triton` now fails
        "import torch; from basisconv.layers import BasisConv2d\n"
        "layer = BasisConv2d(3, 6, 3, 2, padding=1, combine='fused')\n"
        "x = torch.randn(1, 3, 5, 5)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always'); y = layer(x)\n"
        "assert any('needs triton' in str(w.message) for w in caught), caught\n"
        "torch.testing.assert_close(y, layer.to_conv()(x))\n")
    env = dict(os.environ, PYTHONPATH=str(repo / "src"), TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_kernel_that_does_not_compile_falls_back_once_per_shape(monkeypatch):
    """Triton's own errors (e.g. out of shared memory on some GPU) make that shape run the
    stacked form, said once; any other error is not hidden."""
    monkeypatch.setattr(fused, "_WARNED", set())
    monkeypatch.setattr(fused, "_FAILED", {})
    OutOfResources = type("OutOfResources", (Exception,), {"__module__": "triton.runtime.errors"})
    calls = []

    def no_resources(*args, **kwargs):
        calls.append(1)
        raise OutOfResources("out of resource: shared memory, Required: 262144")

    monkeypatch.setattr(triton_conv, "basis_conv", no_resources)
    layer = make_layer(5, 12, 5, 3, 1, 1, 1, True, torch.device("cpu"))
    x = torch.randn(2, 5, 6, 6)
    with pytest.warns(UserWarning, match=r"compiles for input \[2, 5, 6, 6\].*OutOfResources"):
        y = layer(x)
    expected = stacked_forward(x, layer.basis_weight, layer.combination_matrix(), layer.bias,
                               layer.stride, layer.padding, layer.dilation)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    layer(x)
    assert calls == [1]  # not tried again for this shape

    def bug(*args, **kwargs):
        raise ValueError("a bug in the wrapper")

    monkeypatch.setattr(triton_conv, "basis_conv", bug)
    with pytest.raises(ValueError, match="a bug"):
        layer(torch.randn(1, 5, 6, 6))


def test_a_kernel_error_without_text_falls_back_with_its_type_named(monkeypatch):
    """Found in review: the fallback's warning quoted the error's first line by a copy of
    the rule :func:`basisconv.kernels.graph_trials.quoted` holds, without its guard for an
    error with no text: ``str(err).splitlines()[0]`` raised IndexError inside the handler
    and ended the call, where the shape runs the stacked form."""
    monkeypatch.setattr(fused, "_WARNED", set())
    monkeypatch.setattr(fused, "_FAILED", {})
    CompilationError = type("CompilationError", (Exception,),
                            {"__module__": "triton.compiler.errors"})

    def silent(*args, **kwargs):
        raise CompilationError()

    monkeypatch.setattr(triton_conv, "basis_conv", silent)
    layer = make_layer(5, 12, 5, 3, 1, 1, 1, True, torch.device("cpu"))
    with pytest.warns(UserWarning, match=r"\(CompilationError: \); running the stacked"):
        layer(torch.randn(2, 5, 6, 6))


def test_autocast_casts_every_input_also_when_x_is_already_half(monkeypatch):
    """Inside a network under autocast a layer's input is already bf16 (the previous conv's
    output) while its parameters are float32: ``tl.dot`` takes one dtype, so each of them
    must reach the kernel in bf16 (only ``x``'s dtype was compared: the kernel then failed
    to compile and every layer after the first fell back to the stacked form)."""
    monkeypatch.setattr(fused, "_FAILED", {})
    monkeypatch.setattr(triton_conv, "unsupported", lambda *args, **kwargs: None)  # bf16
    dtypes = []

    def recorded(x, weight, combination, bias, *conv, store_basis):
        dtypes.append({t.dtype for t in (x, weight, combination, bias)})
        return stacked_forward(x, weight, combination, bias, *conv), None

    monkeypatch.setattr(triton_conv, "basis_conv", recorded)
    layer = make_layer(4, 8, 3, 3, 1, 1, 1, True, torch.device("cpu"))
    x = torch.randn(2, 4, 6, 6).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert dtypes == [{torch.bfloat16}] and y.dtype == torch.bfloat16


@pytest.mark.parametrize("store_basis", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["kernel", "fallback"])
def test_the_op_passes_torch_library_opcheck(dtype, store_basis):
    """PyTorch's own check of a custom op: its schema, its fake (shape-only) twin against the
    real outputs' shapes, strides and dtypes, its autograd registration, and its gradients
    through AOTAutograd (what ``torch.compile`` uses), for the kernel and for the stacked
    fallback (float64: the interpreter takes float32 only). Without the basis maps saved the
    backward computes them again."""
    torch.manual_seed(0)
    tensors = [torch.randn(*shape, dtype=dtype, requires_grad=True)
               for shape in ((2, 5, 7, 6), (3, 5, 3, 3), (8, 3), (8,))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's notice
        torch.library.opcheck(fused.fused_basis_conv,
                              (*tensors, [2, 1], [1, 1], [1, 1], store_basis))


def test_a_compiled_network_of_fused_layers_is_one_graph():
    """``torch.compile`` sees the op as one node: no graph break per layer (tracing into the
    Triton launcher broke the graph 23 times for these two layers)."""
    torch.manual_seed(0)
    model = nn.Sequential(BasisConv2d(8, 16, 3, 4, padding=1, combine="fused"), nn.ReLU(),
                          BasisConv2d(16, 16, 3, 4, padding=1, combine="fused"))
    x = torch.randn(2, 8, 8, 8)
    try:
        explained = torch._dynamo.explain(model)(x)
    finally:
        torch._dynamo.reset()  # no compiled frames left behind for other tests
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.device
def test_a_differentiable_backward_matches_the_stacked_form(device, kernel_runs):
    """``create_graph=True`` (a gradient penalty, a Hessian-vector product): the saved basis
    maps are a non-differentiable output, so the combination's gradient is computed from
    maps that autograd can follow back to ``x`` and the basis weight."""
    torch.manual_seed(0)
    x, weight, combination, bias = (torch.randn(*shape, device=device, requires_grad=True)
                                    for shape in ((2, 3, 6, 5), (4, 3, 3, 3), (6, 4), (6,)))
    conv = ((1, 1), (1, 1), (1, 1))
    second = []
    for forward in (fused.fused_forward, stacked_forward):
        y = forward(x, weight, combination, bias, *conv)
        grads = torch.autograd.grad(y.square().sum(), (x, weight, combination),
                                    create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        second.append(torch.autograd.grad(penalty, (x, weight, combination, bias)))
    assert kernel_runs
    for got, want in zip(*second):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape, message", [
    ((2, 5, 6, 6), "expected input.* to have 4 channels, but got 5"),   # more channels
    ((2, 3, 6, 6), "expected input.* to have 4 channels, but got 3"),   # fewer
    ((2, 4, 2, 2), "Kernel size can't be greater than actual input size"),  # no output pixel
    ((2, 4, 1, 1), "Kernel size can't be greater than actual input size"),
    ((5, 6, 6), "to have 4 channels, but got 5"),  # unbatched
    ((6, 6), "Expected 3D \\(unbatched\\) or 4D \\(batched\\) input"),
])
def test_an_input_the_conv_refuses_is_refused_as_f_conv2d_refuses_it(shape, message,
                                                                        kernel_runs):
    """Found by audit: the kernel took the input's channel count for the weight's, so a
    5-channel input to a 4-channel layer read past the basis weight (an output of inf under
    the interpreter, an out-of-bounds read on a GPU), and an input smaller than the kernel
    gave an empty output or a negative-size error where F.conv2d (and the other forms)
    name the problem."""
    layer = make_layer(4, 8, 3, 3, 1, 0, 1, True, torch.device("cpu"))
    x = torch.randn(shape)
    with pytest.raises(RuntimeError, match=message):
        layer.to_conv()(x)  # what the dense conv says
    with pytest.raises(RuntimeError, match=message):
        layer(x)
    assert kernel_runs == []  # refused before a launch


def test_same_padding_with_a_stride_is_refused_as_f_conv2d_refuses_it(kernel_runs):
    """Found in review: ``fused_forward`` called directly with stride 2 and
    ``padding="same"`` computed an output (padded as for stride 1) where ``F.conv2d``
    refuses; the stacked form refuses through it."""
    x, weight, combination = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3), torch.randn(5, 3)
    for forward in (fused.fused_forward, stacked_forward):
        for stride in ((2, 2), (1, 2)):
            with pytest.raises(RuntimeError, match="^padding='same' is not supported for "
                                                   "strided convolutions$"):
                forward(x, weight, combination, None, stride, "same", (1, 1))
    assert kernel_runs == []  # refused before a launch


def test_int_conv_options_are_taken_as_f_conv2d_takes_them(kernel_runs):
    """Found in review: ``fused_forward`` called directly with ``stride=2`` (an int, as
    ``F.conv2d`` and the stacked form take it) ended in "'int' object is not iterable"."""
    torch.manual_seed(0)
    x, weight, combination = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3), torch.randn(5, 3)
    for conv in ((2, 1, 1), (1, "same", 2), (2, (1, 0), 1), ((2,), [1], (1,))):
        torch.testing.assert_close(fused.fused_forward(x, weight, combination, None, *conv),
                                   stacked_forward(x, weight, combination, None, *conv),
                                   rtol=1e-4, atol=1e-4)
    assert len(kernel_runs) == 4


@pytest.mark.parametrize("conv, message", [
    ((0, 1, 1), "^non-positive stride is not supported$"),
    (((1, 0), 1, 1), "^non-positive stride is not supported$"),
    ((1, 1, 0), "^dilation should be greater than zero, but got \\[0, 0\\]$"),
    ((1, -1, 1), "^negative padding is not supported$"),
])
def test_a_conv_option_f_conv2d_refuses_is_refused_as_it_refuses_it(conv, message,
                                                                    kernel_runs):
    """Found in review: ``fused_forward`` called directly with ``dilation=0`` computed an
    output (every tap at one pixel), with ``padding=-1`` a cropped one, and with
    ``stride=0`` ended in a ZeroDivisionError, where ``F.conv2d`` (and the stacked form
    through it) refuses each in one line. A layer checks its own options when made."""
    x, weight, combination = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3), torch.randn(5, 3)
    for forward in (fused.fused_forward, stacked_forward):
        with pytest.raises(RuntimeError, match=message):
            forward(x, weight, combination, None, *conv)
    assert kernel_runs == []  # refused before a launch


def test_an_input_of_another_dtype_is_refused_and_leaves_the_kernel_to_the_shape(
        kernel_runs, monkeypatch):
    """Found by audit: a float32 input to a float64 layer reached the kernel, whose
    ``tl.dot`` refused the mix; that was taken for a kernel that does not compile for the
    shape, so after the user fixed the dtype the shape still ran the stacked form, with a
    warning about compiling."""
    monkeypatch.setattr(fused, "_FAILED", {})
    layer = make_layer(4, 8, 3, 3, 1, 1, 1, True, torch.device("cpu")).double()
    x = torch.randn(2, 4, 6, 6)
    with pytest.raises(RuntimeError, match="should be the same"):
        layer(x)
    assert kernel_runs == [] and fused._FAILED == {}
    torch.testing.assert_close(layer.float()(x), layer.to_conv()(x))
    assert kernel_runs == [(2, 4, 6, 6)]


@pytest.mark.filterwarnings("ignore:combine='fused' needs")  # float64: the stacked form
def test_autocast_leaves_float64_alone_as_it_does_for_a_conv():
    """Found by audit: under autocast the fused form cast a float64 layer and input to
    bf16, where ``F.conv2d`` (and every other form) computes in float64, as autocast
    leaves float64 tensors alone."""
    layer = make_layer(4, 8, 3, 3, 1, 1, 1, True, torch.device("cpu")).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, expected = layer(x), layer.to_conv()(x)
        assert fused.compute_dtype(x) == torch.float64
    assert expected.dtype == y.dtype == torch.float64
    torch.testing.assert_close(y, expected)


@pytest.mark.filterwarnings("ignore:combine='fused' needs")
def test_an_onnx_export_of_a_fused_layer_has_the_stacked_forms_standard_ops(monkeypatch,
                                                                             tmp_path):
    """Found in the export review: torch.onnx.export of a fused model failed on the custom
    op ("unrecognized namespace basisconv::fused_basis_conv"), with either exporter. The
    exporters' flag is set here by hand (onnx is no dependency of the project); with onnx
    installed the export itself is checked too."""
    torch.manual_seed(0)
    model = nn.Sequential(BasisConv2d(8, 16, 3, 4, padding=1, combine="fused")).eval()
    x = torch.randn(2, 8, 6, 6)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    program = torch.export.export(model, (x,))
    assert not [n for n in program.graph.nodes if "basisconv" in str(n.target)]
    torch.testing.assert_close(program.module()(x), model(x))
    monkeypatch.undo()
    onnx = pytest.importorskip("onnx")
    torch.onnx.export(model, (x,), tmp_path / "fused.onnx", dynamo=False)
    assert "Conv" in {node.op_type for node in onnx.load(tmp_path / "fused.onnx").graph.node}


@pytest.mark.device
def test_an_nchw_input_gets_a_contiguous_output_as_from_the_dense_conv(device, kernel_runs):
    """The kernel writes a channels_last output whatever the input's layout; an NCHW
    input gets it back contiguous, as from the conv the layer replaced, so that the model's
    ``out.view(B, -1)`` works (channels_last inputs keep channels_last: ``test_layers``)."""
    layer = make_layer(5, 12, 5, 3, 1, 1, 1, True, device)
    x = torch.randn(2, 5, 7, 6, device=device)
    y = layer(x)
    assert kernel_runs == [tuple(x.shape)]
    reference = F.conv2d(x, layer.dense_weight(), layer.bias, 1, 1)
    assert reference.is_contiguous() and y.is_contiguous()
    torch.testing.assert_close(y.view(2, -1), reference.view(2, -1), rtol=1e-4, atol=1e-4)


@pytest.mark.device
@pytest.mark.parametrize("outputs, image", [(1, (5, 4)), (6, (1, 1))],
                         ids=["one-channel", "one-pixel"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "channels_last"])
def test_an_output_contiguous_in_both_layouts_has_the_dense_convs_strides(
        outputs, image, memory_format, device, kernel_runs):
    """Found in review: the kernel's channels_last output of one channel or one pixel is
    contiguous in NCHW too, so ``.contiguous()`` kept its channels_last strides for an NCHW
    input, and the next conv of the NCHW model (PyTorch's conv reads the layout from the
    strides) ran and wrote channels_last from there on (a 1x1 conv on pooled features)."""
    layer = make_layer(4, outputs, 1, 3, 1, 1, 1, True, device)
    x = torch.randn(2, 4, *image, device=device).to(memory_format=memory_format)
    y = layer(x)
    assert kernel_runs == [tuple(x.shape)]
    reference = F.conv2d(x, layer.dense_weight(), layer.bias, 1, 1)
    torch.testing.assert_close(y, reference, rtol=1e-4, atol=1e-4)
    assert y.stride() == reference.stride()


@pytest.mark.device
@pytest.mark.parametrize("image", [(5, 4), (1, 1)], ids=["5x4", "1x1"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "channels_last"])
def test_a_one_channel_input_gets_the_layout_the_dense_conv_gives(memory_format, image,
                                                                  device, kernel_runs):
    """Found in the seventh review: a one-channel input (a grayscale stem) is contiguous in
    both layouts, and the layer took a channels_last one for NCHW (PyTorch's conv tells the
    two apart by their strides), so a channels_last model got an NCHW activation there."""
    layer = make_layer(1, 6, 2, 3, 1, 1, 1, True, device)
    x = torch.randn(2, 1, *image, device=device).to(memory_format=memory_format)
    y = layer(x)
    assert kernel_runs == [tuple(x.shape)]
    reference = F.conv2d(x, layer.dense_weight(), layer.bias, 1, 1)
    torch.testing.assert_close(y, reference, rtol=1e-4, atol=1e-4)
    for layout in (torch.contiguous_format, torch.channels_last):
        assert y.is_contiguous(memory_format=layout) == reference.is_contiguous(
            memory_format=layout)
    # and the strides, which the next conv reads the layout from: a 1x1 one-channel input
    # is contiguous in both layouts, and its strides fit both in every order, which c10
    # takes for NCHW (mutation review: taking it for channels_last passed the check above)
    assert y.stride() == reference.stride()


@pytest.mark.device
@pytest.mark.parametrize("view", ["channels_last-channels", "channels_last-crop",
                                  "nchw-channels"])
def test_a_view_of_an_input_gets_the_layout_the_dense_conv_gives(view, device, kernel_runs):
    """Found in review: a channel slice or a crop of a channels_last tensor is contiguous
    in neither layout, and the layer took it for NCHW where PyTorch's conv (judging by the
    strides) writes channels_last, so a channels_last model that splits its channels
    (``x.chunk(2, 1)``) got an NCHW activation after a fused layer on a part."""
    layer = make_layer(4, 8, 3, 3, 1, 1, 1, True, device)
    layout, part = view.split("-")
    whole = torch.randn(2, 6, 5, 7, device=device)
    if layout == "channels_last":
        whole = whole.to(memory_format=torch.channels_last)
    x = whole[:, 1:5] if part == "channels" else whole[:, :4, :, 1:6]
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    y = layer(x)
    assert kernel_runs == [tuple(x.shape)]
    reference = F.conv2d(x, layer.dense_weight(), layer.bias, 1, 1)
    torch.testing.assert_close(y, reference, rtol=1e-4, atol=1e-4)
    assert y.stride() == reference.stride()


def test_kernel_resources_are_read_for_the_kernel_a_training_step_runs(monkeypatch):
    """The resource table (``scripts/kernel_resources.py``) judges tiles before GPU time is
    spent on them, so it must compile the variant training runs: with a bias, and storing
    the basis maps for the combination's gradient (an extra ``[M, m]`` output, its registers
    and stores), at ``BLOCK_N`` = the basis width and the tile's warps and stages. A
    variant without the store would report a kernel no training step launches."""
    from basisconv.bench.kernel_resources import Tile, compile_tile

    monkeypatch.delenv("TRITON_INTERPRET")  # (the compiler's kernel, not the interpreter's)
    seen = {}
    monkeypatch.setattr(triton_conv.triton, "compile",
                        lambda source, target, options: seen.update(source=source,
                                                                    options=options))
    compile_tile(Tile(64, 32, 64, 4, 3), 16)
    source = seen["source"]
    constants = {source.fn.arg_names[key[0]]: value for key, value in source.constants.items()}
    assert constants["STORE_BASIS"] is True and constants["HAS_BIAS"] is True
    assert (constants["BLOCK_M"], constants["BLOCK_N"], constants["BLOCK_K"],
            constants["BLOCK_C"]) == (64, 16, 32, 64)
    assert seen["options"] == {"num_warps": 4, "num_stages": 3}


def test_kernel_resources_report_shared_memory_in_kib_against_hoppers_block_limit(
        monkeypatch):
    """A row's ``shared_kib`` is in KiB (1024 bytes), the unit of the 227 KiB an sm_90
    block may use, and ``fits`` says whether the block's shared memory is within that
    limit: exactly 227 KiB fits, one byte more does not."""
    from types import SimpleNamespace

    from basisconv.bench import kernel_resources

    monkeypatch.setattr(kernel_resources, "ptxas_usage",
                        lambda ptx: {"registers": 128, "spill_store_bytes": 0})
    tile = kernel_resources.Tile(64, 32, 64, 4, 3)
    for shared, fits in ((227 * 1024, True), (227 * 1024 + 1, False)):
        monkeypatch.setattr(kernel_resources, "compile_tile", lambda *args, shared=shared: (
            SimpleNamespace(metadata=SimpleNamespace(shared=shared), asm={"ptx": ""})))
        row = kernel_resources.tile_resources(tile, 16)
        assert (row["shared_kib"], row["fits"]) == (227.0, fits)



# ------------------------------------- the GPU's own tiles (checks for the next GPU slot)
#: Shapes at the edges of the GPU's tiles (``_GPU_TILES``: 32 to 128 rows, 32 or 64 input
#: channels a step, 64 or 128 output channels a block; the basis padded to 64, 128 or
#: 256), which the interpreter's one 16-wide tile never reaches:
#: (C_in, C_out, m, kernel, stride, padding, bias, batch, (H, W), layout).
TILE_EDGES = [
    # C_in one past a 64-channel step, C_out one past a 128-channel block, m one past 64,
    # 132 rows (four past a 128-row tile), image width 65, stride 2, a channel slice
    (65, 129, 65, (1, 3), 2, (0, 1), True, 2, (3, 65), "nchw-channels"),
    # image width 1, batch 1, C_in one short of a step, m one short of 64
    (63, 65, 63, 3, 1, 1, False, 1, (5, 1), "channels_last"),
    # image width 129 (258 rows: two 128-row tiles and two rows), a channels_last slice
    (3, 17, 5, 3, 1, 1, True, 1, (2, 129), "channels_last-channels"),
    # image width 63, stride 2, no padding: 31 rows, fewer than the smallest tile
    (4, 33, 31, 3, 2, 0, True, 1, (3, 63), "nchw"),
    # the widest basis, where the autotuner's space is pruned (``_prune_configs``)
    (8, 260, 256, 3, 1, 1, True, 2, (5, 7), "channels_last"),
]


def tile_edge_id(shape) -> str:
    return f"{shape[0]}-{shape[1]}-m{shape[2]}-{shape[8][0]}x{shape[8][1]}-{shape[9]}"


def tile_of(config) -> tuple:
    """A Triton config as its ``_GPU_TILES`` entry."""
    return (*(config.kwargs[k] for k in ("BLOCK_M", "BLOCK_K", "BLOCK_C")), config.num_warps,
            config.num_stages)


def pruned_tiles(m: int) -> set:
    """The tiles the autotuner should leave out at a basis of ``m``: those whose threads
    would each hold more than ``MAX_ACCUMULATOR_PER_THREAD`` of the float32 accumulator
    (the rule, not ``_prune_configs``, which these checks are to check)."""
    block_n = max(16, 1 << (m - 1).bit_length())
    return {tile for tile in triton_conv._GPU_TILES
            if tile[0] * block_n > triton_conv.MAX_ACCUMULATOR_PER_THREAD * 32 * tile[3]}


def tile_edge_input(c_in, batch, image, layout, device) -> torch.Tensor:
    """An input in ``layout``: NCHW or channels_last, whole or a slice of its channels (a
    view contiguous in neither layout)."""
    layout, _, part = layout.partition("-")
    x = torch.randn(batch, c_in + 2 if part else c_in, *image, device=device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    return x[:, 1:c_in + 1] if part else x


def check_against_float64(layer, x, tolerance: float) -> None:
    """The layer's output and its gradients (input, basis weight, coefficients, bias)
    against the same layer's dense conv in float64, each within ``tolerance`` of its
    reference's largest magnitude (and relatively ten times that); the output's strides
    against the float32 dense conv's (cuDNN computes a float64 conv in NCHW whatever the
    input's layout: the first GPU slot's finding)."""
    exact = copy.deepcopy(layer).double()
    names = ["basis_weight", "coefficients"] + (["bias"] if layer.bias is not None else [])
    x = x.detach().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    y = layer(x)
    with torch.no_grad():
        dense = F.conv2d(x, layer.dense_weight(), layer.bias, layer.stride, layer.padding,
                         layer.dilation)
    assert y.shape == dense.shape and y.stride() == dense.stride()
    reference = F.conv2d(x64, exact.dense_weight(), exact.bias, exact.stride, exact.padding,
                         exact.dilation)
    grad = torch.randn_like(y)
    got = [y, *torch.autograd.grad(y, [x, *(getattr(layer, n) for n in names)], grad)]
    want = [reference, *torch.autograd.grad(reference, [x64, *(getattr(exact, n) for n in names)],
                                            grad.double())]
    for name, a, b in zip(["output", "input", *names], got, want):
        torch.testing.assert_close(a.double(), b, rtol=10 * tolerance,
                                   atol=tolerance * b.abs().max().item(),
                                   msg=lambda s: f"{name}: {s}")


@pytest.mark.device
@pytest.mark.parametrize("shape", TILE_EDGES, ids=tile_edge_id)
@pytest.mark.parametrize("tile", triton_conv._GPU_TILES,
                         ids=lambda tile: "M{}-K{}-C{}-w{}-s{}".format(*tile))
def test_every_gpu_tile_matches_float64_at_the_tiles_edges(tile, shape, device, kernel_runs,
                                                          monkeypatch):
    """Each tile the GPU autotunes over, alone (the autotuner may pick any for a shape, and
    a tile that does not compile would only be timed as infinite there): its row, channel,
    basis and output-block masks against float64, in exact float32 products (TF32 off).
    Compiled on a GPU; here the interpreter runs the same tile sizes (it ignores warps and
    stages), which its own 16-wide tile leaves unexercised."""
    c_in, c_out, m, kernel, stride, padding, bias, batch, image, layout = shape
    if tile in pruned_tiles(m):
        pytest.skip("pruned from the autotuner's space at this basis width")
    monkeypatch.setattr(fused, "_FAILED", {})  # a failed tile falls back: not for the next
    monkeypatch.setattr(triton_conv, "_KERNELS", {})  # decorated with this tile, forgotten after
    block_m, block_k, block_c, warps, stages = tile
    config = triton_conv.triton.Config({"BLOCK_M": block_m, "BLOCK_K": block_k, "BLOCK_C": block_c},
                           num_warps=warps, num_stages=stages)
    monkeypatch.setattr(triton_conv, "_tile_configs", lambda interpret, tune=True: [config])
    layer = make_layer(c_in, c_out, m, kernel, stride, padding, 1, bias, device)
    x = tile_edge_input(c_in, batch, image, layout, device)
    check_against_float64(layer, x, 1e-5)
    assert kernel_runs == [tuple(x.shape)]  # the kernel, not the stacked fallback
    (tuner,) = triton_conv._KERNELS.values()
    assert tile_of(tuner.best_config) == tile


@pytest.mark.device
@pytest.mark.parametrize("shape", TILE_EDGES, ids=tile_edge_id)
def test_the_autotuned_kernel_matches_float64_after_timing_every_tile_it_keeps(
        shape, device, kernel_runs, monkeypatch):
    """Autotuning on, as training runs (``BASISCONV_AUTOTUNE=1``, TF32 products): every
    tile of ``_GPU_TILES`` compiled and timed (none infinite: one that fails to compile is
    timed so, silently), but the one ``_prune_configs`` drops at m = 256, and the chosen
    tile's output and gradients against float64 at TF32's tolerance. Here the interpreter
    runs each of the GPU's tiles once where a GPU would time it (float32, exact)."""
    c_in, c_out, m, kernel, stride, padding, bias, batch, image, layout = shape
    kept = set(triton_conv._GPU_TILES) - pruned_tiles(m)
    monkeypatch.setattr(fused, "_FAILED", {})
    monkeypatch.setattr(triton_conv, "_KERNELS", {})  # tuned afresh, forgotten after
    if device.type == "cuda":
        monkeypatch.setenv("BASISCONV_AUTOTUNE", "1")
        torch.backends.cudnn.allow_tf32 = True  # (cuDNN's default; restored after the test)
        tolerance = 5e-3  # TF32's 10-bit products, twice (the basis, then the combination)
    else:
        gpu_tiles = triton_conv._tile_configs(interpret=False)
        monkeypatch.setattr(triton_conv, "_tile_configs", lambda interpret, tune: gpu_tiles)
        monkeypatch.setattr(triton_conv, "_autotune_options", lambda: {
            "do_bench": lambda run, quantiles: run() or [1.0, 1.0, 1.0]})
        tolerance = 1e-5
    layer = make_layer(c_in, c_out, m, kernel, stride, padding, 1, bias, device)
    x = tile_edge_input(c_in, batch, image, layout, device)
    check_against_float64(layer, x, tolerance)
    assert kernel_runs == [tuple(x.shape)]
    (tuner,) = triton_conv._KERNELS.values()
    timings = {tile_of(config): time for config, time in tuner.configs_timings.items()}
    assert set(timings) == kept
    assert all(torch.tensor(time).isfinite().all() for time in timings.values()), timings
    assert tile_of(tuner.best_config) in timings
