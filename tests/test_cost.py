"""The cost model: hand formulas, agreement with FlopCounterMode, golden values, and the
derived reference figures of ../shared/paper.md.

Regenerate the golden file after an intended change of the cost model with
``python tests/test_cost.py --regenerate`` and review the diff.
"""

import contextlib
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from basisconv.cost import count_parameters, measure_flops, model_cost
from basisconv.cost_formulas import (basis_conv2d_cost, conv2d_cost, layer_cost, linear_cost,
                                     saves_compute)
from basisconv.errors import ConfigError
from basisconv.conv_norm import conv_norm_act
from basisconv.layers import BasisConv2d, basis_layers
from basisconv.models import build_model
from basisconv.surgery import CoefficientSkipSchedule, apply_basis

GOLDEN = Path(__file__).parent / "golden" / "cost.json"
# (model, layers, num_basis): dense; the 3x3 convs of the residual blocks; every conv.
GOLDEN_CASES = [(model, layers, fraction)
                for model in ("resnet18", "resnet20")
                for layers, fraction in [(None, None)] + [(layers, f) for layers in ("layer*.conv*", "all")
                                                          for f in (0.125, 0.25, 0.5)]]


def converted(name, layers, num_basis, on_meta=False, **options):
    """``build_model(name)`` with ``layers`` made basis layers (fresh ones); ``on_meta``: on
    the meta device, for the counts, which read the shapes only (making ResNet-18's weights
    and checking them took most of the golden test's time)."""
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        model = build_model(name)
    if layers is None:
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "all" converts the stem although it saves nothing
        return apply_basis(model, layers, num_basis, convert=False, inplace=True, **options)


def case_key(name, layers, fraction):
    return f"{name} dense" if layers is None else f"{name} {layers} {fraction}"


def golden_values():
    return {case_key(*case): model_cost(converted(*case, on_meta=True)).totals()
            for case in GOLDEN_CASES}


def test_layer_formulas_by_hand():
    dense = conv2d_cost(64, 64, 3, 32)
    assert dense.forward_flops == 2 * 32 * 32 * 64 * 64 * 9
    assert dense.grad_input_flops == dense.grad_weight_flops == dense.forward_flops
    assert dense.params == 64 * 64 * 9
    stem = conv2d_cost(3, 64, 3, 32, input_grad=False)
    assert stem.grad_input_flops == 0 and stem.grad_weight_flops == stem.forward_flops
    # the minimal count (from the definition): H'W' * (m*C_in*k^2 + m*(C_out - m)) multiply-adds
    split = basis_conv2d_cost(64, 64, 3, 16, 32, combine="split")
    assert split.forward_macs == 32 * 32 * (16 * 64 * 9 + 16 * 48)
    assert split.params == 16 * 64 * 9 + 16 * 48
    stacked = basis_conv2d_cost(64, 64, 3, 16, 32)
    assert stacked.forward_macs == 32 * 32 * (16 * 64 * 9 + 64 * 16)
    assert stacked.grad_weight_flops == stacked.forward_flops
    frozen = basis_conv2d_cost(64, 64, 3, 16, 32, coefficient_grad=False)
    assert frozen.grad_weight_flops == 2 * 32 * 32 * 16 * 64 * 9
    low_rank = basis_conv2d_cost(64, 64, 3, 16, 32, coefficient_rank=4)
    assert low_rank.params == 16 * 64 * 9 + 4 * (48 + 16)
    assert low_rank.forward_flops == stacked.forward_flops + 2 * 48 * 4 * 16
    assert linear_cost(512, 10, batch=4).forward_flops == 2 * 4 * 512 * 10


def test_the_fused_and_auto_forms_are_counted_as_the_stacked_one():
    """``combine="fused"`` computes the stacked form's result and ``"auto"`` runs the basis
    algorithm where it wins as the stacked form: both are counted as ``stacked`` (the
    ``C_out*m`` combination), not as the minimal ``split`` count, in the cost model and in
    the saves-compute rule that ``only_where_saves`` and the candidate tables apply."""
    from basisconv.cost_formulas import saves_compute

    stacked = basis_conv2d_cost(64, 64, 3, 16, 32)
    split = basis_conv2d_cost(64, 64, 3, 16, 32, combine="split")
    assert split.forward_flops < stacked.forward_flops
    for combine in ("fused", "auto"):
        assert basis_conv2d_cost(64, 64, 3, 16, 32, combine=combine) == stacked, combine
    # stacked saves while m*(K + C_out) < C_out*K: for a 64->64 3x3 conv up to m = 57;
    # at m = 58 only split's count still saves
    assert saves_compute((64, 64, 3), 57, "auto")
    assert saves_compute((64, 64, 3), 58, "split")
    for combine in ("stacked", "fused", "auto"):
        assert not saves_compute((64, 64, 3), 58, combine), combine


