"""The sensitivity scan of a user's own model with their own data and training
(``basisconv.scan.layer_sensitivity``)."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from basisconv.cost import model_cost
from basisconv.errors import ConfigError
from basisconv.scan import layer_sensitivity
from basisconv.selection import dense_totals, pick_layers
from basisconv.surgery import apply_basis


def custom_model():
    """Not one of the registry's ResNets: one input channel, nested containers, a
    non-square strided kernel, 'same' padding, a depthwise conv (never a candidate)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.ModuleDict({"body": nn.Sequential(nn.Conv2d(16, 32, 3, padding="same", bias=False),
                                             nn.BatchNorm2d(32), nn.ReLU())})["body"],
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.Conv2d(32, 32, (3, 1), stride=(2, 1)), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2)).eval()


def test_a_custom_model_is_scanned_with_the_users_loader_and_left_as_it_was():
    model = custom_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(96, 1, 10, 10)
    labels = (images.mean((1, 2, 3)) > 0).long()
    loader = DataLoader(TensorDataset(images[:64], labels[:64]), batch_size=16, shuffle=True)
    first_batches = []

    def finetune(m):
        m.train()
        optimizer = torch.optim.SGD(m.parameters(), lr=0.05)
        for i, (x, y) in enumerate(loader):
            if i == 0:
                first_batches.append(y.clone())
            optimizer.zero_grad()
            F.cross_entropy(m(x), y).backward()
            optimizer.step()

    def evaluate(m):
        m.eval()
        with torch.no_grad():
            out = m(images[64:])
        return {"accuracy": (out.argmax(1) == labels[64:]).float().mean(),
                "loss": F.cross_entropy(out, labels[64:]).item()}

    rng = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match="skipping layer '3': it is a grouped conv"):
        table = layer_sensitivity(model, 0.25, evaluate, finetune, input_shape=(1, 1, 10, 10))
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert table["layer"].tolist() == ["0", "2.0", "4"]  # the depthwise conv is skipped
    assert table["shape"].tolist() == ["1->16 k3", "16->32 k3", "32->32 k3x1"]
    # every fine-tune (the reference's and each layer's) saw the same batches
    assert len(first_batches) == 4 and all(torch.equal(b, first_batches[0]) for b in first_batches)
    reference = table.attrs["reference"]
    # (to 6 significant digits, as the pipeline's table)
    assert table["accuracy_drop"].tolist() == pytest.approx(
        [reference["accuracy"] - a for a in table["accuracy"]], rel=1e-5)
    assert table["loss_increase"].tolist() == pytest.approx(
        [loss - reference["loss"] for loss in table["loss"]], rel=1e-5)
    # savings counted at the given input shape
    converted = apply_basis(model, ["2.0"], 0.25, convert=False)
    saved = (model_cost(model, (1, 1, 10, 10)).total_flops
             - model_cost(converted, (1, 1, 10, 10)).total_flops)
    assert table.set_index("layer").loc["2.0", "flops_saved"] == saved
    # the pipeline's policies choose from it
    selection = OmegaConf.create({"policy": "sensitivity_threshold", "metric": "loss_increase",
                                  "threshold": float(table["loss_increase"].max())})
    assert pick_layers(selection, table, dense_totals(model, (1, 1, 10, 10))) == ["0", "2.0", "4"]


def test_an_accuracy_alone_is_enough_and_a_wrong_answer_is_one_clear_error():
    model = custom_model()
    x = torch.randn(4, 1, 10, 10)
    table = layer_sensitivity(model, 4, lambda m: m(x).mean().item(), layers="4",
                              input_shape=(1, 1, 10, 10))
    assert table["layer"].tolist() == ["4"] and "loss_increase" not in table
    assert table["converted_accuracy"].tolist() == table["accuracy"].tolist()  # no fine-tune
    with pytest.raises(ConfigError, match="evaluate\\(model\\) must return the accuracy"):
        layer_sensitivity(model, 4, lambda m: {"top1": 0.5}, layers="4",
                          input_shape=(1, 1, 10, 10))


