"""BasisConv2d: exactness at full rank, conversion and its error, gradients, init, options."""

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from basisconv.cost_formulas import saves_compute
from basisconv.errors import ConfigError
from basisconv.fitting import (basis_filters, best_rank_weight, fit_coefficients,
                               relative_error, select_basis, smallest_basis)
from basisconv.layer_options import resolve_num_basis
from basisconv.layers import BasisConv2d
from basisconv.penalties import coefficient_l1

# (in, out, kernel, stride, padding, dilation, bias)
SHAPES = [
    (3, 8, 3, 1, 1, 1, False),
    (6, 10, 3, 2, 1, 1, True),
    (5, 7, (3, 1), (1, 2), (1, 0), 1, True),
    (4, 6, 1, 2, 0, 1, False),
    (4, 5, 3, 1, 2, 2, True),
    (4, 6, 5, 1, "same", 1, False),
]


def make_conv(c_in, c_out, k, stride, padding, dilation, bias, seed=0, device="cpu"):
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, k, stride, padding, dilation, bias=bias).double().to(device)


@pytest.mark.device
@pytest.mark.parametrize("combine", ["stacked", "split"])
@pytest.mark.parametrize("shape", SHAPES)
def test_full_rank_conversion_reproduces_the_conv(shape, combine, device):
    conv = make_conv(*shape, device=device)
    layer = BasisConv2d.from_conv(conv, conv.out_channels, combine=combine)
    assert layer.reconstruction_error < 1e-12
    assert layer.basis_weight.device == layer.output_index.device == conv.weight.device
    x1 = torch.randn(2, shape[0], 9, 11, dtype=torch.float64, device=device, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y_conv, y_layer = conv(x1), layer(x2)
    assert y_layer.shape == y_conv.shape
    torch.testing.assert_close(y_layer, y_conv, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(y_conv)
    y_conv.backward(grad)
    y_layer.backward(grad)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-12, atol=1e-12)
    # at full rank the combination is a permutation: basis filter i is conv filter basis_channels[i]
    torch.testing.assert_close(layer.basis_weight.grad, conv.weight.grad[layer.basis_channels],
                               rtol=1e-12, atol=1e-12)
    if conv.bias is not None:
        torch.testing.assert_close(layer.bias.grad, conv.bias.grad)


@pytest.mark.device
@pytest.mark.parametrize("shape", SHAPES)  # dilation and 'same' padding too
def test_to_conv_round_trips(shape, device):
    conv = make_conv(*shape, device=device)
    back = BasisConv2d.from_conv(conv, conv.out_channels).to_conv()
    torch.testing.assert_close(back.weight, conv.weight, rtol=1e-12, atol=1e-12)
    assert (back.stride, back.padding, back.dilation) == (conv.stride, conv.padding, conv.dilation)
    # below full rank, to_conv is the dense form of the basis layer itself
    layer = BasisConv2d.from_conv(conv, 3)
    x = torch.randn(2, shape[0], 8, 8, dtype=torch.float64, device=device)
    torch.testing.assert_close(layer.to_conv()(x), layer(x), rtol=1e-10, atol=1e-12)


def test_to_conv_and_to_dense_leave_the_random_stream_as_it_was():
    # Found by review: to_conv built its nn.Conv2d with torch's default init, which drew
    # from the global generator and was then overwritten: exporting (to_dense) mid-training
    # changed every later draw of a seeded run (a DataLoader's shuffle, dropout, augmentation).
    from basisconv.dense_form import to_dense

    model = nn.Sequential(BasisConv2d(3, 8, 3, 2, padding=1), BasisConv2d(8, 8, 1, 4))
    state = torch.get_rng_state()
    conv = model[0].to_conv()
    to_dense(model)
    assert torch.equal(torch.get_rng_state(), state)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(conv(x), model[0](x))

@pytest.mark.parametrize("options", [{"num_basis": 3}, {"max_error": 0.5},
                                     {"num_basis": 4, "fit": "svd", "coefficient_rank": 2}],
                         ids=["count", "max-error", "svd-low-rank"])
def test_from_conv_leaves_the_random_stream_as_it_was(options):
    # Found by review: from_conv built its layer with the from-scratch init, which drew
    # from the global generator and was then overwritten by the fit: converting a model
    # changed every later draw of the user's seeded code.
    conv = nn.Conv2d(4, 8, 3, padding=1).to(memory_format=torch.channels_last)
    state = torch.get_rng_state()
    layer = BasisConv2d.from_conv(conv, **options)
    assert torch.equal(torch.get_rng_state(), state)
    assert layer.basis_weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 6, 6)
    assert torch.allclose(layer(x), layer.to_conv()(x), atol=1e-5)
    assert sorted(layer.output_index.tolist()) == list(range(8))


def test_a_conv_of_rank_m_is_reproduced_with_m_basis_filters():
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 12, 3, padding=1, bias=True).double()
    with torch.no_grad():  # 12 filters that are combinations of 4
        conv.weight.copy_((torch.randn(12, 4, dtype=torch.float64) @
                           torch.randn(4, 54, dtype=torch.float64)).reshape(12, 6, 3, 3))
    for combine in ("stacked", "split"):
        layer = BasisConv2d.from_conv(conv, 4, combine=combine)
        assert layer.reconstruction_error < 1e-10
        x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-9, atol=1e-10)
    assert BasisConv2d.from_conv(conv, 3).reconstruction_error > 1e-3


def test_reconstruction_error_is_the_least_squares_error_and_shrinks_with_m():
    conv = make_conv(8, 16, 3, 1, 1, 1, False)
    flat = conv.weight.detach().reshape(16, -1)
    picked, curve = select_basis(conv.weight, 16)
    assert sorted(picked.tolist()) == list(range(16))
    errors = []
    for m in (2, 4, 8, 12, 16):
        layer = BasisConv2d.from_conv(conv, m)
        direct = ((layer.dense_weight() - conv.weight).norm() / conv.weight.norm()).detach()
        assert layer.reconstruction_error == pytest.approx(float(direct), abs=1e-12)
        # the greedy curve is the least-squares error of its own picks
        assert curve[m].item() == pytest.approx(layer.reconstruction_error, abs=1e-9)
        errors.append(layer.reconstruction_error)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-12 and errors[0] > 0.5
    # the greedy pick beats a random choice of basis filters
    rest = torch.arange(4, 16)
    (coef,) = fit_coefficients(flat[:4], flat[rest])
    first4 = ((coef @ flat[:4] - flat[rest]).norm() / flat.norm()).item()
    assert BasisConv2d.from_conv(conv, 4).reconstruction_error <= first4 + 1e-12


def test_max_error_picks_the_smallest_sufficient_basis():
    conv = make_conv(8, 16, 3, 1, 1, 1, False)
    _, curve = select_basis(conv.weight, 16)
    target = float(curve[9]) + 1e-9
    layer = BasisConv2d.from_conv(conv, max_error=target)
    assert layer.num_basis == 9 and layer.reconstruction_error <= target
    # "at most": an error equal to max_error is enough (not one filter more)
    assert BasisConv2d.from_conv(conv, max_error=float(curve[9])).num_basis == 9
    with pytest.raises(ValueError, match="exactly one of num_basis"):
        BasisConv2d.from_conv(conv, 4, max_error=0.1)