@pytest.mark.filterwarnings("ignore:fuse_norm=True")
@pytest.mark.parametrize("num_basis", [0.5, 0.75, 0.875, 0.9375])
def test_only_where_saves_with_a_fused_norm_counts_its_moments(num_basis):
    """With ``fuse_norm`` a layer's training forward also computes the m x m moments of
    its basis maps: the rule that ``only_where_saves`` applies counts them, so every
    layer it converts does less forward work by the cost model than the dense conv (at
    7/8 of a 16->16 3x3 conv the moments undid the saving: converted, yet costlier)."""
    from basisconv.cost_formulas import saves_compute

    assert saves_compute((16, 16, 3), 14)
    assert not saves_compute((16, 16, 3), 14, fused_norm=True)
    model = build_model("resnet20")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the layers it leaves dense
        small_model = apply_basis(model, "all", num_basis, convert=False, fuse_norm=True,
                                  only_where_saves=True)
    shape = (4, 3, 32, 32)
    dense, basis = model_cost(model, shape).by_layer(), model_cost(small_model, shape).by_layer()
    converted = list(basis_layers(small_model))
    assert converted or num_basis > 0.8
    for name in converted:
        assert basis[name].forward_flops < dense[name].forward_flops, name


@pytest.mark.parametrize("layers, num_basis", [
    (None, None),                                   # dense
    (["layer1.0.conv1", "layer2.0.shortcut.0", "layer4.1.conv2"], 0.25),  # some
    ("all", 0.5),                                   # all, stem included
])
@pytest.mark.device
@pytest.mark.filterwarnings("error:model_cost. the forward computes")  # all counted
def test_model_cost_matches_flop_counter_on_resnet18(layers, num_basis, device):
    model = converted("resnet18", layers, num_basis).to(device)
    counted = measure_flops(model, (2, 3, 32, 32))
    cost = model_cost(model, (2, 3, 32, 32))
    assert cost.forward_flops == counted["forward_flops"]
    assert cost.backward_flops == counted["backward_flops"]
    assert cost.params == sum(p.numel() for p in model.parameters())


def small(seed=0):
    torch.manual_seed(seed)
    return build_model("resnet18", width=0.25)


@pytest.mark.parametrize("variant", ["split", "fused", "low_rank", "pruned", "shared", "frozen_basis",
                                     "skipped_coefficients", "input_grad", "fuse_norm",
                                     "fuse_norm_split_low_rank", "fuse_norm_eval",
                                     "fuse_norm_eval_no_running_stats"])
@pytest.mark.filterwarnings("ignore:fuse_norm=True")  # split does not apply where it folds
@pytest.mark.filterwarnings("ignore:combine='fused' needs")  # no kernel on this CPU
@pytest.mark.filterwarnings("error:model_cost. the forward computes")  # all counted
def test_model_cost_matches_flop_counter_for_every_option(variant):
    options, input_grad = {}, variant == "input_grad"
    if variant.startswith("fuse_norm"):
        options["fuse_norm"] = True
    if variant == "fuse_norm_split_low_rank":  # the fused combination is the stacked one
        options.update(combine="split", coefficient_rank=2)
    if variant in ("split", "fused"):  # (fused: the kernel's op where it runs, else its
        options["combine"] = variant      # fallback; counted by its registered formula)
    elif variant == "low_rank":
        options["coefficient_rank"] = 2
    elif variant == "shared":
        options["share_coefficients"] = True
    model = apply_basis(small(), "all", 0.25, convert=False, **options)
    if variant == "pruned":
        for layer in basis_layers(model).values():
            layer.prune_coefficients(2)
    elif variant == "frozen_basis":
        model.layer2[0].conv1.basis_weight.requires_grad_(False)
    elif variant == "skipped_coefficients":
        CoefficientSkipSchedule(model, 2)(1)
    elif variant == "fuse_norm_eval":  # the running statistics fold in: no moments
        model.eval()
    elif variant == "fuse_norm_eval_no_running_stats":  # nothing to fold: batch statistics
        for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            norm.track_running_stats = False  # as BatchNorm2d(track_running_stats=False) is
            norm.running_mean = norm.running_var = norm.num_batches_tracked = None
        model.eval()
    shape = (2, 3, 16, 16)
    counted = measure_flops(model, shape, input_requires_grad=input_grad)
    cost = model_cost(model, shape, input_requires_grad=input_grad)
    assert (cost.forward_flops, cost.backward_flops) == (counted["forward_flops"], counted["backward_flops"])
    if variant in ("pruned", "shared"):
        assert cost.params < sum(p.numel() for p in apply_basis(small(), "all", 0.25, convert=False).parameters())