def test_evaluates_extra_numbers_are_columns_and_an_infinite_or_multi_valued_one_is_refused():
    """Found by a mutation test, each failing no test before: beside ``accuracy`` an
    ``evaluate`` may report other numbers, kept as columns; an infinite one (a diverged
    fine-tune, like a NaN) is refused, and so is a tensor of several values (it was
    torch's "only one element tensors" ValueError)."""
    from basisconv.errors import TrainingDiverged

    model = custom_model()
    x = torch.randn(4, 1, 10, 10)

    def scan(evaluate):
        return layer_sensitivity(model, 4, evaluate, layers="4", input_shape=(1, 1, 10, 10))

    table = scan(lambda m: {"accuracy": m(x).mean().item(), "top5": 0.75})
    assert table["top5"].tolist() == [0.75] and "accuracy_drop" in table
    with pytest.raises(TrainingDiverged, match="evaluate\\(model\\) gave {'loss': inf}"):
        scan(lambda m: {"accuracy": 0.5, "loss": float("inf")})
    with pytest.raises(ConfigError, match="evaluate\\(model\\) must return the accuracy"):
        scan(lambda m: torch.tensor([0.5, 0.6]))


def test_every_fine_tune_starts_from_the_seed_given():
    """Found by a mutation test, failing no test before: ``seed`` is the global seed each
    fine-tune (the reference's and every candidate's) starts from."""
    model = custom_model()
    x = torch.randn(4, 1, 10, 10)
    seeds = []
    layer_sensitivity(model, 4, lambda m: m(x).mean().item(),
                      lambda m: seeds.append(torch.initial_seed()), layers="4",
                      input_shape=(1, 1, 10, 10), seed=7)
    assert seeds == [7, 7]


def test_a_table_of_accuracy_alone_feeds_the_policies_as_the_readme_shows():
    # The README's example: evaluate returns the accuracy alone, then pick_layers chooses
    # from that table. Ties were broken by loss_increase, which such a table lacks
    # (a KeyError from pandas); a metric it lacks is one error naming the ones it has.
    model = custom_model()
    x = torch.randn(4, 1, 10, 10)
    table = layer_sensitivity(model, 4, lambda m: m(x).mean().item(), layers=["0", "4"],
                              input_shape=(1, 1, 10, 10))
    dense = dense_totals(model, (1, 1, 10, 10))
    threshold = OmegaConf.create({"policy": "sensitivity_threshold", "metric": "accuracy_drop",
                                  "threshold": float(table["accuracy_drop"].max())})
    assert pick_layers(threshold, table, dense) == ["0", "4"]
    budget = OmegaConf.create({"policy": "sensitivity_budget", "metric": "accuracy_drop",
                               "count": 1})
    least = table.sort_values("accuracy_drop")["layer"].iloc[0]
    assert pick_layers(budget, table, dense) == [least]
    by_loss = OmegaConf.create({"policy": "sensitivity_budget", "metric": "loss_increase",
                                "count": 1})
    with pytest.raises(ConfigError, match="no loss_increase column.*accuracy_drop"):
        pick_layers(by_loss, table, dense)


def test_a_conv_the_forward_never_calls_is_left_out_with_a_warning():
    """Found in review: an auxiliary head the forward skips ended the scan with KeyError."""
    class WithAuxiliaryHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 16, 3, padding=1)
            self.aux = nn.Conv2d(16, 16, 3, padding=1)  # used in training only

        def forward(self, x):
            return self.body(x).mean((1, 2, 3))

    with pytest.warns(UserWarning, match="'aux' is not called by the model's forward"):
        table = layer_sensitivity(WithAuxiliaryHead(), 4, lambda m: 0.5, input_shape=(1, 3, 8, 8))
    assert table["layer"].tolist() == ["body"]


@pytest.mark.filterwarnings("ignore:model_cost. the forward computes")  # F.conv_transpose2d
def test_a_conv_whose_weight_the_forward_reads_is_left_out_or_named_with_the_fix():
    """Found in review: a conv used only through its weight (F.conv2d(x, conv.weight)) was
    converted before the check that leaves out uncalled convs, and the scan ended in an
    AttributeError; a conv called and read too (a decoder tied to it) is one clear error."""
    class Tied(nn.Module):
        def __init__(self, call_tied):
            super().__init__()
            self.body = nn.Conv2d(3, 16, 3, padding=1)
            self.tied = nn.Conv2d(16, 16, 3, padding=1)
            self.call_tied = call_tied

        def forward(self, x):
            x = self.body(x)
            x = self.tied(x) if self.call_tied else x
            return F.conv_transpose2d(x, self.tied.weight, padding=1).mean((1, 2, 3))

    with pytest.warns(UserWarning, match="'tied' is not called by the model's forward"):
        table = layer_sensitivity(Tied(False), 4, lambda m: 0.5, input_shape=(1, 3, 8, 8))
    assert table["layer"].tolist() == ["body"]
    # by name (found in review: on a model of dozens of convs the user had to guess which)
    with pytest.raises(ConfigError, match="reads the weight of layer 'tied'.*leave tied out"):
        layer_sensitivity(Tied(True), 4, lambda m: 0.5, input_shape=(1, 3, 8, 8))