def test_a_layer_of_low_rank_is_fitted_exactly_by_as_many_filters_as_its_rank():
    """Eight filters in a 3-dimensional span: three picks reconstruct it to rounding, and
    a tight ``max_error`` takes three (the greedy errors once stalled near 1e-8 past the
    rank, so ``max_error=1e-9`` took six)."""
    conv = make_conv(5, 8, 3, 1, 1, 1, False).double()  # rank 3 exactly, not to float32
    g = torch.Generator().manual_seed(0)
    span = torch.randn(3, 5 * 9, generator=g, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_((torch.randn(8, 3, generator=g, dtype=torch.float64) @ span)
                          .reshape(8, 5, 3, 3))
    _, curve = select_basis(conv.weight, 8)
    assert curve[2] > 0.01 and (curve[3:] < 1e-12).all()
    layer = BasisConv2d.from_conv(conv, max_error=1e-9)
    assert layer.num_basis == 3 and layer.reconstruction_error < 1e-12


def test_the_picks_past_a_layers_rank_are_distinct_filters():
    """Past the rank every residual is exactly zero: the picks are still filters not yet
    picked (a tie with an already picked filter once picked it again)."""
    weight = torch.zeros(4, 2, 3, 3, dtype=torch.float64)
    weight[2] = 1.0  # rank 1: one filter, three zero ones
    picked, errors = select_basis(weight, 4)
    assert picked[0] == 2 and sorted(picked.tolist()) == [0, 1, 2, 3]
    assert errors.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("shape, m", [((64, 16, 3, 3), 20), ((8, 3, 1, 1), 8), ((4, 2, 3, 3), 4)])
def test_a_conversions_picks_are_the_basis_selections_without_its_error_curve(shape, m):
    """``from_conv`` reads :func:`basis_filters` (the error curve a third of the fit's
    time, unread there): the same filters, in the same order, as :func:`select_basis`,
    also past a layer's rank (the 8x3 filters: rank 3)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(shape, generator=generator)
    assert torch.equal(basis_filters(weight, m), select_basis(weight, m)[0])


def test_an_all_zero_layer_is_fitted_by_one_filter_with_no_error():
    """A conv whose filters are all zero (no norm to divide by) has errors of 0, not NaN:
    one filter meets any ``max_error``."""
    weight = torch.zeros(4, 2, 3, 3)
    _, errors = select_basis(weight, 4)
    assert errors.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert smallest_basis(weight, 0.1) == (1, 0.0)


def test_a_max_error_any_filter_meets_still_keeps_one_and_a_full_rank_weight_is_itself():
    """At least one basis filter whatever ``max_error`` allows (``errors[0] = 1`` meets
    ``max_error=1``), and the best weight of full rank is the weight exactly, not its SVD
    rebuilt (so a full-rank ``fit="svd"`` conversion stays exact)."""
    weight = torch.randn(6, 2, 3, 3, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    assert smallest_basis(weight, 1.0)[0] == 1
    flat = weight.reshape(6, -1)
    assert torch.equal(best_rank_weight(flat, 6), flat)


def test_the_relative_error_of_an_all_zero_exact_tensor_is_the_absolute_one():
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0
    assert relative_error(torch.full((4,), 0.5), torch.zeros(4)) == pytest.approx(1.0)
    assert relative_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])) == \
        pytest.approx(4 / 3)


@pytest.mark.parametrize("options", [
    {"combine": "stacked", "bias": True},
    {"combine": "split", "bias": True},
    {"combine": "stacked", "coefficient_rank": 2},
])
@pytest.mark.device
def test_gradcheck(options, device):
    torch.manual_seed(0)
    options = dict(options)
    bias = options.pop("bias", False)
    layer = BasisConv2d(3, 7, 3, 3, stride=2, padding=1, bias=bias, dtype=torch.float64,
                        device=device, **options)
    layer.output_index.copy_(torch.randperm(7))  # a converted layer's channel order
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize("combine", ["stacked", "split", "fused", "auto"])
def test_channels_last_input_gives_the_same_output_in_the_layout_a_conv_gives(combine):
    """Found in the dtypes review: the split form returned NCHW for a channels_last input
    (its channel reorder), so every op after it in a channels_last model ran converted or
    in the slower layout (a ResNet-18 step 1.5x slower here, on a 2-core CPU)."""
    conv = make_conv(8, 16, 3, 1, 1, 1, True)
    layer = BasisConv2d.from_conv(conv, 4, combine=combine)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fused: no CUDA here, the stacked form, said once
        last = layer(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(last, layer(x))
    assert last.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("combine", ["stacked", "split"])
@pytest.mark.parametrize("image", [(1, 1), (1, 4)], ids=["1x1", "1x4"])
def test_a_channels_last_map_contiguous_in_both_layouts_keeps_the_convs_strides(combine,
                                                                               image):
    """Found in review: maps of one pixel (a 1x1 conv on pooled features, as in a
    squeeze-and-excitation block) from a channels_last input are contiguous in both layouts;
    the split form's channel selection gave them NCHW strides where the conv it replaces
    gives channels_last ones."""
    conv = nn.Conv2d(8, 6, 1).to(memory_format=torch.channels_last)
    layer = BasisConv2d.from_conv(conv, 3, combine=combine).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, *image).contiguous(memory_format=torch.channels_last)
    want, got = nn.functional.conv2d(x, layer.dense_weight(), layer.bias), layer(x)
    torch.testing.assert_close(got, want)
    assert got.stride() == conv(x).stride()


@pytest.mark.parametrize("combine", ["stacked", "split"])
def test_under_autocast_the_output_has_the_dtype_a_conv_gives(combine):
    # Found by audit: the split form added the float32 bias after the autocast conv, so
    # its output (twice the memory) was float32 where the conv's is bfloat16
    conv = nn.Conv2d(8, 16, 3, padding=1)
    layer = BasisConv2d.from_conv(conv, 4, combine=combine)
    x = torch.randn(2, 8, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == conv(x).dtype == torch.bfloat16


@pytest.mark.parametrize("combine", ["stacked", "split", "fused", "auto"])
@pytest.mark.parametrize("params, autocast", [(torch.bfloat16, torch.float16),
                                              (torch.float16, torch.bfloat16)])
def test_16_bit_parameters_run_under_the_other_16_bit_autocast_as_a_conv_does(
        combine, params, autocast):
    """Found in review: autocast's ``cat`` of the combination matrix refused bf16 parts
    under fp16 autocast ("Unexpected floating ScalarType"), where the dense conv runs."""
    conv = nn.Conv2d(4, 8, 3, padding=1).to(params)
    layer = BasisConv2d.from_conv(conv, 4, combine=combine)
    x = torch.randn(2, 4, 5, 5, dtype=params)
    with torch.autocast("cpu", dtype=autocast), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fused: no CUDA here, the stacked form, said once
        assert layer(x).dtype == conv(x).dtype


def test_conversion_and_export_inside_autocast_keep_the_parameters_precision():
    """Found in review: the dense weight was built by an autocast matmul, so a full-rank
    conversion inside a bf16 autocast region reported an error of 1.8e-3 (0 outside) and
    exported a conv rounded to bf16."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer = BasisConv2d.from_conv(conv, 32)
        exported = layer.to_conv()
        assert layer.dense_weight().dtype == torch.float32
    assert layer.reconstruction_error < 1e-6
    torch.testing.assert_close(exported.weight, conv.weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("combine", ["stacked", "split", "fused", "auto"])
def test_an_unbatched_input_is_taken_as_nn_conv2d_takes_it(combine):
    # Found by audit: a [C, H, W] input (nn.Conv2d takes it) failed in the split form
    # ("INDICES element is out of DATA bounds", or a cat of mismatched sizes) and in the
    # fused one ("not enough values to unpack").
    conv = make_conv(4, 8, 3, 1, 1, 1, True)
    x = torch.randn(4, 6, 7, dtype=torch.float64)
    for m in (8, 3, 4):
        layer = BasisConv2d.from_conv(conv, m, combine=combine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fused: no CUDA here, the stacked form, said once
            out = layer(x)
        torch.testing.assert_close(out, layer.to_conv()(x), rtol=1e-10, atol=1e-12)


# rank 8: over seeds 0-19 the combined/basis ratio stayed in 0.88-1.12 (rank 4 reached 0.83,
# too near the bound); a factor init of std 1 instead of 1/sqrt(r) or 1/sqrt(m) gives 2.8-4
@pytest.mark.parametrize("coefficient_rank", [None, 8])
def test_from_scratch_init_matches_the_scale_of_a_dense_conv(coefficient_rank):
    torch.manual_seed(0)
    layer = BasisConv2d(64, 64, 3, 16, padding=1, coefficient_rank=coefficient_rank)
    dense = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(dense.weight, mode="fan_in", nonlinearity="relu")
    x = torch.randn(8, 64, 12, 12)
    with torch.no_grad():
        y, y_dense = layer(x), dense(x)
    basis_std = y[:, layer.basis_channels].std()
    combined = torch.ones(64, dtype=torch.bool)
    combined[layer.basis_channels] = False
    combined_std = y[:, combined].std()
    assert 0.8 < float(basis_std / y_dense.std()) < 1.25
    assert 0.8 < float(combined_std / basis_std) < 1.25


def test_reset_parameters_sets_the_basis_filters_std_and_refuses_a_bad_one():
    torch.manual_seed(0)
    layer = BasisConv2d(64, 64, 3, 32, padding=1)
    layer.reset_parameters(filter_std=0.01)
    assert 0.0095 < float(layer.basis_weight.detach().std()) < 0.0105
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="filter_std must be a finite number >= 0"):
            layer.reset_parameters(filter_std=bad)


def test_fraction_rounding_and_range_errors():
    assert resolve_num_basis(0.25, 64) == 16
    assert resolve_num_basis(0.01, 8) == 1
    assert resolve_num_basis(1.0, 10) == 10
    assert resolve_num_basis(0.5, 5) == 3  # half up
    # half up on the decimal as written: 0.7 * 45 is 31.499999999999996 in binary
    assert resolve_num_basis(0.7, 45) == 32
    assert resolve_num_basis(0.35, 90) == 32
    assert resolve_num_basis(0.29, 50) == 15
    assert resolve_num_basis(0.3, 10) == 3  # 3.0000000000000004 in binary
    # rounded, not ceiled (found by a helper's mutation test: every case above lands on .0
    # or .5, where the two agree)
    assert resolve_num_basis(0.3, 64) == 19 and resolve_num_basis(0.1, 44) == 4
    with pytest.raises(ValueError, match=r"valid is 1\.\.8"):
        resolve_num_basis(0, 8)
    with pytest.raises(ValueError, match=r"valid is 1\.\.8"):
        BasisConv2d(4, 8, 3, 9)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        resolve_num_basis(1.5, 8)
    with pytest.raises(TypeError, match="must be an int"):
        resolve_num_basis(True, 8)
    with pytest.raises(ValueError, match="combine must be one of"):
        BasisConv2d(4, 8, 3, 2, combine="concat")
    with pytest.raises(ValueError, match=r"coefficient_rank must be an int in 1\.\.2"):
        BasisConv2d(4, 8, 3, 2, coefficient_rank=3)


@pytest.mark.parametrize("value, problem", [
    (1, None), (64, None), (0.25, None), (1.0, None), (np.float32(0.5), None), (np.int64(3), None),
    (0, "as a count must be >= 1"), (-2, "as a count must be >= 1"),
    (0.0, r"as a fraction must be in \(0, 1\]"), (1.5, r"as a fraction must be in \(0, 1\]"),
    (float("nan"), r"as a fraction must be in \(0, 1\]"), (True, "is neither a count"),
    ("half", "is neither a count"),
    # found in review: a count computed as a float (64 / 4 in Python 3) read "16.0 as a
    # fraction must be in (0, 1]; a layer takes 1..its out_channels as a count", which a
    # user with 16 of 64 channels took to be met
    (16.0, r"as a fraction must be in \(0, 1\] \(for a count of 16, give the int 16\)$")])
def test_one_count_or_fraction_rule_for_basis_sizes_and_subsets(value, problem):
    """The rule the config check (data subsets, the held-out split) and the basis layer
    share: an int >= 1 is a count, a float in (0, 1] a fraction, a bool neither. (The
    config check's side, through ``validate``, is tests/test_configs.py's
    test_a_subset_is_refused_in_the_words_of_the_count_or_fraction_rule.)"""
    from basisconv.counts import count_or_fraction_problem
    from basisconv.layer_options import check_basis_size

    if problem is None:
        assert count_or_fraction_problem(value) is None
        check_basis_size(value, "basis.size")
        return
    assert re.fullmatch(problem + ".*", count_or_fraction_problem(value))
    with pytest.raises((TypeError, ValueError), match="basis.size="):
        check_basis_size(value, "basis.size")


def test_a_count_or_fraction_the_rule_accepts_is_that_count_or_that_share():
    """Found by a mutation test (a fraction told by ``isinstance(size, float)`` failed no
    test): numpy's numbers pass the rule above, so they are counted as Python's are;
    np.float32(0.5) of 10 images is 5, not ``int(0.5)``, no image."""
    from basisconv.counts import count_of

    assert count_of(10, 3) == count_of(10, np.int64(3)) == 3
    assert count_of(10, 0.5) == count_of(10, np.float32(0.5)) == 5
    assert count_of(10, 0.25) == 3  # 2.5, half up (share_of)
    # and at the decimal written, as Python's: float(np.float32(0.7)) is 0.69999998..., whose
    # share of 45 was 31 where 0.7's is 32 (found in review)
    assert count_of(45, 0.7) == count_of(45, np.float32(0.7)) == count_of(45, np.float16(0.7)) == 32
    assert count_of(10, torch.tensor(0.5)) == 5  # (float() takes a 0-d tensor: as its float)


def test_a_numpy_fractions_share_does_not_depend_on_numpys_print_options():
    """Found in review: the share of a numpy float was read from its ``str``, which numpy's
    print options change (``legacy="1.13"``, set by older code for doctests, prints a
    float64 at 12 digits, a float32 at 6, np.float16(0.7) as 0.700195): the same value's
    share then depended on a setting about printing. Its shortest decimal at its own
    precision is the same under any print options."""
    from basisconv.counts import share_of

    values = [np.float64(0.1234567890123456), np.float32(0.12345679), np.float16(0.7),
              np.float32(0.7), 0.1234567890123456]
    expected = [share_of(10**16, value) for value in values]
    with np.printoptions(legacy="1.13", precision=3):  # (put back after the block)
        assert [share_of(10**16, value) for value in values] == expected
    assert expected[0] == expected[4] == 1234567890123456  # as the Python float's
    assert share_of(45, np.float16(0.7)) == 32


def test_coefficient_rank_is_bounded_by_the_combined_outputs_when_they_are_fewer():
    """The rank is at most ``min(C_out - m, m)``: with 8 outputs and 6 basis filters the
    product of the factors has only two rows, so rank 3 is refused (1..2), not stored as
    factors larger than the matrix they make."""
    with pytest.raises(ValueError, match=r"coefficient_rank must be an int in 1\.\.2"):
        BasisConv2d(4, 8, 3, 6, coefficient_rank=3)
    assert BasisConv2d(4, 8, 3, 6, coefficient_rank=2).coefficients_left.shape == (2, 2)


def test_bad_geometry_is_refused_when_the_layer_is_made():
    """As nn.Conv2d takes them, checked at construction, not at the first forward."""
    for kwargs, message in (({"padding": "full"}, "use 'same', 'valid' or ints"),
                            ({"padding": -1}, r"padding=-1: use an int >= 0"),
                            ({"stride": 0}, r"stride=0: use an int >= 1"),
                            ({"dilation": (1, 0)}, r"dilation=\(1, 0\)"),
                            ({"stride": 2, "padding": "same"}, "padding='same' needs stride 1")):
        with pytest.raises(ValueError, match=message):
            BasisConv2d(4, 8, 3, 2, **kwargs)
    layer = BasisConv2d(4, 8, (3, 1), 2, stride=(2, 1), padding="valid", dilation=2)
    assert (layer.kernel_size, layer.stride, layer.padding, layer.dilation) == \
        ((3, 1), (2, 1), "valid", (2, 2))


def test_yes_no_options_must_be_booleans():
    """A string is truthy: bias="false" made a bias and fuse_norm="no" fused the norm."""
    for kwargs in ({"bias": "false"}, {"fuse_norm": "no"}, {"fuse_norm": None}):
        name, value = next(iter(kwargs.items()))
        with pytest.raises(ValueError, match=f"{name} must be True or False, got {value!r}"):
            BasisConv2d(4, 8, 3, 2, **kwargs)
    assert BasisConv2d(4, 8, 3, 2, bias=0).bias is None
    assert BasisConv2d(4, 8, 3, 2, fuse_norm=True).fuse_norm is True


def test_grouped_conv_and_non_zero_padding_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="grouped conv .*groups=4"):
        BasisConv2d.from_conv(nn.Conv2d(8, 8, 3, groups=4), 2)
    # the basis forward pads with zeros: a reflect-padded conv would silently change
    with pytest.raises(ValueError, match="padding_mode='reflect'.*zero padding only"):
        BasisConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), 2)