@pytest.mark.filterwarnings("ignore:fuse_norm=True")
def test_a_fused_norm_on_batch_statistics_takes_the_combinations_gradient_even_when_frozen():
    """With batch statistics the folded matrix's gradient is computed even when neither
    the coefficients nor the norm train (the statistics need it): counted so."""
    model = apply_basis(small(), "all", 0.25, convert=False, fuse_norm=True)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.requires_grad_(False)
    CoefficientSkipSchedule(model, 2)(1)  # a step that skips the coefficients
    shape = (2, 3, 16, 16)
    counted = measure_flops(model, shape)
    cost = model_cost(model, shape)
    assert (cost.forward_flops, cost.backward_flops) == (counted["forward_flops"],
                                                         counted["backward_flops"])


@pytest.mark.filterwarnings("error:model_cost. the forward computes")  # all counted
def test_layer_costs_of_a_model_beyond_the_resnets():
    """What the ResNets do not have (a user's model): a grouped conv, convs with a bias and
    a linear layer on a 3-D input. FLOPs agree with FlopCounterMode, and the layers'
    parameters (what selection counts as saved) add up to the model's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=True),
        BasisConv2d(8, 12, 3, 4, padding=1, bias=True),
        torch.nn.Flatten(2),  # (B, 12, 36): the linear layer maps each channel's row
        torch.nn.Linear(36, 5))
    # FlopCounterMode (torch 2.13) counts a grouped conv's weight gradient as if ungrouped
    # (conv_backward_flop ignores groups), so that gradient is checked by hand instead
    model[0].weight.requires_grad_(False)
    grouped = conv2d_cost(4, 8, 3, 6, batch=2, groups=2)
    assert grouped.grad_weight_flops == grouped.forward_flops == 2 * 2 * 36 * 8 * 2 * 9
    shape = (2, 4, 6, 6)
    counted = measure_flops(model, shape, input_requires_grad=True)
    cost = model_cost(model, shape, input_requires_grad=True)
    assert (cost.forward_flops, cost.backward_flops) == (counted["forward_flops"],
                                                         counted["backward_flops"])
    assert [c.params for c in cost.layers] == [sum(p.numel() for p in m.parameters())
                                               for m in model if list(m.parameters())]


def test_convolutions_and_products_outside_the_counted_modules_are_said_not_counted():
    """Found in review: a functional F.conv2d or ``@`` in a user's forward was left out of
    the counts without a word (the docs said they agree with FlopCounterMode)."""
    class Functional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.weight = torch.nn.Parameter(torch.randn(8, 8, 3, 3))
            self.head = torch.nn.Parameter(torch.randn(8, 2))

        def forward(self, x):
            x = torch.nn.functional.conv2d(self.conv(x), self.weight)
            return x.mean((2, 3)) @ self.head
    shape = (2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"computes 68,032 FLOPs .* 31,104 of them in the "
                                         r"Conv2d, BasisConv2d and Linear modules counted"):
        cost = model_cost(Functional(), shape)
    assert cost.forward_flops == 31104 < measure_flops(Functional(), shape)["forward_flops"]


def test_a_convolution_no_formula_counts_is_named_not_counted_at_the_callers_line():
    """Pins model_cost's warning for a module of a convolution kind it has no formula for
    (a ConvTranspose2d), by name and kind, and that both of its warnings name the caller's
    line, not the package's (the dry run's steps are helpers at another depth)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ConvTranspose2d(8, 4, 3))
    with pytest.warns(UserWarning) as caught:
        cost = model_cost(model, (2, 3, 8, 8))
    conv = 2 * 2 * 6 * 6 * 8 * 3 * 3 * 3  # (2*B*H'*W'*C_out*K, the Conv2d alone)
    named, computed = (str(w.message) for w in caught)
    assert named == "model_cost: layer '1' (ConvTranspose2d) is not counted"
    assert computed.startswith(f"model_cost: the forward computes 72,576 FLOPs of convolutions "
                               f"and matrix products, {conv:,} of them in the Conv2d")
    assert {w.filename for w in caught} == {__file__}
    assert [c.name for c in cost.layers] == ["0"] and cost.forward_flops == conv


def test_pruned_coefficients_are_not_counted_and_a_shared_matrix_keeps_every_layers_picks():
    """A pruned layer counts its kept coefficients (also when layer_cost is called on it
    directly); a shared matrix pruned by its layers with other masks keeps the union of the
    entries they use."""
    layer = BasisConv2d(8, 16, 3, 6, padding=1, bias=False)
    layer.prune_coefficients(2)
    assert layer_cost(layer, (1, 8, 4, 4), (1, 16, 4, 4), input_grad=False).params == \
        6 * 72 + 10 * 2
    model = apply_basis(small(), ["layer3.0.conv2", "layer3.1.conv1"], 0.25, convert=False,
                        share_coefficients=True)
    first, second = model.layer3[0].conv2, model.layer3[1].conv1
    first.prune_coefficients(2)
    second.prune_coefficients(1)  # its one pick is among the first's two
    shared = first.coefficients.numel()
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) - shared + \
        2 * first.coefficients.shape[0]