def test_numpy_numbers_are_taken_and_errors_name_the_arguments_not_config_keys():
    """Found in review: a pandas median as the threshold, or a numpy basis size, failed in
    OmegaConf; errors of the Python API named basis.size and sensitivity.layers."""
    import numpy as np

    model = custom_model()
    table = layer_sensitivity(model, np.float64(0.25), lambda m: 0.5, input_shape=(1, 1, 10, 10))
    assert len(table) == 3
    chosen = pick_layers({"policy": "sensitivity_threshold", "metric": "accuracy_drop",
                          "threshold": table.accuracy_drop.median()},
                         table, dense_totals(model, (1, 1, 10, 10)))
    assert chosen == table["layer"].tolist()  # every drop is 0, the median too
    with pytest.raises(ConfigError, match=r"^num_basis=64 is more than the output channels of "
                                          r"every selected layer \(at most \d+\)"):
        layer_sensitivity(model, 64, lambda m: 0.5, input_shape=(1, 1, 10, 10))
    with pytest.raises(ConfigError, match=r"^layers: unknown layer 'conv9'"):
        layer_sensitivity(model, 4, lambda m: 0.5, layers=["conv9"], input_shape=(1, 1, 10, 10))


def test_a_scan_called_without_num_basis_or_given_a_complex_accuracy_is_one_line():
    """Found by a mutation test, each failing no test before: ``layer_sensitivity(model,
    evaluate, finetune)`` (num_basis left out, so evaluate came as it) is the one line
    naming the arguments, not an error from deep in the cost count; and a complex tensor
    from ``evaluate`` is refused (``float()`` dropped its imaginary part)."""
    model, shape = custom_model(), (1, 1, 10, 10)
    with pytest.raises(ConfigError, match=r"^layer_sensitivity\(model, num_basis, evaluate, "):
        layer_sensitivity(model, lambda m: 0.5, lambda m: None, input_shape=shape)
    with pytest.raises(ConfigError, match="evaluate\\(model\\) must return the accuracy"):
        layer_sensitivity(model, 4, lambda m: torch.tensor(0.5 + 0j), layers="4",
                          input_shape=shape)


def test_wrong_arguments_of_the_python_api_are_one_line_naming_the_argument():
    """Found in review: two arguments swapped, a policy's name for the selection, a table
    without model order or a truthy string for a flag failed deep in pandas or OmegaConf,
    or were taken (convert="no" converted); an evaluate giving NaN was ranked."""
    from basisconv.errors import TrainingDiverged

    model, shape = custom_model(), (1, 1, 10, 10)
    with pytest.raises(ConfigError, match=r"^layer_sensitivity\(model, num_basis, evaluate, "):
        layer_sensitivity(model, lambda m: 0.5, 0.25, input_shape=shape)
    with pytest.raises(ConfigError, match=r"finetune functions of the model; .* finetune=3$"):
        layer_sensitivity(model, 0.25, lambda m: 0.5, 3, input_shape=shape)
    calls = []

    def diverging(m):  # the dense model is measured first, then each layer's
        calls.append(1)
        return {"accuracy": 0.5, "loss": float("nan") if len(calls) > 1 else 1.0}

    with pytest.raises(TrainingDiverged, match=r"gave \{'loss': nan\} for the model with '0' "
                                               r"converted: a fine-tune that diverged"):
        layer_sensitivity(model, 4, diverging, input_shape=shape)
    table = layer_sensitivity(model, 4, lambda m: 0.5, input_shape=shape)
    with pytest.raises(ConfigError, match=r"^pick_layers: selection is the selection config or "
                                          r"a mapping .* got 'first_k'$"):
        pick_layers("first_k", table, dense_totals(model, shape))
    with pytest.raises(ConfigError, match=r"needs the columns layer and position .* no position"):
        pick_layers({"policy": "first_k", "count": 1}, table.drop(columns="position"), {})
    for flag in ("convert", "inplace", "only_where_saves", "share_coefficients", "fuse_norm"):
        with pytest.raises(ConfigError, match=rf"^{flag} must be True or False, got 'no'$"):
            apply_basis(model, "4", 4, **{flag: "no"})