def test_a_frozen_bias_stays_frozen_and_a_trained_one_trains():
    """from_conv carries ``requires_grad`` of the weight and of the bias separately (a
    recipe that freezes only biases keeps them frozen)."""
    conv = make_conv(4, 8, 3, 1, 1, 1, True)
    conv.bias.requires_grad_(False)
    layer = BasisConv2d.from_conv(conv, 4)
    assert not layer.bias.requires_grad and layer.basis_weight.requires_grad
    conv.requires_grad_(False)
    conv.bias.requires_grad_(True)
    layer = BasisConv2d.from_conv(conv, 4)
    assert layer.bias.requires_grad and not layer.basis_weight.requires_grad


def test_saves_compute_guard():
    assert not saves_compute((3, 64, 3), 32)        # stem: K = 27 < m
    assert not saves_compute((64, 128, 1), 64)      # 1x1 shortcut at m = K
    assert saves_compute((64, 64, 3), 0.25)
    assert saves_compute((64, 128, 1), 32)
    # the minimal count (split): saves exactly when m < min(C_out, K)
    assert saves_compute((3, 64, 3), 26, combine="split")
    assert not saves_compute((3, 64, 3), 27, combine="split")
    # the stacked forward does C_out*m for the combination: stricter
    assert not saves_compute((3, 64, 3), 26)
    assert saves_compute(nn.Conv2d(3, 64, 3), 18)
    # found by fuzzing: an unknown form was counted as the split one, silently
    with pytest.raises(ConfigError, match=r"combine must be one of .*got 'stacke'"):
        saves_compute((64, 64, 3), 0.25, combine="stacke")