def test_stem_has_no_input_gradient_unless_asked():
    cost = model_cost(build_model("resnet18"))
    stem = cost.layers[0]
    assert stem.name == "conv1" and stem.grad_input_flops == 0
    with_input = model_cost(build_model("resnet18"), input_requires_grad=True)
    assert with_input.grad_input_flops - cost.grad_input_flops == stem.forward_flops


def test_an_input_shape_the_model_does_not_take_is_one_clear_error():
    # Found by review: a one-channel model at the default (1, 3, 32, 32) failed on the meta
    # device with torch's "Invalid channel dimensions" and a deep trace.
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 26 * 26, 2))
    with pytest.raises(ValueError, match=r"input of shape \(1, 3, 32, 32\).*pass the input_shape"):
        model_cost(model)
    assert model_cost(model, (1, 1, 28, 28)).forward_flops == 2 * (8 * 9 * 26 * 26 + 8 * 26 * 26 * 2)
    # Found by audit: an unbatched (C, H, W), which a conv takes, was counted with C as the
    # batch size, silently C times too many FLOPs
    with pytest.raises(ConfigError, match=r"input_shape=\(1, 28, 28\); give one batch as "
                                          r"\(B, C, H, W\)"):
        model_cost(model, (1, 28, 28))


def test_the_dry_run_does_not_call_the_users_hooks():
    # Found by audit: the meta-device copy kept the user's hooks, so a feature-extraction
    # hook appended meta tensors to the user's list
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    features = []
    model[0].register_forward_hook(lambda m, args, out: features.append(out))
    model[1].register_forward_pre_hook(lambda m, args: features.append(args[0]))
    model_cost(model, (1, 3, 8, 8))
    assert features == []
    model(torch.randn(1, 3, 8, 8))
    assert len(features) == 2  # still the user's, on the model itself


def test_a_basis_costing_as_much_as_the_dense_conv_saves_nothing():
    """The rule is strictly fewer multiply-adds (a mutation test found no test between
    < and <=): split at m = C_in*k*k < C_out costs (C_out - m)*(K - m) = 0 more, as
    ResNet-18's 1x1 shortcuts at 1/2 do, and would be converted for nothing."""
    assert not saves_compute((64, 128, 1), 64, "split")
    assert saves_compute((64, 128, 1), 63, "split")


def test_the_dry_run_copies_no_weight(monkeypatch):
    """Found in review: its copy of the model was a deepcopy moved to ``meta`` after, so it
    held the model's weights twice for a moment (on its GPU for a GPU model)."""
    import torch.nn as nn

    model = apply_basis(build_model("resnet8", width=0.5), "layer1.*", 0.5)
    expected = model_cost(model)

    def no_copy(tensor, memo):
        raise AssertionError(f"copied a {tuple(tensor.shape)} tensor")

    monkeypatch.setattr(torch.Tensor, "__deepcopy__", no_copy)
    monkeypatch.setattr(nn.Parameter, "__deepcopy__", no_copy)
    assert model_cost(model) == expected
    assert all(p.device.type == "cpu" for p in model.parameters())  # the model is untouched


def test_a_batch_of_one_at_a_training_mode_batch_norm_head_is_one_clear_error():
    # Found by review: model_cost(model, (1, C, H, W)), as the README advises, on a model in
    # training mode whose BatchNorm1d follows the pooling raised batch norm's bare
    # ValueError ("Expected more than 1 value per channel") with a deep trace.
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4),
                                torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"shape \(1, 3, 8, 8\).*needs B >= 2"):
        model_cost(model, (1, 3, 8, 8))
    two = model_cost(model, (2, 3, 8, 8)).forward_flops
    assert two == 2 * 2 * (8 * 27 * 36 + 8 * 4 + 4 * 2)


def test_a_cumulative_average_batch_norm_is_counted_as_any_other():
    """Found by a fuzz of users' models: a BatchNorm2d(momentum=None) in training mode (a
    cumulative average) made the dry run fail on the meta device ("Tensor.item() cannot be
    called on meta tensors"), with advice to change the input shape; its plain and fused
    forms count as with a momentum, and the model's own norm keeps None."""

    class ConvNorm(torch.nn.Module):
        def __init__(self, momentum):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3)
            self.norm = torch.nn.BatchNorm2d(16, momentum=momentum)

        def forward(self, x):
            return conv_norm_act(self.conv, self.norm, x, relu=True)

    for fuse_norm in (False, True):
        cumulative, usual = (apply_basis(ConvNorm(momentum).train(), ["conv"], 4,
                                         fuse_norm=fuse_norm) for momentum in (None, 0.1))
        assert model_cost(cumulative, (2, 3, 8, 8)) == model_cost(usual, (2, 3, 8, 8))
        assert cumulative.norm.momentum is None
    cumulative = ConvNorm(None).train()
    assert model_cost(cumulative, (2, 3, 8, 8)) == model_cost(ConvNorm(0.1).train(), (2, 3, 8, 8))
    assert cumulative.norm.momentum is None