def test_a_misspelt_key_of_a_plain_selection_is_refused_naming_the_closest():
    table = layer_sensitivity(custom_model(), 4, lambda m: 0.5, input_shape=(1, 1, 10, 10))
    with pytest.raises(ConfigError, match="selection has no key 'cout': did you mean 'count'"):
        pick_layers({"policy": "sensitivity_budget", "metric": "accuracy_drop", "cout": 1},
                    table, dense_totals(custom_model(), (1, 1, 10, 10)))


def test_a_frozen_convs_saving_is_what_converting_it_saves():
    """Found by a fuzz of users' models: with a frozen backbone (and one trainable bias) the
    table said converting a layer saves -76,800 FLOPs a step where it saves 17,600, so a
    FLOP budget passed over layers that save compute."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3)).eval()
    model.requires_grad_(False)
    model[2].bias.requires_grad_(True)
    x = torch.randn(2, 3, 12, 12)
    table = layer_sensitivity(model, 0.5, lambda m: m(x).mean().item(),
                              input_shape=(1, 3, 12, 12))
    shape = (1, 3, 12, 12)
    for layer, saved in zip(table.layer, table.flops_saved):
        converted = apply_basis(model, [layer], 0.5)
        assert saved == model_cost(model, shape).total_flops - model_cost(
            converted, shape).total_flops > 0, layer


def test_convs_sharing_one_weight_say_what_converting_each_alone_saves():
    """Found by a fuzz of users' models: two convs sharing one weight each claimed the whole
    weight's saving (816 parameters, 1632 for the pair), while converting either alone adds
    336 (the weight stays with the other) and both save 816 together."""

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 16, 3), nn.Conv2d(8, 16, 3, dilation=2)
            self.b.weight = self.a.weight
            self.c = nn.Conv2d(16, 16, 1)

        def forward(self, x):
            return self.c(self.a(x)[..., 1:-1, 1:-1] + self.b(x))

    model, x, shape = Tied().eval(), torch.randn(2, 8, 12, 12), (1, 8, 12, 12)
    with pytest.warns(UserWarning, match=r"layers \['a', 'b'\] share their weight"):
        table = layer_sensitivity(model, 0.25, lambda m: m(x).mean().item(),
                                  input_shape=shape)
    dense = model_cost(model, shape).params
    for layer, saved in zip(table.layer, table.params_saved):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert saved == dense - model_cost(apply_basis(model, [layer], 0.25), shape).params
    assert list(table.params_saved[:2]) == [-336, -336] and table.params_saved[2] > 0


def test_a_drop_equal_to_the_threshold_is_taken():
    """Found in review: 179/200 against 180/200 was a drop of 0.0050000000000000044, so a
    threshold of 0.005 (the README's example) left the layer dense; the pipeline, whose
    table is rounded to 6 digits, converted it."""
    from basisconv.layers import BasisConv2d

    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1))

    def evaluate(m):
        converted = any(isinstance(x, BasisConv2d) for x in m.modules())
        return {"accuracy": 179 / 200 if converted else 180 / 200, "loss": 1.0}

    table = layer_sensitivity(model, 0.5, evaluate, input_shape=(1, 3, 8, 8))
    assert table["accuracy_drop"].tolist() == [0.005, 0.005]
    selection = OmegaConf.create({"policy": "sensitivity_threshold", "metric": "accuracy_drop",
                                  "threshold": 0.005})
    assert pick_layers(selection, table, dense_totals(model, (1, 3, 8, 8))) == ["0", "1"]


def test_the_own_model_scan_converts_with_the_fit_it_is_given():
    """Found in review: ``basis.fit`` did not reach the own-model scan, so a user converting
    with ``fit="svd"`` chose layers from a table of the other conversion (the two rank
    layers alike only loosely)."""
    from basisconv.layers import BasisConv2d

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)).eval()
    x = torch.randn(8, 16, 8, 8, generator=torch.Generator().manual_seed(0))

    def evaluate(m):
        m.eval()
        with torch.no_grad():
            return float(m(x).softmax(1)[:, 0].mean())

    table = layer_sensitivity(model, 8, evaluate, layers=["2"], input_shape=(1, 16, 8, 8),
                              fit="svd")
    svd = BasisConv2d.from_conv(model[2], 8, fit="svd").reconstruction_error
    assert svd < BasisConv2d.from_conv(model[2], 8).reconstruction_error
    assert table.set_index("layer").loc["2", "reconstruction_error"] == pytest.approx(svd)
    with pytest.raises(ConfigError, match="fit"):
        layer_sensitivity(model, 8, evaluate, layers=["2"], input_shape=(1, 16, 8, 8),
                          fit="qr")


def test_every_fine_tune_starts_in_the_mode_the_model_was_given_in():
    """Found in review: a converted layer's model was measured before its fine-tune (the
    ``converted_*`` columns) and handed to ``finetune`` in the mode ``evaluate`` left it in
    (eval), while the dense reference, measured only after, was fine-tuned in the model's
    own (train): with a ``finetune`` that does not call ``model.train()`` every candidate
    trained with frozen batch statistics and no dropout, and every drop was off by that."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.Dropout(0.5),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))  # train mode
    x = torch.randn(8, 3, 8, 8)
    modes = []

    def finetune(m):  # trains in the mode it is given, as a loop without m.train() does
        modes.append(sorted({sub.training for sub in m.modules()}))

    def evaluate(m):
        m.eval()
        with torch.no_grad():
            return float(m(x).softmax(1)[:, 0].mean())

    table = layer_sensitivity(model, 8, evaluate, finetune, input_shape=(1, 3, 8, 8))
    assert len(table) == 2 and modes == [[True]] * 3
    assert model.training  # (the user's model itself is left as it was)