@pytest.mark.parametrize("std", [True, "1", float("nan"), -1.0])
def test_reset_parameters_refuses_a_std_that_is_no_number(std):
    """Found by fuzzing: ``filter_std=True`` drew the filters at a std of 1, silently, and
    ``"1"`` failed in ``math.isfinite`` with a message naming no argument."""
    layer = BasisConv2d(3, 8, 3, 4)
    with pytest.raises(ConfigError, match=r"filter_std must be a finite number >= 0"):
        layer.reset_parameters(filter_std=std)
    layer.reset_parameters(filter_std=np.float32(0.1))  # numbers, numpy's too, as before
    layer.reset_parameters(filter_std=torch.tensor(0.1))


def test_low_rank_coefficients_fit_and_count():
    conv = make_conv(8, 16, 3, 1, 1, 1, False)
    full = BasisConv2d.from_conv(conv, 6)
    errors = [BasisConv2d.from_conv(conv, 6, coefficient_rank=r).reconstruction_error for r in (1, 3, 6)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] == pytest.approx(full.reconstruction_error, abs=1e-10)  # rank 6 is no constraint
    layer = BasisConv2d.from_conv(conv, 6, coefficient_rank=3)
    assert sum(p.numel() for p in layer.parameters()) == 6 * 72 + 3 * (10 + 6)
    torch.testing.assert_close(layer.coefficient_matrix(),
                               layer.coefficients_left @ layer.coefficients_right)


def test_a_rank_above_the_fits_own_rank_is_padded_and_exact():
    """One input channel, 3x3: the basis filters span at most K = 9 dimensions, so a
    rank-12 fit has 9 directions; its factors are padded to the stored shape and the layer
    is as exact as the full matrix."""
    conv = make_conv(1, 32, 3, 1, 1, 1, False)
    layer = BasisConv2d.from_conv(conv, 16, coefficient_rank=12)
    assert layer.coefficients_left.shape == (16, 12) and layer.reconstruction_error < 1e-12
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-10, atol=1e-12)