def test_the_dry_runs_copy_holds_no_weight_data_and_keeps_what_trains():
    """``copy_model(meta=True)`` copies the weights and buffers as meta tensors (found by
    a mutation test of model_copy: a copy holding the data, the model twice on its GPU,
    passed every test), each parameter still trained or frozen as it was."""
    from basisconv.model_copy import copy_model

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model[0].weight.requires_grad_(False)
    shadow = copy_model(model, "what", "fix", meta=True)
    assert all(t.is_meta for t in (*shadow.parameters(), *shadow.buffers()))
    assert [p.requires_grad for p in shadow.parameters()] == \
        [p.requires_grad for p in model.parameters()]
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def test_a_model_torch_cannot_copy_is_one_clear_error():
    # Found by audit: a conv pruned with torch.nn.utils.prune (its weight computed by a
    # hook) failed in copy.deepcopy with torch's "Only Tensors created explicitly by the
    # user" and a deep trace.
    import torch.nn.utils.prune as prune
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3))
    prune.l1_unstructured(model[1], "weight", 0.5)
    with pytest.raises(ConfigError, match="cannot be copied.*count with measure_flops"):
        model_cost(model, (1, 3, 8, 8))
    prune.remove(model[1], "weight")
    assert model_cost(model, (1, 3, 8, 8)).params == 8 * 28 + 8 * 73


def test_golden_values():
    golden = json.loads(GOLDEN.read_text())["cases"]
    assert golden_values() == golden


def test_derived_reference_figures_of_the_paper_notes():
    """paper.md's table (ResNet-18, the 16 block 3x3 convs at m = C_out/2, /4, /8, stem and
    shortcuts dense) counts the combination as (C_out - m)*m: our split forward. Confirmed
    to the digit; the default stacked forward does C_out*m, a little more."""
    dense = model_cost(converted("resnet18", None, None, on_meta=True))
    conv_macs = lambda cost: sum(c.forward_macs for c in cost.layers if c.kind != "linear")
    assert dense.params == 11_173_962
    assert round(conv_macs(dense) / 1e6, 1) == 555.4
    expected = {0.5: (6_029_386, 298.5, 315.3), 0.25: (3_195_978, 157.5, 161.7),
                0.125: (1_713_994, 83.8, 84.9)}
    for fraction, (params, split_macs, stacked_macs) in expected.items():
        split = model_cost(converted("resnet18", "layer*.conv*", fraction, on_meta=True,
                                     combine="split"))
        stacked = model_cost(converted("resnet18", "layer*.conv*", fraction, on_meta=True))
        assert split.params == stacked.params == params
        assert round(conv_macs(split) / 1e6, 1) == split_macs
        assert round(conv_macs(stacked) / 1e6, 1) == stacked_macs


def regenerate() -> None:
    GOLDEN.parent.mkdir(exist_ok=True)
    payload = {
        "about": "Model totals of basisconv.cost.model_cost at input (1, 3, 32, 32), no "
                 "gradient w.r.t. the images; FLOPs = 2 per multiply-add, as FlopCounterMode. "
                 "Keys: '<model> <layers> <num_basis>', layers converted from scratch with "
                 "apply_basis(..., combine='stacked'). Regenerate: python tests/test_cost.py --regenerate",
        "cases": golden_values(),
    }
    GOLDEN.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--regenerate"]:
        regenerate()
    else:
        sys.exit("usage: python tests/test_cost.py --regenerate")


class _NormedHead(torch.nn.Module):
    """One basis conv with its batch norm folded in, then a linear head: a user's model
    whose first layer can be frozen whole (the input image needs no gradient)."""

    def __init__(self):
        super().__init__()
        self.a, self.bn = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16)
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(conv_norm_act(self.a, self.bn, x, relu=True).mean((2, 3)))


@pytest.mark.parametrize("case", ["frozen_batch", "only_norm_bias_running", "one_factor"])
def test_model_cost_counts_no_gradient_that_autograd_skips(case):
    """Found in review: a frozen layer with its norm folded in (batch statistics: no
    backward at all), a folded norm on running statistics whose bias alone trains (the
    folded matrix needs no gradient), and low-rank coefficients with one factor frozen
    (one factor product in backward, not two) were counted with gradients never taken."""
    torch.manual_seed(0)
    if case == "one_factor":
        model = apply_basis(small(), "all", 0.5, convert=False, coefficient_rank=1,
                            only_where_saves=True)
        model.layer2[0].conv1.coefficients_left.requires_grad_(False)
    else:
        model = apply_basis(_NormedHead(), "a", 4, convert=False, fuse_norm=True)
        for p in [*model.a.parameters(), *model.bn.parameters()]:
            p.requires_grad_(False)
        if case == "only_norm_bias_running":
            model.bn.bias.requires_grad_(True)
            model.eval()
    shape = (2, 3, 8, 8)
    counted = measure_flops(model, shape)
    cost = model_cost(model, shape)
    assert (cost.forward_flops, cost.backward_flops) == (counted["forward_flops"],
                                                         counted["backward_flops"])