def test_the_scans_warnings_point_at_the_callers_line():
    """Found in review: warnings the scan's conversions and cost counts raise (a layer
    skipped, a costly rank, a conv the forward does not call) named scan.py's and
    selection.py's lines, from which a fixed stacklevel of apply_basis or layer_savings
    was reached, instead of the user's call."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 16, 3, padding=1)
            self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)
            self.head = nn.Conv2d(16, 16, 1)  # not called

        def forward(self, x):
            return self.grouped(self.body(x)).mean((1, 2, 3))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer_sensitivity(Model(), 4, lambda m: 0.5, input_shape=(1, 3, 8, 8),
                          coefficient_rank=4)
    said = [(str(w.message), w.filename) for w in caught]
    for start in ("skipping layer 'grouped'", "coefficient_rank=4", "layer 'head' is not called"):
        assert any(message.startswith(start) for message, _ in said), (start, said)
    assert {filename for _, filename in said} == {__file__}, said


def test_a_misspelt_fit_is_refused_before_the_reference_is_measured():
    """Found by a mutation test (the early ``check_fit`` removed, failing no test): a
    misspelt ``fit`` was refused only at the first candidate's conversion, after the
    reference's evaluation and fine-tune had run for nothing."""
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1)).eval()
    calls = []
    with pytest.raises(ConfigError, match="fit"):
        layer_sensitivity(model, 8, lambda m: calls.append("evaluate") or 0.5,
                          lambda m: calls.append("finetune"), layers=["2"],
                          input_shape=(1, 16, 8, 8), fit="qr")
    assert calls == []


def test_each_layer_is_scanned_in_the_combine_form_it_is_given():
    """Found by a mutation test (``combine`` not passed to the conversion, failing no
    test): every layer was fine-tuned and measured in the stacked form, whatever form the
    user converts with and the candidates were counted in."""
    from basisconv.layers import BasisConv2d

    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1)).eval()
    forms = []

    def evaluate(m):
        forms.extend(layer.combine for layer in m.modules() if isinstance(layer, BasisConv2d))
        return 0.5
    layer_sensitivity(model, 8, evaluate, layers=["2"], input_shape=(1, 16, 8, 8),
                      combine="split")
    assert forms == ["split", "split"]  # before its fine-tune, and after


def test_a_fine_tune_starts_in_each_modules_own_mode_the_model_was_given_in():
    """Found by a mutation test (only the top module's mode put back, failing no test):
    a norm frozen in eval inside a training model was handed to ``finetune`` training,
    for each converted layer but not for the reference."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 2))
    model[1].eval()  # frozen statistics in a training model
    given = [sub.training for sub in model.modules()]
    modes = []

    def evaluate(m):
        m.eval()
        return 0.5
    layer_sensitivity(model, 8, evaluate, lambda m: modes.append(
        [sub.training for sub in m.modules()]), layers=["3"], input_shape=(1, 3, 8, 8))
    assert modes == [given, given]