def test_an_all_zero_conv_converts_with_zero_error():
    """A zero-initialized conv (some recipes zero the last conv of a block): its relative
    errors are 0, not 0/0, and ``max_error`` takes one filter."""
    conv = make_conv(4, 8, 3, 1, 1, 1, False)
    nn.init.zeros_(conv.weight)
    assert BasisConv2d.from_conv(conv, 2).reconstruction_error == 0.0
    layer = BasisConv2d.from_conv(conv, max_error=0.1)
    assert layer.num_basis == 1 and layer.reconstruction_error == 0.0


def test_pruned_coefficients_and_l1():
    conv = make_conv(8, 16, 3, 1, 1, 1, True)
    layer = BasisConv2d.from_conv(conv, 6)
    dense_l1 = coefficient_l1(layer)
    layer.prune_coefficients(2)
    matrix = layer.coefficient_matrix()
    assert ((matrix != 0).sum(1) == 2).all()
    assert coefficient_l1(layer).item() < dense_l1.item()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer.to_conv()(x))
    # a pruned checkpoint loads into a fresh layer of the same shape
    fresh = BasisConv2d(8, 16, 3, 6, padding=1, bias=True, dtype=torch.float64)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), layer(x))
    with pytest.raises(ValueError, match=r"keep_per_row must be an int in 1\.\.6"):
        layer.prune_coefficients(7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_pruned_checkpoint_loads_into_a_fresh_layer_of_another_dtype(dtype):
    # Found by audit: the mask a fresh layer made for the checkpoint took the checkpoint's
    # float32, so a half or bfloat16 model failed in its first forward
    trained = BasisConv2d(6, 16, 3, 6, padding=1)
    trained.prune_coefficients(2)
    fresh = BasisConv2d(6, 16, 3, 6, padding=1).to(dtype)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.coefficient_mask.dtype == dtype
    x = torch.randn(2, 6, 8, 8)
    torch.testing.assert_close(fresh(x.to(dtype)).float(), trained(x), rtol=0.05, atol=0.05)


def test_a_layer_made_on_the_meta_device_is_whole_after_reset_parameters():
    # Found by audit: deferred init (meta, to_empty, reset_parameters, as for FSDP) left
    # the channel order as uninitialized memory, so the forward indexed out of range
    with torch.device("meta"):
        layer = BasisConv2d(3, 16, 3, 4, padding=1, combine="split")
    layer.to_empty(device="cpu")
    layer.output_index.fill_(-7)  # what the memory might have held
    layer.reset_parameters()
    assert layer.output_index.tolist() == list(range(16))
    assert layer(torch.randn(2, 3, 8, 8)).shape == (2, 16, 8, 8)


def test_a_layer_unset_like_a_meta_conv_is_the_one_to_empty_gave():
    """``unset_like`` of a conv on the meta device (the config checks' dry conversion)
    returns the layer as built there, without ``to_empty`` (meta to meta: a fifth of that
    conversion's time): its tensors are those ``to_empty`` gave, name by name, in device,
    shape, dtype, layout and ``requires_grad``."""
    with torch.device("meta"):
        conv = nn.Conv2d(8, 16, 3, padding=1).to(memory_format=torch.channels_last)

    def tensors(module):
        return [(name, t.device, t.shape, t.dtype, t.stride(), t.requires_grad)
                for name, t in [*module.named_parameters(), *module.named_buffers()]]
    for options in ({}, {"coefficient_rank": 2}):
        layer = BasisConv2d.unset_like(conv, 4, **options)
        given_memory = BasisConv2d.shaped_like(conv, 4, device="meta", **options)
        assert tensors(layer) == tensors(given_memory.to_empty(device="meta"))
        assert layer.basis_weight.is_meta and layer.output_index.is_meta


def test_bias_is_on_by_default_as_for_nn_conv2d():
    # Found by audit: the docstring said "as nn.Conv2d", but the default was no bias
    assert BasisConv2d(16, 32, 3, 0.25, padding=1).bias is not None
    assert BasisConv2d(16, 32, 3, 0.25, padding=1, bias=False).bias is None


def test_pruning_keeps_the_largest_magnitude_coefficients_of_each_row():
    """The mask keeps, per combined output, the ``keep_per_row`` entries of largest
    magnitude (signs do not matter), not any ``keep_per_row`` of them."""
    layer = BasisConv2d(2, 6, 1, 3, dtype=torch.float64)
    with torch.no_grad():
        layer.coefficients.copy_(torch.tensor([[0.1, -3.0, 2.0],
                                               [-5.0, 0.2, 0.3],
                                               [1.0, 4.0, -6.0]], dtype=torch.float64))
    layer.prune_coefficients(2)
    assert layer.coefficient_mask.tolist() == [[0, 1, 1], [1, 0, 1], [0, 1, 1]]
    layer.prune_coefficients(1)
    assert layer.coefficient_mask.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]


def test_coefficient_l1_counts_a_shared_matrix_once():
    """Layers sharing one coefficient tensor (``share_coefficients``) add its penalty
    once, as the parameter is one; two layers with their own matrices add both."""
    first = BasisConv2d(4, 8, 3, 3, dtype=torch.float64)
    second = BasisConv2d(4, 8, 3, 3, dtype=torch.float64)
    one = coefficient_l1(first)
    second.coefficients = first.coefficients
    assert coefficient_l1(nn.Sequential(first, second)).item() == pytest.approx(one.item())
    third = BasisConv2d(4, 8, 3, 3, dtype=torch.float64)
    both = coefficient_l1(nn.Sequential(first, third)).item()
    assert both == pytest.approx(one.item() + coefficient_l1(third).item())


def test_coefficient_l1_is_the_sum_of_the_absolute_coefficients():
    """The penalty's value, by hand: signs do not cancel, and a pruned coefficient adds
    nothing (the tests before compared only sums of layers; found by a mutation test,
    a signed sum passed them)."""
    layer = BasisConv2d(4, 5, 3, 2, dtype=torch.float64)
    with torch.no_grad():
        layer.coefficients.copy_(torch.tensor([[1.0, -2.0], [-3.0, 0.5], [0.25, -4.0]]))
    assert coefficient_l1(layer).item() == 10.75
    layer.prune_coefficients(1)
    assert coefficient_l1(layer).item() == 2.0 + 3.0 + 4.0