@pytest.mark.parametrize("combine", ["stacked", "auto"])
def test_a_model_with_nothing_to_train_counts_no_backward(combine):
    """Found in review: measure_flops of a frozen model failed in loss.backward(), where
    model_cost says 0 backward FLOPs."""
    layer = BasisConv2d(3, 8, 3, num_basis=2, combine=combine).requires_grad_(False)
    counted = measure_flops(layer, (2, 3, 8, 8))
    assert counted["backward_flops"] == 0 == model_cost(layer, (2, 3, 8, 8)).backward_flops
    if combine == "stacked":  # auto runs whichever form it timed fastest (maybe dense)
        assert counted["forward_flops"] == model_cost(layer, (2, 3, 8, 8)).forward_flops


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_a_model_in_another_dtype_is_counted_as_in_float32(dtype):
    """Found in review: the dry run fed a float32 input to a float64 or half model, so
    model_cost (and layer_sensitivity, dense_totals on it) failed, telling the user to change
    the input shape."""
    from basisconv.selection import dense_totals

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3))
    expected = model_cost(model, (1, 3, 8, 8)).totals()
    assert model_cost(model.to(dtype), (1, 3, 8, 8)).totals() == expected
    assert dense_totals(model, (1, 3, 8, 8))


@pytest.mark.parametrize("basis", [False, True])
def test_a_layer_called_on_unbatched_inputs_is_counted_per_image(basis):
    """Found in review: a conv that a model runs image by image ([C, H, W] inputs, which
    nn.Conv2d takes) was counted as a batch of C images: 8 times too many here, silently."""
    import torch.nn as nn

    class PerImage(nn.Module):
        def __init__(self):
            super().__init__()
            conv = nn.Conv2d(8, 16, 3, padding=1)
            self.conv = BasisConv2d.from_conv(conv, 4) if basis else conv

        def forward(self, x):
            return torch.stack([self.conv(image) for image in x])

    torch.manual_seed(0)
    counted = model_cost(PerImage(), (2, 8, 10, 10))
    measured = measure_flops(PerImage(), (2, 8, 10, 10))
    assert (counted.forward_flops, counted.backward_flops) == \
        (measured["forward_flops"], measured["backward_flops"])


def test_counting_a_grouped_convolution_warns_that_torchs_counter_is_wrong_there(caplog):
    """torch's FlopCounterMode counts a depthwise conv's weight gradient 32x too high (checked
    against model_cost, which counts it right): the check says so instead of disagreeing."""
    model = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, groups=32, bias=False))
    counted = measure_flops(model, (2, 32, 8, 8))
    assert counted["backward_flops"] > model_cost(model, (2, 32, 8, 8)).backward_flops
    assert "groups times too many" in caplog.text


@pytest.mark.filterwarnings("ignore:a basis layer with fuse_norm=True runs unfused")
@pytest.mark.parametrize("hook", ["norm_forward", "layer_forward", "layer_backward"])
def test_a_fused_norm_layer_that_hooks_keep_unfused_is_counted_unfused(hook):
    """A user's hook on a fuse_norm layer or on its norm makes it run unfused beside the
    norm (so the hook sees what it saw before): the dry run's copy must run it so too, not
    fold the norm because its copied hooks were dropped (it counted the basis maps'
    moments, which the model never computes: 4,608 FLOPs more than FlopCounterMode here,
    forward and backward each)."""
    torch.manual_seed(0)
    model = apply_basis(_NormedHead(), "a", 4, convert=False, fuse_norm=True)
    if hook == "norm_forward":
        model.bn.register_forward_hook(lambda module, args, out: None)
    elif hook == "layer_forward":
        model.a.register_forward_hook(lambda module, args, out: None)
    else:
        model.a.register_full_backward_hook(lambda module, grad_in, grad_out: None)
    shape = (2, 3, 8, 8)
    counted = measure_flops(model, shape)
    cost = model_cost(model, shape)
    assert (cost.forward_flops, cost.backward_flops) == (counted["forward_flops"],
                                                         counted["backward_flops"])


@pytest.mark.filterwarnings("ignore:combine='fused'")  # no kernel on this CPU: its fallback
@pytest.mark.parametrize("case", ["only_norm_bias", "skipped_coefficients"])
def test_a_fused_combination_on_running_statistics_counts_the_matrix_gradient_it_takes(case):
    """Found in review: with ``combine="fused"`` a folded norm on running statistics
    (eval mode) combines through the ``folded_combine`` op, whose backward computes the
    folded matrix's gradient whenever it runs (the kernel's and its fallback's alike), but
    the cost model counted it only where the coefficients or the norm's weight train: a
    step that skips the coefficients under a frozen norm weight, or one that trains only
    the norm's bias, was counted 16,384 FLOPs short here (the 1x1 conv's weight gradient)."""
    torch.manual_seed(0)
    model = apply_basis(_NormedHead(), "a", 4, convert=False, fuse_norm=True, combine="fused")
    model.bn.weight.requires_grad_(False)
    if case == "only_norm_bias":
        model.a.requires_grad_(False)
    else:
        CoefficientSkipSchedule(model, 2)(1)
    model.eval()
    shape = (2, 3, 8, 8)
    counted = measure_flops(model, shape)
    cost = model_cost(model, shape)
    assert counted["backward_flops"] > 0
    assert (cost.forward_flops, cost.backward_flops) == (counted["forward_flops"],
                                                         counted["backward_flops"])


@pytest.mark.filterwarnings("ignore:fuse_norm=True")  # split does not apply where it folds
@pytest.mark.parametrize("combine", ["stacked", "split"])
def test_a_folded_norm_on_running_statistics_whose_weight_trains_counts_the_matrix_gradient(
        combine):
    """A step that skips the coefficients under a folded norm on running statistics (eval
    mode, as a fine-tuning recipe freezes them) whose weight trains: the folded matrix
    ``gamma rstd A`` still needs its gradient, for gamma (found by a mutation test: the
    cost model with that term dropped passed every test)."""
    torch.manual_seed(0)
    model = apply_basis(_NormedHead(), "a", 4, convert=False, fuse_norm=True, combine=combine)
    CoefficientSkipSchedule(model, 2)(1)
    model.eval()
    assert model.bn.weight.requires_grad
    shape = (2, 3, 8, 8)
    counted = measure_flops(model, shape)
    cost = model_cost(model, shape)
    assert (cost.forward_flops, cost.backward_flops) == (counted["forward_flops"],
                                                         counted["backward_flops"])


@pytest.mark.parametrize("coefficient_rank", [None, 1])
def test_a_full_split_basis_counts_the_weight_gradient_its_empty_coefficients_ask_for(
        coefficient_rank):
    """Found in review: a split layer with no combined outputs (``num_basis ==
    out_channels``) ties its empty coefficients to the basis weight so that they get a
    gradient (``kernels.torch_ops.split_forward``); with the basis filters frozen and the
    coefficients trainable the basis conv's weight gradient is then computed all the same,
    which the cost model left out (here the whole backward, 2*2*36*8*27 FLOPs)."""
    layer = BasisConv2d(3, 8, 3, 8, combine="split", coefficient_rank=coefficient_rank)
    layer.basis_weight.requires_grad_(False)
    counted = measure_flops(layer, (2, 3, 8, 8))
    cost = model_cost(layer, (2, 3, 8, 8))
    assert counted["backward_flops"] == 2 * 2 * 36 * 8 * 27
    assert (cost.forward_flops, cost.backward_flops) == (counted["forward_flops"],
                                                         counted["backward_flops"])


def test_a_full_split_basis_with_frozen_coefficients_computes_no_basis_weight_gradient():
    """Found by a mutation test, failing no test before: the tie of a full split layer's
    empty coefficients to its basis weight (above) is made only when the coefficients
    train; with them frozen too, the frozen basis weight gets no gradient, and counting
    one anyway (2*2*36*8*27 FLOPs here) overstated the backward of a frozen layer."""
    import torch.nn as nn

    torch.manual_seed(0)
    layer = BasisConv2d(3, 8, 3, 8, combine="split")
    for p in layer.parameters():
        p.requires_grad_(False)
    model = nn.Sequential(nn.Conv2d(3, 3, 1), layer)  # its input needs a gradient
    counted = measure_flops(model, (2, 3, 8, 8))
    cost = model_cost(model, (2, 3, 8, 8))
    assert cost.layers[1].grad_weight_flops == 0 and cost.layers[1].grad_input_flops > 0
    assert (cost.forward_flops, cost.backward_flops) == (counted["forward_flops"],
                                                         counted["backward_flops"])