@pytest.mark.parametrize("rank", [1, 4])
@pytest.mark.parametrize("max_error", [0.3, 0.5, 0.7])
def test_max_error_with_a_coefficient_rank_is_met_by_the_smallest_basis(rank, max_error):
    """Found in review: the basis size was chosen by the full coefficients' error, then the
    coefficients truncated to the rank, so the layer ended above max_error (0.337 at 0.3)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 32, 3)
    layer = BasisConv2d.from_conv(conv, max_error=max_error, coefficient_rank=rank)
    assert layer.reconstruction_error <= max_error
    smaller = BasisConv2d.from_conv(conv, layer.num_basis - 1, coefficient_rank=rank)
    assert smaller.reconstruction_error > max_error


def test_max_error_a_coefficient_rank_cannot_meet_is_one_clear_error():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 32, 3)
    with pytest.raises(ConfigError, match=r"max_error=0.01 cannot be met with coefficient_rank=8"
                                          r": .* 0.366 at best"):
        BasisConv2d.from_conv(conv, max_error=0.01, coefficient_rank=8)
    with pytest.raises(ConfigError, match="coefficient_rank=17 fits no basis size"):
        BasisConv2d.from_conv(conv, max_error=0.5, coefficient_rank=17)
    for rank in (2.5, "2", 0, True):  # one line, not a TypeError from the search
        with pytest.raises(ConfigError, match=f"coefficient_rank must be None or an int >= 1, "
                                              f"got {rank!r}"):
            BasisConv2d.from_conv(conv, max_error=0.5, coefficient_rank=rank)


def test_an_error_bound_of_one_or_below_zero_is_refused():
    """``max_error`` is a relative error in ``[0, 1)``: 1 is met by no filters at all
    (every weight is within 1 of zero), so it was taken as a one-filter layer, silently
    (found by a mutation test: only 1.5 was tried)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3)
    for bad in (1.0, -0.01):
        with pytest.raises(ConfigError, match=rf"^max_error must be in \[0, 1\), got {bad}$"):
            BasisConv2d.from_conv(conv, max_error=bad)
    assert BasisConv2d.from_conv(conv, max_error=0.0).num_basis == 8


def test_an_error_bound_with_rank_one_coefficients_may_take_every_filter():
    """Rank 1 is allowed at full rank too (no combined outputs): a bound that only every
    filter meets gives the full layer, not "cannot be met" (found by a mutation test)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 32, 3)  # 32 independent filters of 72 entries
    layer = BasisConv2d.from_conv(conv, max_error=1e-9, coefficient_rank=1)
    assert layer.num_basis == 32 and layer.reconstruction_error < 1e-6


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_torch_jit_script_of_a_basis_layer_is_one_error_naming_what_works():
    """Found in the export review: scripting said "Unknown type name 'nn.BatchNorm2d'",
    and a second try "Can't redefine method: __basis_channels_getter"."""
    model = nn.Sequential(nn.ReLU(), BasisConv2d(8, 16, 3, 4, padding=1))
    for _ in range(2):
        with pytest.raises(ConfigError, match="script cannot compile a BasisConv2d; use "
                                              "torch.export or torch.jit.trace.*to_dense"):
            torch.jit.script(model)


@pytest.mark.parametrize("combine", ["stacked", "split", "fused", "auto"])
def test_an_nchw_input_gives_an_output_in_the_layout_a_conv_gives(combine):
    """A converted layer is a drop-in replacement: for an NCHW input every form gives a
    contiguous output, as nn.Conv2d does, so a model that flattens a conv's output with
    ``.view(B, -1)`` (a classifier head, an attention block) keeps working. The fused op
    (its kernel, and the stacked form inside it wherever the kernel cannot run: float64
    here) writes channels_last, which failed there ("view size is not compatible")."""
    conv = make_conv(8, 16, 3, 1, 1, 1, True)
    layer = BasisConv2d.from_conv(conv, 4, combine=combine)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fused: no CUDA here, the stacked form, said once
        out = layer(x)
    assert conv(x).is_contiguous() and out.is_contiguous()
    torch.testing.assert_close(out.view(2, -1), layer.to_conv()(x).view(2, -1))


@pytest.mark.parametrize("options, message", [
    ({"groups": 2}, r"BasisConv2d is a grouped conv \(groups=2\).*use an nn\.Conv2d for it"),
    ({"padding_mode": "reflect"}, r"padding_mode='reflect'.*use an nn\.Conv2d for it")])
def test_a_layer_built_with_conv_options_it_lacks_says_so(options, message):
    """Found in review: ``BasisConv2d(..., groups=2)`` or ``padding_mode='reflect'``, as one
    builds an ``nn.Conv2d``, failed with Python's "unexpected keyword argument"; the
    conv's defaults are taken, anything else is the conversion's own refusal."""
    with pytest.raises(ConfigError, match=message):
        BasisConv2d(8, 16, 3, 4, padding=1, **options)
    layer = BasisConv2d(8, 16, 3, 4, padding=1, groups=1, padding_mode="zeros")
    assert layer(torch.randn(1, 8, 5, 5)).shape == (1, 16, 5, 5)


def test_a_non_zero_padding_mode_is_refused_with_the_fix():
    """Like the grouped-conv refusal, the padding-mode one says what to do (leave the
    layer dense), not only what is unsupported."""
    with pytest.raises(ValueError, match="padding_mode='circular'.*leave this layer dense"):
        BasisConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"), 2)


def decaying_conv(c_in=16, c_out=32, seed=0, decay=6.0):
    """A conv whose weight's spectrum decays as trained ones do."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=True)
    w = conv.weight.detach().reshape(c_out, -1)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    s = s * torch.exp(-torch.arange(s.numel()) / decay)
    with torch.no_grad():
        conv.weight.copy_((u * s @ vh).reshape_as(conv.weight))
    return conv


def eckart_young(conv, m):
    s = torch.linalg.svdvals(conv.weight.detach().reshape(conv.out_channels, -1).double())
    return float((s[m:].pow(2).sum() / s.pow(2).sum()).sqrt())


@pytest.mark.parametrize("shape, m", [((16, 32), 8), ((16, 32), 16), ((64, 64), 16), ((3, 16), 4)])
def test_the_default_fit_is_well_above_the_best_rank_m_error(shape, m):
    """Found in review: the default conversion (the conv's own filters as the basis) is not
    the smallest weight error a basis layer of size m can have (the docs said least
    squares minimized it); the truncated SVD's is (Eckart-Young)."""
    conv = decaying_conv(*shape)
    layer = BasisConv2d.from_conv(conv, m)
    assert layer.reconstruction_error > 1.05 * eckart_young(conv, m)