@pytest.mark.parametrize("basis", [False, True])
def test_layers_a_forward_runs_without_gradients_have_no_backward(basis):
    """Found in review: a layer the model's forward calls under ``torch.no_grad()`` (a
    frozen feature extractor in front of a trained head, a common fine-tuning recipe)
    was counted with its weight gradients, which autograd never computes: 104,832 backward
    FLOPs here where FlopCounterMode counts the head's 4,096."""
    import torch.nn as nn

    class FrozenFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            last = BasisConv2d(8, 16, 3, 4) if basis else nn.Conv2d(8, 16, 3)
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), last)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            with torch.no_grad():
                features = self.features(x)
            return self.head(features)

    torch.manual_seed(0)
    model = FrozenFeatures()
    shape = (2, 3, 8, 8)
    counted = measure_flops(model, shape)
    cost = model_cost(model, shape)
    assert (cost.forward_flops, cost.backward_flops) == (counted["forward_flops"],
                                                         counted["backward_flops"])
    assert [c.backward_flops for c in cost.layers][:2] == [0, 0]


def test_a_shared_matrix_that_one_layer_uses_unpruned_is_counted_whole():
    """Found in review: of two layers sharing one coefficient matrix, one pruned and the
    other not, the model's count left out the entries the first pruned, which the second
    still computes with (672 of the 768 here)."""
    model = apply_basis(small(), ["layer3.0.conv2", "layer3.1.conv1"], 0.25, convert=False,
                        share_coefficients=True)
    whole = count_parameters(model)
    assert whole == sum(p.numel() for p in model.parameters())
    model.layer3[0].conv2.prune_coefficients(2)
    assert count_parameters(model) == whole
    assert model_cost(model).params == whole


def test_measure_flops_counts_a_model_without_parameters():
    """Found in review: a model with nothing to train (a pooling head alone) ended
    measure_flops in a StopIteration, where model_cost counts it."""
    model = torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.Flatten())
    assert measure_flops(model, (2, 3, 4, 4)) == {"forward_flops": 0, "backward_flops": 0}


def test_measure_flops_leaves_the_model_as_it_was():
    """Found in review: measure_flops ran its counted step on the user's model itself, so
    it left gradients in every parameter's .grad (added to a step's own, between a
    zero_grad and optimizer.step), moved the batch norms' running statistics towards its
    random input (the eval outputs changed) and drew from the global random stream."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16),
                                torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3))
    model[3].weight.grad = torch.ones_like(model[3].weight)  # a gradient being accumulated
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    rng = torch.get_rng_state()
    counted = measure_flops(model, (2, 3, 8, 8))
    assert counted == {"forward_flops": model_cost(model, (2, 3, 8, 8)).forward_flops,
                       "backward_flops": model_cost(model, (2, 3, 8, 8)).backward_flops}
    assert model[0].weight.grad is None and model[0].bias.grad is None
    assert torch.equal(model[3].weight.grad, torch.ones_like(model[3].weight))
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training


@pytest.mark.parametrize("count", [model_cost, measure_flops])
@pytest.mark.parametrize("given", [torch.zeros(2, 3, 8, 8), "2x3x8x8", (2, 3, 8.5, 8)])
def test_an_input_shape_that_is_no_shape_is_one_error(count, given):
    """Found in review: an example input tensor given for the shape (or a string, or a
    non-integral size) failed deep inside (int() of a tensor; torch.randn's list of
    overloads) instead of saying what input_shape takes."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    with pytest.raises(ConfigError, match=r"input_shape.*\(B, C, H, W\)"):
        count(model, given)


def test_counting_a_model_with_an_unmade_lazy_layer_asks_for_a_forward_pass_first():
    # Found by review: the dry run replaced every hook by a no-op, the lazy module's own
    # parameter-making pre-hook too, so its uninitialized weight reached the meta conv:
    # "IndexError: tuple index out of range" from deep inside torch (layer_sensitivity's and
    # dense_totals' counts too).
    model = torch.nn.Sequential(torch.nn.LazyConv2d(4, 3), torch.nn.Flatten(),
                                torch.nn.LazyLinear(10))
    with pytest.raises(ConfigError, match=r"^model_cost: layer '0' is a LazyConv2d whose "
                                          r"parameters are not made yet; run one forward"):
        model_cost(model, (2, 3, 8, 8))
    model(torch.randn(2, 3, 8, 8))
    assert model_cost(model, (2, 3, 8, 8)).forward_flops == measure_flops(
        model, (2, 3, 8, 8))["forward_flops"]


def test_counting_the_parameters_of_an_unmade_lazy_layer_asks_for_a_forward_pass_first():
    # Found in review: count_parameters gave torch's paragraph on uninitialized parameters
    model = torch.nn.Sequential(torch.nn.LazyConv2d(4, 3), torch.nn.Flatten(),
                                torch.nn.LazyLinear(10))
    with pytest.raises(ConfigError, match=r"^count_parameters: layer '0' is a LazyConv2d "
                                          r"whose parameters are not made yet; run one forward"):
        count_parameters(model)
    model(torch.randn(2, 3, 8, 8))
    assert count_parameters(model) == 4 * 3 * 9 + 4 + 4 * 6 * 6 * 10 + 10