@pytest.mark.parametrize("shape, m", [((16, 32), 8), ((16, 32), 16), ((64, 64), 16), ((3, 16), 4)])
def test_an_svd_fit_reaches_the_best_rank_m_weight_and_computes_it(shape, m):
    """``fit="svd"``: a basis layer computes ``P [I; A] B``, any rank-m weight, so it can
    be the best one."""
    conv = decaying_conv(*shape)
    layer = BasisConv2d.from_conv(conv, m, fit="svd")
    assert layer.reconstruction_error == pytest.approx(eckart_young(conv, m), rel=1e-5)
    # the layer computes the conv of the rank-m weight, outputs in the conv's order
    w = conv.weight.detach().reshape(conv.out_channels, -1).double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    wm = ((u[:, :m] * s[:m]) @ vh[:m]).float().reshape_as(conv.weight)
    x = torch.randn(2, shape[0], 8, 8, generator=torch.Generator().manual_seed(1))
    for combine in ("stacked", "split"):
        out = BasisConv2d.from_conv(conv, m, fit="svd", combine=combine)(x)
        torch.testing.assert_close(out, torch.nn.functional.conv2d(x, wm, conv.bias, padding=1),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("c_in, c_out, m", [(8, 16, 16), (1, 16, 9), (1, 16, 12)])
def test_an_svd_fit_is_exact_where_m_reaches_the_weights_rank(c_in, c_out, m):
    """m = C_out, and m >= K = C_in*k*k (a 1->16 conv has rank <= 9)."""
    conv = decaying_conv(c_in, c_out)
    layer = BasisConv2d.from_conv(conv, m, fit="svd")
    x = torch.randn(2, c_in, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    assert layer.reconstruction_error < 1e-6


@pytest.mark.parametrize("seed, decay, m, rank", [(0, 6.0, 12, 4), (3, 6.0, 24, 2),
                                                  (3, 6.0, 16, 4), (3, 20.0, 24, 1)])
def test_an_svd_fit_with_low_rank_coefficients_is_no_worse_than_the_default(seed, decay, m,
                                                                            rank):
    """Found in review: with rank-limited coefficients no layer is the best rank-m weight,
    and the SVD's basis alone was the farther start for about a third of convs (up to 12 %
    more weight error); the closer of the two fits is kept, and the layer computes what it
    reports."""
    conv = decaying_conv(16, 32, seed=seed, decay=decay)
    pivots = BasisConv2d.from_conv(conv, m, coefficient_rank=rank)
    svd = BasisConv2d.from_conv(conv, m, coefficient_rank=rank, fit="svd")
    assert svd.reconstruction_error <= pivots.reconstruction_error * (1 + 1e-6)
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = torch.nn.functional.conv2d(x, svd.dense_weight(), conv.bias, padding=1)
    torch.testing.assert_close(svd(x), expected, rtol=1e-4, atol=1e-5)


def test_an_error_bound_with_svd_is_the_singular_value_energy():
    conv = decaying_conv(16, 32)
    layer = BasisConv2d.from_conv(conv, max_error=0.1, fit="svd")
    m = layer.num_basis
    assert eckart_young(conv, m) <= 0.1 < eckart_young(conv, m - 1)
    assert layer.num_basis <= BasisConv2d.from_conv(conv, max_error=0.1).num_basis
    with pytest.raises(ConfigError, match="fit"):
        BasisConv2d.from_conv(conv, 8, fit="qr")


@pytest.mark.parametrize("fit", ["svd", "pivots"])
def test_an_error_bound_met_exactly_is_met_whatever_the_rounding(fit):
    """Found in a mutation round: rows (4, 4) and (3, -3) leave exactly 0.6 of the weight
    with one filter, but the singular values' energy reads it as 0.6000000000000001; the
    bound ``max_error=0.6`` is met by one filter, not by both."""
    conv = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[4.0, 4.0], [3.0, -3.0]]).reshape(2, 2, 1, 1))
    layer = BasisConv2d.from_conv(conv, max_error=0.6, fit=fit)
    assert layer.num_basis == 1
    assert layer.reconstruction_error == pytest.approx(0.6)


def test_apply_basis_passes_the_fit_to_each_layer_and_fresh_layers_ignore_it():
    from basisconv.surgery import apply_basis

    model = nn.Sequential(decaying_conv(16, 32), nn.ReLU(), decaying_conv(32, 32, seed=1))
    fitted = apply_basis(model, "all", 0.25, convert=True, fit="svd")
    for name in ("0", "2"):
        assert fitted.get_submodule(name).reconstruction_error == pytest.approx(
            eckart_young(model.get_submodule(name), 8), rel=1e-5)
    apply_basis(model, "all", 0.25, convert=False, fit="svd")  # no error: nothing to fit


def _two_convs(tied: bool) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(6, 12, 3, bias=False), nn.Conv2d(12, 12, 3),
                          nn.Conv2d(12, 12, 3, bias=False))
    if tied:  # weight tying: one weight, decayed once, in two places
        model[2].weight = model[1].weight
    return model


@pytest.mark.parametrize("options, tied", [
    ({}, False), ({"coefficient_rank": 2}, False), ({"share_coefficients": True}, False),
    ({}, True)], ids=["plain", "low-rank", "shared", "tied"])
@pytest.mark.parametrize("num_basis", [4, 9], ids=["gram-form", "product-form"])
def test_frobenius_decay_makes_factor_decay_the_computed_weights_decay(options, tied, num_basis):
    """SGD's decay of every factor (``wd * p``) plus the correction's gradient is the
    gradient of ``wd / 2 * ||W||^2`` over the computed weights, each counted once, as the
    dense model's decay is over its weights; plain decay of the factors is not. In both
    forms of ``||A B||^2`` (4 of 12 filters: the Gram matrices'; 9: the product's)."""
    from basisconv.layers import basis_layers
    from basisconv.penalties import frobenius_decay_correction
    from basisconv.surgery import apply_basis

    model = apply_basis(_two_convs(tied), "all", num_basis, only_where_saves=False, **options)
    for layer in basis_layers(model).values():  # coefficients of a conversion's scale
        with torch.no_grad():
            for p in layer.coefficient_parameters():
                p.normal_()
    factors = list(dict.fromkeys(p for layer in basis_layers(model).values()
                                 for p in [layer.basis_weight, *layer.coefficient_parameters()]))
    weights = {id(layer.basis_weight): layer for layer in basis_layers(model).values()}
    assert len(weights) == (2 if tied else 3)
    wd = 0.1
    target = torch.autograd.grad(
        wd / 2 * sum(layer.dense_weight().square().sum() for layer in weights.values()), factors)
    correction = torch.autograd.grad(wd / 2 * frobenius_decay_correction(model), factors,
                                     allow_unused=True)
    for p, want, extra in zip(factors, target, correction):
        got = wd * p + (0 if extra is None else extra)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not all(torch.allclose(wd * p, want) for p, want in zip(factors, target))


@pytest.mark.parametrize("num_basis, forward_flops", [
    (64, 2 * 64 * 64 * (192 + 256 * 9)),    # 1/4: the Gram form, 2.8x fewer than the product
    (192, 2 * 64 * 192 * 256 * 9)],         # 3/4: the product, 3x fewer than the Gram form
    ids=["quarter-gram", "three-quarters-product"])
def test_frobenius_decay_computes_the_cheaper_of_two_equal_forms(num_basis, forward_flops):
    """``||A B||^2`` as ``<A^T A, B B^T>`` where that costs fewer multiply-adds than the
    product ``A B`` (a 256-channel 3x3 layer at 1/4: 1/2.8 of the product's), counted by
    torch's own FLOP counter, forward and backward; the same value either way."""
    from torch.utils.flop_counter import FlopCounterMode

    from basisconv.layers import basis_layers
    from basisconv.penalties import frobenius_decay_correction
    from basisconv.surgery import apply_basis

    torch.manual_seed(0)
    model = apply_basis(nn.Sequential(nn.Conv2d(256, 256, 3)), "all", num_basis,
                        only_where_saves=False)
    layer = basis_layers(model)["0"]
    with torch.no_grad():
        layer.coefficients.normal_()
    with FlopCounterMode(display=False) as forward:
        correction = frobenius_decay_correction(model)
    with FlopCounterMode(display=False) as backward:
        correction.backward()
    assert forward.get_total_flops() == forward_flops
    assert backward.get_total_flops() == 2 * forward_flops
    basis = layer.basis_weight.detach().flatten(1).double()
    want = (layer.coefficients.detach().double() @ basis).square().sum()
    want -= layer.coefficients.detach().double().square().sum()
    torch.testing.assert_close(correction.double(), want, rtol=1e-5, atol=0)


def test_frobenius_decay_on_a_model_without_basis_layers_is_one_clear_error():
    from basisconv.penalties import frobenius_decay_correction
    from basisconv.penalties import basis_penalty

    with pytest.raises(ConfigError, match="no BasisConv2d layers"):
        frobenius_decay_correction(nn.Sequential(nn.Conv2d(3, 4, 3)))
    # a probe's dense reference: nothing to add
    assert basis_penalty(nn.Sequential(nn.Conv2d(3, 4, 3)), 5e-4, frobenius_decay=True) is None
    layered = _two_convs(False)
    from basisconv.surgery import apply_basis
    apply_basis(layered, "all", 4, only_where_saves=False, inplace=True)
    assert basis_penalty(layered, 5e-4) is None and basis_penalty(layered, 0.0,
                                                                   frobenius_decay=True) is None
    both = basis_penalty(layered, 5e-4, coefficient_l1=1e-3, frobenius_decay=True)()
    from basisconv.penalties import coefficient_l1, frobenius_decay_correction
    torch.testing.assert_close(both, 1e-3 * coefficient_l1(layered)
                               + 5e-4 / 2 * frobenius_decay_correction(layered))


@pytest.mark.parametrize("coefficient_rank", [None, 1], ids=["full", "low-rank"])
@pytest.mark.parametrize("combine", ["stacked", "split", "fused", "auto"])
def test_every_form_gives_the_coefficients_a_gradient_when_the_basis_is_every_filter(
        combine, coefficient_rank):
    """Found in the numerics review: at ``num_basis == out_channels`` (``basis.size=1.0``,
    a full-rank conversion) the split form left its (empty) coefficients out of the graph,
    so their gradient was None where every other form gives one, and DDP (which expects a
    gradient for every parameter) failed the second step with "Expected to have finished
    reduction in the prior iteration"."""
    torch.manual_seed(0)
    layer = BasisConv2d(3, 4, 3, 4, padding=1, combine=combine,
                        coefficient_rank=coefficient_rank)
    layer.output_index.copy_(torch.randperm(4))
    x = torch.randn(2, 3, 5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fused: no CUDA here, the stacked form, said once
        layer(x).square().sum().backward()
        for memory_format in (torch.contiguous_format, torch.channels_last):
            # the output, its dtype and layout as before (a conv of the dense weight's)
            got = layer(x.contiguous(memory_format=memory_format))
            want = nn.functional.conv2d(x.contiguous(memory_format=memory_format),
                                        layer.dense_weight(), layer.bias, padding=1)
            torch.testing.assert_close(got, want)
            assert got.stride() == want.stride()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert p.grad.shape == p.shape and bool((p.grad.abs() < float("inf")).all())


def test_a_runs_basis_penalty_is_half_the_weight_decay_times_the_correction():
    """What a run adds to its loss (``penalties.basis_penalty``) with ``basis.frobenius_decay``
    is ``weight_decay / 2`` times the correction, the factor the test above proves right,
    plus the coefficients' L1 term; without either, nothing (found by a mutation test: the
    run's penalty at twice the correction, a decay of the computed weights at another
    strength than the dense model's, failed no test)."""
    from basisconv.penalties import frobenius_decay_correction
    from basisconv.penalties import basis_penalty
    from basisconv.surgery import apply_basis

    model = apply_basis(_two_convs(False), "all", 4, only_where_saves=False)
    correction = frobenius_decay_correction(model).item()
    penalty = basis_penalty(model, 0.1, frobenius_decay=True)
    assert penalty().item() == pytest.approx(0.1 / 2 * correction)
    both = basis_penalty(model, 0.1, coefficient_l1=0.01, frobenius_decay=True)
    assert both().item() == pytest.approx(0.01 * coefficient_l1(model).item() + 0.05 * correction)
    assert basis_penalty(model, 0.1) is None


def test_a_forward_that_reads_a_basis_layers_weight_is_told_what_to_read_instead():
    """Found in review: a forward that reads a converted conv's weight (weight
    standardization, F.conv2d(x, conv.weight)) failed with torch's bare "no attribute
    'weight'". The error says what the layer is, where its dense weight is and how to keep
    the conv dense; it is still an AttributeError, so code that asks (hasattr, getattr
    with a default: init loops, torch's utilities) takes the layer as weightless."""
    import torch.nn.functional as F

    from basisconv.surgery import apply_basis

    class Standardized(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3)

        def forward(self, x):
            weight = self.conv.weight
            weight = (weight - weight.mean((1, 2, 3), keepdim=True)) / weight.std((1, 2, 3),
                                                                                keepdim=True)
            return F.conv2d(x, weight)

    small = apply_basis(Standardized(), "conv", 4)
    with pytest.raises(AttributeError, match=r"^'BasisConv2d' object has no attribute 'weight': "
                                             r"it is a basis convolution .*\.dense_weight\(\).*"
                                             r"leave this conv out of apply_basis's layers"):
        small(torch.randn(1, 3, 8, 8))
    assert not hasattr(small.conv, "weight") and getattr(small.conv, "weight", None) is None
    assert small.conv.bias is not None  # (other attributes as before)
    with pytest.raises(AttributeError, match=r"^'BasisConv2d' object has no attribute 'wieght'$"):
        small.conv.wieght


def test_a_compiled_split_layer_in_nchw_trains_as_in_eager(repo):
    """Found in review (a user's model, not the configs, which refuse this combination):
    torch 2.13's Inductor miscompiles the split form's channel reorder along dim 1 of an
    NCHW tensor, and the first compiled backward of ResNet-20 (or ResNet-8) in the split
    form aborted the process (heap corruption, no error line). In a subprocess, as a crash
    would take pytest with it; ResNet-8 x0.25, which aborted too (signal 6), compiles in
    less time than ResNet-20 x0.5 (42 against 57 s on one thread)."""
    script = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "import torch, torch.nn.functional as F\n"
        "from basisconv.models import build_model\n"
        "from basisconv.surgery import apply_basis\n"
        "torch.manual_seed(0)\n"
        "model = apply_basis(build_model('resnet8', width=0.25), 'all', 0.5, combine='split')\n"
        "x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))\n"
        "F.cross_entropy(model(x), y).backward()\n"
        "eager = [p.grad.clone() for p in model.parameters()]\n"
        "model.zero_grad()\n"
        "F.cross_entropy(torch.compile(model)(x), y).backward()\n"
        "for p, g in zip(model.parameters(), eager):\n"
        "    torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)\n")
    env = dict(os.environ, PYTHONPATH=str(repo / "src"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
