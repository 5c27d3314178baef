"""Every config group, preset and profile composes and validates; bad values fail at start
with one clear message (as lightning-hydra-template's config tests do)."""

import errno
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import warnings

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

import basisconv.config  # noqa: F401  (registers the schema)
from basisconv import execution, hydra_errors, override_checks, resuming
from basisconv.config_checks import validate
from basisconv.errors import ConfigError
from basisconv.execution import resolve_device
from basisconv.models import list_models
from basisconv.network import build_network
from basisconv.sensitivity import choose_layers
from basisconv.sensitivity_key import cache_key


def options(repo, group):
    return sorted(p.stem for p in (repo / "configs" / group).glob("*.yaml"))


@pytest.fixture
def compose_cfg(repo):
    def _compose(*overrides, hydra=False):
        with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=hydra)
    return _compose


GROUPS = ("model", "selection", "basis")


def group_combinations(repo) -> list[tuple[str, str, str]]:
    """Each model x selection pair, with the basis option cycling so that every model x
    basis and selection x basis pair occurs too. ``selection=base`` is left out: it is
    ``none``'s defaults with the same policy, so it composes the config ``none`` does
    (checked by :func:`test_every_group_combination_composes_and_validates` on one model)."""
    models, selections, bases = (options(repo, g) for g in GROUPS)
    return [(m, s, bases[(i + j) % len(bases)])
            for i, m in enumerate(models) for j, s in enumerate(selections) if s != "base"]


def test_every_group_combination_covers_every_pair_of_options(repo):
    """Model, selection and basis interact in pairs: a selection's layer names and counts
    against a model's layers, a basis init against a selection (convert needs trained
    weights unless nothing is converted). No rule reads all three at once, so every pair
    of their options is composed (the test below): 81 compositions, not the 243 of the full
    product, at ~0.3-1 s each and as much again to validate."""
    models, selections, bases = (options(repo, g) for g in GROUPS)
    # a config for each registered model and no other (a new model: both, or a clear line)
    assert set(models) == set(list_models()), "configs/model/ and the registry differ"
    assert {"blocks", "base", "none"} <= set(selections) and len(bases) == 3
    combos = group_combinations(repo)
    for a, b in itertools.combinations(range(len(GROUPS)), 2):
        every_pair = set(itertools.product(options(repo, GROUPS[a]), options(repo, GROUPS[b])))
        every_pair -= {pair for pair in every_pair if "base" in pair}  # (as none: below)
        assert {(combo[a], combo[b]) for combo in combos} == every_pair, GROUPS[a] + GROUPS[b]
    # the defaults list's own choices compose with it: data=cifar10 and logger=wandb
    # compose the default config, one of the combinations (not composed again below)
    assert (defaults_choice(repo, "model"), defaults_choice(repo, "selection"),
            defaults_choice(repo, "basis")) in combos


def test_the_readme_marks_the_option_each_group_composes_by_default(repo):
    """The README's table of config groups marks, in each group of two or more options,
    the one ``configs/train.yaml``'s defaults list chooses (found by mutation: the default
    logger changed to ``none`` was left to side tests)."""
    readme = (repo / "README.md").read_text()
    marked = dict(re.findall(r"^\| `(\w+)/` \| .*?`(\w+)` \(default", readme, flags=re.M))
    assert marked == {group: option for group, option in default_options(repo).items()
                      if len(options(repo, group)) > 1}


def default_options(repo) -> dict[str, str]:
    """Each group ``configs/train.yaml``'s defaults list chooses an option of, and that
    option (``profile`` and ``experiment``, chosen by none, left out)."""
    return {group: option
            for entry in OmegaConf.load(repo / "configs" / "train.yaml").defaults
            if isinstance(entry, DictConfig) for group, option in entry.items()
            if option is not None}


def defaults_choice(repo, group: str) -> str:
    """The option ``configs/train.yaml``'s defaults list chooses for ``group``."""
    return default_options(repo)[group]


def option_values(repo, group: str, option: str) -> dict:
    """What ``configs/<group>/<option>.yaml`` sets itself (its keys less its defaults list):
    what a config composed with that option holds in ``group``, the command line aside."""
    values = OmegaConf.to_container(OmegaConf.load(repo / "configs" / group / f"{option}.yaml"))
    values.pop("defaults", None)
    return values


def assert_each_option_holds(repo, these: list[str], composed: dict) -> None:
    """Each group's option (the one ``these`` give, else the defaults list's) is what the
    composed config holds: the values its own yaml sets, less a key the command line gives.
    Found by mutation: ``logger/none.yaml`` with ``_self_`` before ``wandb`` composed
    wandb's values (``logger.backend: wandb``), and composed and validated unnoticed here."""
    given = dict(override.split("=", 1) for override in these)
    overridden = {override.split("=", 1)[0] for override in completed(these)}
    for group, default in default_options(repo).items():
        option = given.get(group, default)
        for key, value in option_values(repo, group, option).items():
            if f"{group}.{key}" not in overridden:
                assert composed[group][key] == value, f"{group}={option}: {group}.{key}"


def completed(these: list[str]) -> list[str]:
    """A combination's overrides and what its options need to validate."""
    if "basis=convert" in these:  # it converts a trained model, so it names one
        these = [*these, "basis.source_checkpoint=baseline/checkpoint.pt"]
    if "selection=list" in these:  # it converts the layers it names
        these = [*these, "selection.layers=[layer1.0.conv1]"]
    return these


def compose_and_validate(these: list[str]) -> dict:
    """One combination composed and validated; returns the config as composed
    (unresolved), before validation could change it."""
    cfg = compose("train", overrides=completed(these))
    composed = OmegaConf.to_container(cfg)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    validate(cfg)
    return composed


# one case a model: ~20 s each, which pytest-xdist's workers share (one test was 226 s)
@pytest.mark.parametrize("model", sorted(list_models()))
def test_every_group_combination_composes_and_validates(repo, model):
    """Each combination of :func:`group_combinations` of this model composes, validates and
    holds the options it was composed with (:func:`assert_each_option_holds`; the pairs
    they cover: the test above). Data and logger options are independent of
    them and of each other, so each is composed once (with the first model's case); an
    option the defaults list chooses composes the default config, a combination already."""
    combos = [combo for combo in group_combinations(repo) if combo[0] == model]
    overrides = [[f"{g}={o}" for g, o in zip(GROUPS, combo)] for combo in combos]
    first = model == sorted(list_models())[0]
    if first:
        overrides += [[f"{g}={o}"] for g in ("data", "logger") for o in options(repo, g)
                      if o != defaults_choice(repo, g)]
    with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
        composed = {tuple(these): compose_and_validate(these) for these in overrides}
        for these, config in composed.items():
            assert_each_option_holds(repo, list(these), config)
        if first:  # selection=base composes what selection=none does
            none = next(these for these in composed if "selection=none" in these)
            base = [o.replace("selection=none", "selection=base") for o in none]
            assert OmegaConf.to_container(compose("train", overrides=completed(base))) == \
                composed[none], "selection=base composes another config than selection=none"


# What each profile's comment (and the README's profile table) says it sets.
SCALE_KEYS = ("model.name", "model.width", "data.name", "data.train_subset", "data.test_subset",
              "data.synthetic_train", "data.synthetic_test", "trainer.epochs",
              "trainer.batch_size", "sensitivity.pretrain_epochs", "sensitivity.val_size")
PROFILES = {
    "paper": ("resnet18", 1.0, "cifar10", None, None, 0, 0, 30, 128, 10, 5000),
    "quick": ("resnet20", 0.5, "cifar10", 5000, 2000, 0, 0, 8, 128, 4, 1000),
    "smoke": ("resnet20", 0.25, "stripes", None, None, 200, 100, 3, 50, 1, 50),
}
# What each preset's comment says it runs: selection.policy, basis.init,
# basis.dense_warmup_epochs, the first tag and the run name's end.
PRESETS = {
    "baseline": ("none", "scratch", 0, "baseline", "-baseline"),
    "basis_all": ("all", "scratch", 0, "basis", "-basis-all-0.5"),
    "basis_blocks": ("list", "scratch", 0, "basis", "-basis-blocks-0.5"),
    "basis_selected": ("sensitivity_budget", "scratch", 0, "basis",
                       "-basis-sensitivity_budget-0.5"),
    "basis_size_sweep": ("all", "scratch", 0, "basis", "-basis-size-sweep"),
    "basis_warmup": ("all", "convert", 2, "basis", "-basis-warmup-0.5"),
}


@pytest.mark.parametrize("profile", ["paper", "quick", "smoke"])
def test_every_experiment_preset_composes_under_every_profile(repo, compose_cfg, profile):
    """Each preset keeps its profile's scale (a preset listed after the profile would win a
    key both set) and sets what its comment says; a new preset or profile joins the tables."""
    assert options(repo, "experiment") == sorted(PRESETS)
    assert options(repo, "profile") == sorted(PROFILES)
    for experiment, expected in PRESETS.items():
        cfg = compose_cfg(f"experiment={experiment}", f"profile={profile}", hydra=True)
        validate(cfg)
        assert tuple(OmegaConf.select(cfg, key) for key in SCALE_KEYS) == PROFILES[profile]
        assert (cfg.selection.policy, cfg.basis.init, cfg.basis.dense_warmup_epochs,
                cfg.logger.tags[0]) == expected[:4], experiment
        assert cfg.name == cfg.model.name + expected[4]
        assert cfg.sensitivity.seed == 0  # basis_selected pins it; elsewhere the run's seed 0


def test_the_size_sweep_and_the_selected_preset_set_what_their_comments_say(compose_cfg):
    """(Of the test above, once rather than under each profile: no profile given.)"""
    sweep = compose_cfg("experiment=basis_size_sweep", hydra=True)
    assert sweep.hydra.sweeper.params["basis.size"] == "0.125,0.25,0.5,0.75"
    selected = compose_cfg("experiment=basis_selected", "seed=2")
    assert (selected.sensitivity.seed, selected.selection.seed) == (0, 2)


def test_profiles_set_the_scale(compose_cfg):
    for profile, scale in PROFILES.items():
        cfg = compose_cfg(f"profile={profile}")
        assert tuple(OmegaConf.select(cfg, key) for key in SCALE_KEYS) == scale, profile
    # the command line still wins over a profile
    assert compose_cfg("profile=smoke", "model=resnet32").model.name == "resnet32"
    assert compose_cfg("profile=quick", "trainer.epochs=2").trainer.epochs == 2


@pytest.mark.parametrize("profile", ["paper", "quick", "smoke"])
def test_no_profile_pins_the_thread_count(compose_cfg, profile):
    """scripts/reproduce.sh gives each of its JOBS runs its share of the cores through
    OMP_NUM_THREADS (one run: torch's default, every core); a profile's trainer.threads
    would override that share (two runs of 2 threads on 2 cores)."""
    assert compose_cfg(f"profile={profile}").trainer.threads is None


def test_sensitivity_entry_config_composes_with_every_selection(repo):
    with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
        for selection in options(repo, "selection"):
            layers = ["selection.layers=[layer1.0.conv1]"] if selection == "list" else []
            cfg = compose("sensitivity", overrides=[f"selection={selection}", "profile=quick",
                                                    *layers])
            validate(cfg)
            assert cfg.name == "resnet20-sensitivity"
        assert compose("sensitivity").selection.policy == "sensitivity_budget"


def test_the_search_and_the_estimate_have_folders_of_their_own(repo):
    """Found in review: the search composed the estimate's config, name and all, so its runs
    went to ``outputs/<model>-sensitivity/<date>`` among the estimates' (and its sweeps to
    ``multirun/<model>-sensitivity``). Its config differs from the estimate's in the name
    alone: the same table, by the same cache key."""
    def config_name(script):
        source = (repo / "scripts" / f"{script}.py").read_text()
        return re.search(r'config_name="(\w+)"', source).group(1)

    with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
        estimate, search = (compose(config_name(script), ["model=resnet8"],
                                    return_hydra_config=True)
                            for script in ("sensitivity", "exhaustive_search"))
    assert estimate.hydra.run.dir.startswith("outputs/resnet8-sensitivity/")
    assert search.hydra.run.dir.startswith("outputs/resnet8-search/")
    assert search.hydra.sweep.dir.startswith("multirun/resnet8-search/")
    assert cache_key(search) == cache_key(estimate)
    estimate, search = (OmegaConf.to_container(c, resolve=False) for c in (estimate, search))
    assert {k for k in estimate if k != "hydra" and estimate[k] != search[k]} == {"name"}


def test_the_committed_quick_sensitivity_table_is_for_the_key_the_quick_profile_makes(repo):
    """Otherwise ``make reproduce PROFILE=quick`` would estimate it again (minutes) on a
    fresh clone: a setting added to the cache key must keep the keys made before it (the
    key is pinned as a string too: the record and the caches are found by it)."""
    record = json.loads((repo / "results/quick/runs/sensitivity.json").read_text())
    with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
        cfg = compose("sensitivity", overrides=["profile=quick"])
    assert cache_key(cfg) == record["cache"]["key"] == "resnet20-w0.5-m0.5-9b6fd8821cb1"


def test_a_count_the_threshold_policy_cannot_honour_is_refused(compose_cfg):
    """sensitivity_threshold converts whatever is under the threshold; a count with it
    (e.g. a sweep beside random, selection.count=3) used to be ignored silently."""
    with pytest.raises(ConfigError, match=r"selection.count=3 does not apply to "
                                          r"selection.policy=sensitivity_threshold"):
        validate(compose_cfg("selection=sensitivity_threshold", "selection.count=3"))
    validate(compose_cfg("selection=sensitivity_budget", "selection.count=3"))


@pytest.mark.parametrize("policy", ["random", "first_k", "last_k", "sensitivity_budget",
                                    "sensitivity_threshold"])
def test_layers_a_policy_would_ignore_are_refused(compose_cfg, policy):
    """The ordered policies choose among sensitivity.layers; selection.layers with one of
    them (random among layer3.* meant) used to be ignored silently, converting any layers.
    The dense baseline and `all` read no layer list, so a sweep with `list` may give it."""
    with pytest.raises(ConfigError, match=rf"^selection.layers=\[layer3.\*\] is read by "
                                          rf"selection.policy=list only; {policy} chooses among "
                                          rf"sensitivity.layers .* sensitivity.layers="
                                          rf"\[layer3.\*\]") as err:
        validate(compose_cfg("model=resnet20", f"selection={policy}",
                             "selection.layers=[layer3.*]"))
    assert "\n" not in str(err.value)
    validate(compose_cfg("model=resnet20", f"selection={policy}", "sensitivity.layers=[layer3.*]"))


def test_a_layer_list_is_taken_by_the_policies_that_read_it_or_no_list(compose_cfg):
    """(Of the test above, once rather than in each of its cases: no policy of theirs.)"""
    for policy in ("none", "all", "list"):
        validate(compose_cfg("model=resnet20", f"selection={policy}", "selection.layers=[layer3.*]"))


def test_a_list_selection_without_layers_fails_validation(compose_cfg):
    """It was found only when the layers were chosen: in a sweep (-m selection=none,list)
    after the jobs before it had trained, where every other value is checked first."""
    with pytest.raises(ConfigError, match=r"^selection.policy=list needs selection.layers, "
                                          r"e.g. selection.layers=\[layer1.0.conv1,") as err:
        validate(compose_cfg("selection=list"))
    assert "\n" not in str(err.value)
    validate(compose_cfg("selection=list", "selection.layers=[layer1.0.conv1]"))
    validate(compose_cfg("selection=blocks"))  # its layers are in the preset


def test_a_negative_seed_for_the_random_policy_is_one_line(compose_cfg):
    """numpy's generator, which orders the layers of selection=random, refuses a negative
    seed: selection.seed (the run's seed unless set) = -1 was a stack trace at start."""
    for override in ("seed=-1", "selection.seed=-1"):
        with pytest.raises(ConfigError, match=r"^selection.seed=-1 orders selection=random "
                                              r"and must be >= 0"):
            validate(compose_cfg("selection=random", override))
    validate(compose_cfg("selection=first_k", "seed=-1"))  # torch's seeds may be negative


def test_slurm_launcher_composes(compose_cfg):
    cfg = compose_cfg("hydra/launcher=slurm", hydra=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1


@pytest.mark.parametrize("override, message", [
    ("trainer.epochs=-1", "trainer.epochs must be >= 1, got -1"),
    ("basis.size=1.5", r"basis.size=1.5 as a fraction must be in \(0, 1\]"),
    ("basis.size=0", "basis.size=0 as a count must be >= 1"),
    ("trainer.schedule=step", "trainer.schedule='step'; choose one of"),
    ("model.name=resnet19", "model.name='resnet19' is unknown"),
    ("data.train_subset=-5", "data.train_subset=-5 as a count must be >= 1"),
    ("basis.init=pretrained", "basis.init='pretrained'; choose one of scratch, convert"),
    ("basis.fit=qr", "basis.fit='qr'; choose one of pivots, svd"),
    ("selection.budget_reduction=1.5", r"selection.budget_reduction must be in \(0, 1\)"),
    ("selection.metric=top1", "selection.metric='top1'; choose one of accuracy_drop"),
    ("sensitivity.finetune_epochs=-1", "sensitivity.finetune_epochs must be >= 0"),
    ("trainer.lr=inf", "trainer.lr must be a finite number > 0, got inf"),
    ("sensitivity.finetune_lr=inf", "sensitivity.finetune_lr must be a finite number > 0"),
    ("trainer.device=gpu", "trainer.device=gpu: no such device; choose one of auto, cpu, cuda"),
    ("trainer.device=mps", "trainer.device=mps: no such device; choose one of auto, cpu, cuda"),
    ("trainer.device=cuda:one", "trainer.device=cuda:one: no such device; choose one of auto"),
    # (torch refuses it: the run stopped with a traceback in resolve_device)
    ("trainer.device=cuda:01", "trainer.device=cuda:01: no such device; choose one of auto"),
    # (found in review: the run went to outputs/<date>, beside every run's folder)
    ("name=", r"name='' is empty; it names the run's folder \(outputs/<name>/<date>\)"),
    ("name=' '", r"name=' ' is empty"),
    # (found in review: it nested the run's folder, outputs/x/y/<date>)
    ("name=x/y", r"name='x/y' holds a /; it names one folder \(outputs/<name>/<date>\) and the "
                 r"run's wandb group: write it without, e.g. name=x-y$"),
])
def test_invalid_values_fail_validation_with_one_clear_line(compose_cfg, override, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate(compose_cfg(override))
    assert "\n" not in str(err.value)


def test_a_threshold_that_reads_as_points_is_said_in_points(compose_cfg, monkeypatch, caplog):
    """Found in a walkthrough: the pages show accuracy drops in points (+3.00), the threshold
    is a fraction (0.03); selection.threshold=0.5, meant as half a point, converted every
    layer whose drop was under 50 points, without a word. Said once, though a run checks
    its config more than once."""
    from basisconv import errors

    monkeypatch.setattr(errors, "SAID_ONCE", set())
    for _ in range(2):
        validate(compose_cfg("selection=sensitivity_threshold", "selection.threshold=0.5"))
    said = [m for m in caplog.messages if "tolerates" in m]
    assert said == ["selection.threshold=0.5 tolerates an accuracy drop of 50 points (a "
                    "fraction of accuracy, as sensitivity.csv gives it; the pages show "
                    "points): for 0.5 points give 0.005"]
    caplog.clear()  # a threshold in the usual range, or one no policy reads, says nothing
    validate(compose_cfg("selection=sensitivity_threshold", "selection.threshold=0.05"))
    validate(compose_cfg("selection=sensitivity_budget", "selection.threshold=0.7"))
    validate(compose_cfg("selection=sensitivity_threshold", "selection.threshold=0.7",
                         "selection.metric=loss_increase"))
    assert not [m for m in caplog.messages if "tolerates" in m]


@pytest.mark.parametrize("threshold, said", [(0.1, True), (-0.1, True), (0.099, False)])
def test_a_threshold_of_a_tenth_or_more_is_said_in_points(compose_cfg, monkeypatch, caplog,
                                                          threshold, said):
    """docs/selection.md: "a threshold of 0.1 or more is said in points", its size either
    way; 0.1 itself is 10 points, no usual fraction of a point."""
    from basisconv import errors

    monkeypatch.setattr(errors, "SAID_ONCE", set())
    validate(compose_cfg("selection=sensitivity_threshold", f"selection.threshold={threshold}"))
    assert bool([m for m in caplog.messages if "tolerates" in m]) == said


def test_each_job_of_a_sweep_says_its_config_warnings_in_its_own_log(compose_cfg, monkeypatch,
                                                                      caplog):
    """A warning about a value was said once a process: a sweep's check before its jobs
    said it, and no job's log (``train.log``) held it. Each job says it once now."""
    from basisconv import errors
    from basisconv.cli import exit_on_user_error

    monkeypatch.setattr(errors, "SAID_ONCE", set())
    cfg = compose_cfg("selection=all", "basis.size=1")
    validate(cfg)  # the sweep's check of every job before they run

    @exit_on_user_error
    def job():  # a job checks its config more than once: said once in it
        validate(cfg)
        validate(cfg)

    job()
    job()
    said = [m for m in caplog.messages if m.startswith("basis.size=1 is a count")]
    assert len(said) == 3


@pytest.mark.parametrize("size, said", [("1", True), ("1.0", False), ("2", False)])
def test_a_basis_size_of_one_is_said_to_be_a_count(compose_cfg, monkeypatch, caplog, size, said):
    """Found in a walkthrough: basis.size=1 trained ResNet-8 with one filter a layer (1,502
    parameters of 19,218) without a word; 1.0 is all of them."""
    from basisconv import errors

    monkeypatch.setattr(errors, "SAID_ONCE", set())
    validate(compose_cfg("selection=all", f"basis.size={size}"))
    assert [m for m in caplog.messages if m.startswith("basis.size=1 is a count")] == (
        ["basis.size=1 is a count: one basis filter in each converted layer; for all of a "
         "layer's filters (full rank) give basis.size=1.0"] if said else [])


def test_convert_without_trained_weights_is_refused(compose_cfg):
    """basis=convert with no checkpoint and no warm-up would fit the basis layers to the
    random initialization: one line naming the three ways out; each of them validates."""
    with pytest.raises(ConfigError, match="basis.init=convert fits the basis layers to trained "
                                          "dense weights, but none are given") as err:
        validate(compose_cfg("selection=all", "basis=convert"))
    assert "\n" not in str(err.value)
    for fix in ("basis.source_checkpoint=run/checkpoint.pt", "basis.dense_warmup_epochs=1",
                "basis.init=scratch"):
        validate(compose_cfg("selection=all", "basis=convert", fix))
    validate(compose_cfg("selection=none", "basis=convert"))  # no basis layers to fit


# Every other range rule of config_checks.validate, one changed value each (a rule deleted from
# validate left every test passing): set on one composed config, as composing per value
# would cost a second of the suite per rule.
RANGE_RULES = [
    ({"trainer.momentum": 1.0}, r"trainer.momentum must be in \[0, 1\), got 1.0"),
    ({"trainer.weight_decay": -1e-4}, "trainer.weight_decay must be a finite number >= 0"),
    ({"trainer.warmup_fraction": 1.0}, r"trainer.warmup_fraction must be in \[0, 1\)"),
    ({"trainer.label_smoothing": 1.0}, r"trainer.label_smoothing must be in \[0, 1\)"),
    ({"trainer.batch_size": 0}, "trainer.batch_size must be >= 1, got 0"),
    ({"trainer.eval_batch_size": 0}, "trainer.eval_batch_size must be >= 1, got 0"),
    ({"trainer.threads": 0}, "trainer.threads must be >= 1, got 0"),
    # torch takes a C int: a larger count was its overflow trace in the run's set-up
    ({"trainer.threads": 2**31}, r"trainer.threads=2147483648 is more than torch takes"),
    ({"trainer.compile_mode": "fastest"}, "trainer.compile_mode='fastest'; choose one of"),
    ({"model.width": 0.0}, "model.width must be a finite number > 0, got 0.0"),
    # Found by audit: an infinite width passed and failed as an OverflowError traceback
    ({"model.width": float("inf")}, "model.width must be a finite number > 0, got inf"),
    # Found by a randomized test: a width whose channel counts torch cannot hold in 64 bits
    # was its "Overflow when unpacking long long" trace where the run built the model, and
    # one whose weights no machine's memory holds its "can't allocate memory" trace
    ({"model.width": 1e30}, r"^model.width=1e\+30 gives resnet18 channel counts beyond "
                            r"torch's 64-bit tensor sizes; use a smaller width"),
    ({"model.width": 1e5}, r"^model.width=100000.0 gives resnet18 [\d,]+ parameters, whose "
                           r"float32 weights alone take [\d,]+.\d\d GiB, more than this "
                           r"machine's [\d,.]+ GiB of memory; use a smaller width"),
    ({"data.crop_padding": -1}, r"data.crop_padding must be in 0..31 \(less than the "
                                r"image's 32 pixels\), got -1"),
    # at 32 pixels a crop can miss the image, all padding, and a huge padding was an
    # overflow trace from torch's pad in the first training step
    ({"data.crop_padding": 32}, r"data.crop_padding must be in 0..31 .*, got 32"),
    ({"data.crop_padding": 10**22}, r"data.crop_padding must be in 0..31 .*, got 10{22}"),
    ({"data.test_subset": 1.5}, r"data.test_subset=1.5 as a fraction must be in \(0, 1\]"),
    # a word where a count or fraction goes (no test gave one before the coverage review)
    ({"data.train_subset": "all"},
     r"data.train_subset='all' is neither a count \(an int\) nor a fraction \(a float\); "
     r"use null \(all\), a count \(int >= 1\) or a fraction in \(0, 1\]"),
    ({"basis.size": "half"}, r"basis.size='half' must be an int \(a count >= 1\) or a float"),
    ({"sensitivity.pretrain_epochs": -1}, "sensitivity.pretrain_epochs must be >= 0"),
    ({"sensitivity.val_size": 0}, "sensitivity.val_size=0 as a count must be >= 1"),
    # the shell leaves ~ in key=~/... (a key with a dot is no variable): a folder named ~
    # was made in the working folder, a checkpoint there not found (only data.root expands)
    ({"sensitivity.cache_dir": "~/cache"},
     r"^sensitivity.cache_dir='~/cache': a path starting with ~ is not expanded here .*"
     r"give it in full, e.g. sensitivity.cache_dir=\$HOME/cache$"),
    ({"basis.source_checkpoint": "~/a/checkpoint.pt"}, r"^basis.source_checkpoint='~/a/"),
    ({"publish": "~other/r.json"}, r"^publish='~other/r.json': a path starting with ~ is not "
                                   r"expanded here; give it in full$"),
    # found in review: null (as data.train_subset's "all") passed, and the estimate ended
    # in a TypeError trace from the held-out split
    ({"sensitivity.val_size": None}, r"^sensitivity.val_size=null would hold out every "),
    # found in the mutation review: 1.0 passed (the range said "(0, 1)"), and was refused
    # only once the estimate had its data, in each job of a sweep
    ({"sensitivity.val_size": 1.0}, r"^sensitivity.val_size=1.0 would hold out every training "
                                    r"image; give a count \(int >= 1\) or a fraction in \(0, 1\)"),
    # and a value of the wrong kind is not told to use null
    ({"sensitivity.val_size": "all"},
     r"^sensitivity.val_size='all' is neither a count \(an int\) nor a fraction \(a float\); "
     r"use a count \(int >= 1\) or a fraction in \(0, 1\) of the training images$"),
    ({"sensitivity.layers": []}, "sensitivity.layers is empty"),
    ({"sensitivity.noise_repeats": -1}, "sensitivity.noise_repeats must be >= 0"),
    ({"sensitivity.drop_noise_layers": -1}, "sensitivity.drop_noise_layers must be >= 0"),
    ({"sensitivity.drop_noise_layers": 2, "sensitivity.noise_repeats": 0},
     r"drop_noise_layers=2 fine-tunes layers again under the noise repeats' batch orders, "
     r"and sensitivity.noise_repeats=0 gives none; set noise_repeats >= 1"),
    ({"sensitivity.workers": 0}, "sensitivity.workers must be >= 1, got 0"),
    ({"sensitivity.search_subset_size": 0}, "sensitivity.search_subset_size must be >= 1"),
    # Found by a randomized test: 0 passed here, and only the exhaustive search refused it,
    # as a limit every subset count exceeds, once it had counted the candidate layers
    ({"sensitivity.search_max_subsets": 0},
     r"^sensitivity.search_max_subsets must be >= 1 \(the most subsets the exhaustive search "
     r"may train\), got 0$"),
    ({"sensitivity.search_max_subsets": -5}, "sensitivity.search_max_subsets must be >= 1"),
    ({"selection.count": 0}, "selection.count must be null or >= 1, got 0"),
    # Found in review: a seed beyond 64 bits was an OverflowError trace from torch.manual_seed
    ({"seed": 10**20}, r"seed=100000000000000000000 does not fit in 64 bits"),
    ({"sensitivity.seed": -2**64}, r"sensitivity.seed=-18446744073709551616 does not fit"),
    # found in review: one near 2**64 passed, and the held-out split's seed + 1 overflowed
    ({"sensitivity.seed": 2**64 - 1}, r"sensitivity.seed=18446744073709551615 does not fit"),
    ({"selection.budget_metric": "energy"}, "selection.budget_metric='energy'; choose one of"),
    # Found in review: a NaN threshold chose no layer and trained the dense model, silently
    ({"selection.policy": "sensitivity_threshold", "selection.threshold": float("nan")},
     "selection.threshold=nan must be a number"),
    # Found in review: a threshold meant in points (5) converted every layer, silently
    ({"selection.policy": "sensitivity_threshold", "selection.threshold": 5},
     r"selection.threshold=5.0: an accuracy_drop is a fraction in \(-1, 1\) \(0.005 = half"),
    ({"selection.threshold": -1.0}, r"selection.threshold=-1.0: an accuracy_drop is a"),
    ({"selection.budget_reduction": 0.0},
     r"selection.budget_reduction must be in \(0, 1\), got 0.0"),
    ({"basis.source_checkpoint": "dense.pt"}, "basis.source_checkpoint is set but basis.init"),
    ({"basis.dense_warmup_epochs": -1}, "basis.dense_warmup_epochs must be >= 0, got -1"),
    ({"selection.policy": "all", "trainer.epochs": 3, "basis.dense_warmup_epochs": 3,
      "basis.init": "convert"},
     "basis.dense_warmup_epochs=3 leaves no basis epochs in trainer.epochs=3"),
    ({"basis.coefficient_update_every": 0}, "basis.coefficient_update_every must be >= 1"),
    ({"basis.combine": "concat"}, "basis.combine='concat'; choose one of"),
    ({"basis.coefficient_rank": 0}, "basis.coefficient_rank must be null or >= 1, got 0"),
    ({"basis.coefficient_l1": -0.1}, "basis.coefficient_l1 must be a finite number >= 0"),
    # Found in review: an infinite penalty passed, and the run's divergence blamed the lr
    ({"basis.coefficient_l1": float("inf")}, "basis.coefficient_l1 must be a finite number"),
    # an infinite decay makes every weight NaN on the first step, and the divergence's
    # message blamed the lr, as an infinite coefficient_l1's did
    ({"trainer.weight_decay": float("inf")}, "trainer.weight_decay must be a finite number >= 0"),
    # Found in review: the warm-up's end fits the layers whatever init says, so such a run
    # was recorded as scratch and read as a second method
    ({"selection.policy": "all", "trainer.epochs": 3, "basis.dense_warmup_epochs": 1},
     r"basis.dense_warmup_epochs=1 fits the basis layers to the warmed-up dense weights, but "
     r"basis.init=scratch; use basis=warmup"),
    ({"logger.backend": "mlflow"}, "logger.backend='mlflow'; choose one of"),
    # (mutation review: the finite bound of a number of seconds, and the seed's 2**63,
    # could each go with every test passing)
    ({"logger.init_timeout_s": float("inf")},
     r"^logger.init_timeout_s must be a number of seconds > 0, got inf$"),
    ({"trainer.checkpoint_every_s": float("inf")},
     r"^trainer.checkpoint_every_s must be a number of seconds >= 0 \(0: after every epoch\)"),
    # (a zero timeout: every collective under torchrun failed at once, in a trace)
    ({"trainer.collective_timeout_s": 0},
     r"^trainer.collective_timeout_s must be a number of seconds > 0, got 0"),
    ({"trainer.collective_timeout_s": 1e15},
     r"^trainer.collective_timeout_s=1e\+15 is more than a process group takes; give at most "
     r"3\.1536e\+07 s \(a year\)$"),
    ({"seed": 2**63}, r"^seed=9223372036854775808 does not fit in 64 bits"),
]


@pytest.mark.parametrize("overrides", [
    ["selection=all", "basis=convert", "basis.source_checkpoint="], ["basis.source_checkpoint="],
    ["sensitivity.source_checkpoint=' '"], ["sensitivity.restore_from="],
    ["sensitivity.cache_dir="], ["data.root="]])
def test_an_empty_path_is_refused_not_read_as_none_or_the_working_folder(compose_cfg, overrides):
    """An empty path (``basis.source_checkpoint=$CKPT`` with CKPT unset) is no file: read as
    none, ``basis=convert`` fitted the basis layers to the random initialization (the
    method the convert check refuses for null) and the estimate pretrained instead of
    loading its checkpoint; read as the working folder, the sensitivity cache was written
    there. Each is one line naming the key."""
    key = overrides[-1].split("=")[0]
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError, match=rf"^{key} is empty \(an unset shell variable\?\); "
                                          rf"give a path") as err:
        validate(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override", ["logger.project=${typo}", "logger.tags=[${typo}]",
                                      "sensitivity.restore_from=${oc.env:NO_SUCH_VARIABLE}"])
def test_a_broken_interpolation_in_a_key_the_checks_do_not_read_fails_at_validation(
        compose_cfg, override):
    """The sensitivity estimate and the exhaustive search resolve the whole config only for
    their record, once all their training is done: a typo in a key no range rule reads
    (``logger.project=${typo}``) was their error after the whole estimate, not at its start."""
    from omegaconf.errors import InterpolationResolutionError

    key = override.split("=")[0]
    with pytest.raises(InterpolationResolutionError) as err:
        validate(compose_cfg("basis.source_checkpoint=run/checkpoint.pt", "basis.init=convert",
                             override))
    assert err.value.full_key.startswith(key)


@pytest.mark.parametrize("override", ["~data", "~model", "trainer.epochs=???"])
def test_a_group_removed_or_a_value_left_missing_is_one_clear_line(compose_cfg, override):
    """Found in review: `~data` or `trainer.epochs=???` was an omegaconf
    MissingMandatoryValue traceback from deep inside validate (a sweep said one line)."""
    with pytest.raises(ConfigError, match=r"not set \(a config group removed with ~, or a "
                                          r"value given as \?\?\?\); drop that override"):
        validate(compose_cfg(override))


def test_every_range_rule_fails_validation_with_one_clear_line(compose_cfg):
    base = compose_cfg()
    validate(base)
    for values, message in RANGE_RULES:
        cfg = base.copy()
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=False)
        with pytest.raises(ConfigError, match=message) as err:
            validate(cfg)
        assert "\n" not in str(err.value), values
    # the dense baseline has no basis epochs to leave: a warm-up as long as training is fine
    cfg = base.copy()
    OmegaConf.update(cfg, "basis.dense_warmup_epochs", cfg.trainer.epochs)
    assert cfg.selection.policy == "none"
    validate(cfg)


def test_a_subset_is_refused_in_the_words_of_the_count_or_fraction_rule(compose_cfg):
    """The config check's side of the rule it shares with the basis layer (test_layers.py's
    test_one_count_or_fraction_rule_for_basis_sizes_and_subsets): each kind of value the
    rule refuses is refused by ``validate`` in the rule's own words, after the key, and
    the counts and fractions it takes are valid subsets."""
    from basisconv.counts import count_or_fraction_problem

    base = compose_cfg()
    for value in (0, -2, 0.0, 1.5, float("nan"), True, "half", 5000, 0.25):
        cfg = base.copy()
        OmegaConf.update(cfg, "data.train_subset", value, merge=False)
        problem = count_or_fraction_problem(value)
        if problem is None:
            validate(cfg)
            continue
        with pytest.raises(ConfigError, match=rf"^data.train_subset={re.escape(repr(value))} "
                                              rf"{re.escape(problem)}; use null \(all\)"):
            validate(cfg)


# The edge of each closed range, which validation must let through (a bound written `<`
# for `<=` refused a valid config, and only the refusals were tested).
BOUNDARY_VALUES = [
    {"data.train_subset": 1.0},  # a fraction: all of it
    {"data.test_subset": 1},  # a count: one image
    {"trainer.momentum": 0.0}, {"trainer.weight_decay": 0.0}, {"data.crop_padding": 31},
    {"trainer.warmup_fraction": 0.0}, {"trainer.label_smoothing": 0.0},
    {"sensitivity.pretrain_epochs": 0}, {"sensitivity.noise_repeats": 0},
    {"basis.coefficient_l1": 0.0}, {"basis.size": 1.0}, {"sensitivity.search_max_subsets": 1},
    # (mutation review: each of these was refused by a bound moved by one, all tests passing)
    {"sensitivity.finetune_epochs": 0}, {"sensitivity.search_subset_size": 1},
    {"basis.coefficient_rank": 1}, {"trainer.checkpoint_every_s": 0.0},
    {"logger.finish_timeout_s": 0.0}, {"seed": -2**63},
    # widths users run (a ResNet-20 16 times as wide: 68 M parameters, 0.26 GiB)
    {"model.name": "resnet20", "model.width": 16.0}, {"model.width": 0.25},
    {"selection.policy": "all", "trainer.epochs": 3, "basis.dense_warmup_epochs": 2,
     "basis.init": "convert"},
]


def test_every_range_rule_accepts_the_edge_of_its_range(compose_cfg):
    base = compose_cfg()
    for values in BOUNDARY_VALUES:
        cfg = base.copy()
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=False)
        validate(cfg)


def test_a_model_this_machine_cannot_hold_is_refused_at_the_start(
        compose_cfg, monkeypatch):
    """The bound of model.width is this machine's memory (the model is built in it): on
    one of 1 GiB, a ResNet-20 of width 32 (273,756,682 float32 parameters, 1.02 GiB) cannot
    be built, one of width 16 (0.26 GiB) can. Where the system does not say its memory,
    only torch's 64-bit sizes bound the width."""
    from basisconv import model_checks

    monkeypatch.setattr(model_checks, "machine_memory", lambda: 2**30)
    validate(compose_cfg("model=resnet20", "model.width=16"))
    with pytest.raises(ConfigError, match=r"^model.width=32.0 gives resnet20 273,756,682 "
                                          r"parameters, whose float32 weights alone take 1.02 "
                                          r"GiB, more than this machine's 1.00 GiB of memory"):
        validate(compose_cfg("model=resnet20", "model.width=32"))
    monkeypatch.setattr(model_checks, "machine_memory", lambda: None)
    validate(compose_cfg("model=resnet20", "model.width=1e6"))
    with pytest.raises(ConfigError, match="beyond torch's 64-bit tensor sizes"):
        validate(compose_cfg("model=resnet20", "model.width=1e18"))
    # a model of one's own that cannot be shaped on the meta device at all (reads a file as
    # it is built) is not judged by the check: the run builds it, and says what fails
    def unshapeable(*args):
        raise RuntimeError("a file this model reads as it is built")

    monkeypatch.setattr(model_checks, "parameter_count", unshapeable)
    validate(compose_cfg("model=resnet20", "model.width=2"))


def test_cuda_graphs_take_a_compiled_step_and_an_unused_graphing_mode(compose_cfg):
    """(What the cases below refuse beside, checked once rather than in each case.)"""
    validate(compose_cfg("trainer.cuda_graphs=true"))
    validate(compose_cfg("trainer.cuda_graphs=true", "trainer.compile=true"))
    # a graphing compile mode is no conflict while nothing is compiled
    validate(compose_cfg("trainer.cuda_graphs=true", "trainer.compile_mode=reduce-overhead"))


@pytest.mark.parametrize("overrides, message", [
    (["trainer.compile=true", "trainer.compile_mode=reduce-overhead"],
     "trainer.cuda_graphs=true captures the step itself; .* not reduce-overhead"),
    (["trainer.compile=true", "trainer.compile_mode=max-autotune"],
     "trainer.cuda_graphs=true captures the step itself; .* not max-autotune"),
    (["basis.coefficient_update_every=2"],
     "basis.coefficient_update_every=2 changes which parameters train between steps"),
])
def test_cuda_graphs_refuse_what_a_captured_step_cannot_replay(compose_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate(compose_cfg("trainer.cuda_graphs=true", *overrides))
    assert "\n" not in str(err.value)


def test_a_publish_path_that_cannot_be_written_is_refused_before_anything_runs(
        compose_cfg, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"publish=.*cannot be written \(.*a-file is not a "
                                          r"folder\); choose another .json path") as err:
        validate(compose_cfg(f"publish={blocker}/sub/seed0.json"))
    assert "\n" not in str(err.value)
    # found in review: a folder of that name was found only when the trained run published
    (tmp_path / "seed1.json").mkdir()
    with pytest.raises(ConfigError, match=r"publish=.*cannot be written \(.*seed1.json is a "
                                          r"folder\); choose another .json path"):
        validate(compose_cfg(f"publish={tmp_path}/seed1.json"))
    validate(compose_cfg(f"publish={tmp_path}/new/sub/seed0.json"))  # missing folders: made
    assert not (tmp_path / "new").exists()  # ... when it publishes, not by the check


@pytest.mark.parametrize("override", ["trainer.epochz=3", "trainer.epochs=abc", "model=resnet19"])
def test_typos_and_wrong_types_fail_when_composing(compose_cfg, override):
    with pytest.raises(ConfigCompositionException):
        compose_cfg(override)


@pytest.mark.parametrize("override, fix", [
    ("sensitivity.layers=all", "sensitivity.layers=[all]"),
    ("selection.layers=layer3.*", "selection.layers=[layer3.*]"),
    ("logger.tags='a,b'", "logger.tags=[a,b]"),
])
def test_a_single_value_for_a_list_key_names_the_list_to_write(compose_cfg, override, fix):
    """sensitivity.layers=all (the default is [all]) was OmegaConf's one line "str is not a
    ListConfig, list or tuple", which names no fix."""
    from basisconv.hydra_errors import hydra_error_line

    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(override)
    line = hydra_error_line(err.value)
    assert line.startswith(f"{override}: ") and line.endswith(f"; write a list: {fix}"), line


def test_an_override_without_a_value_says_to_write_key_equals_value():
    """`make train ARGS="trainer.epochs 3"` gives Hydra the override trainer.epochs, with no
    `=`: one line saying to write key=value (not the advice to quote a value, which is for
    overrides that have one). In-process: the entry points' subprocess tests cover the
    other parse errors; this one ran in none before the coverage review."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from basisconv.hydra_errors import hydra_error_line

    with pytest.raises(OverrideParseException) as err:
        OverridesParser.create().parse_overrides(["trainer.epochs"])
    assert hydra_error_line(err.value) == (
        "cannot parse the override 'trainer.epochs' (Error parsing override "
        "'trainer.epochs'); write key=value, e.g. trainer.epochs=3")



@pytest.mark.parametrize("override", ["basis.size=0.25,,0.5", "basis.size=0.25,0.5,",
                                      "seed=,0,1", "seed=0,", "basis.size=,0.5"])
def test_a_sweep_list_with_an_empty_value_says_to_drop_the_extra_comma(override):
    """Found in the sweep review: a sweep list with an empty item (a doubled, leading or
    trailing comma) was told to quote the value, which made it one run of the string
    '0.25,,0.5', refused again as no basis size: one line naming the extra comma instead.
    Also a list of one value and the extra comma (found by mutation: two items untested)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from basisconv.hydra_errors import hydra_error_line

    with pytest.raises(OverrideParseException) as err:
        OverridesParser.create().parse_overrides([override])
    line = hydra_error_line(err.value)
    key, _, values = override.partition("=")
    assert line.startswith(f"{override}: an empty value in the list {values}; drop the extra "
                           f"comma, e.g. {key}="), line
    assert "quote" not in line

def test_a_config_file_error_whose_diagnosis_fails_is_hydras_own_line(monkeypatch):
    """A config file's error is said with the file to fix (found in the stop-85 review):
    where finding that file fails, the line is Hydra's, never a traceback."""
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigKeyError

    import basisconv.hydra_errors as hydra_errors

    def unreadable(config_path):
        raise OSError(f"cannot list the config folders for {config_path}")

    monkeypatch.setattr(hydra_errors, "config_file", unreadable)
    try:
        try:  # (as Hydra raises it: OmegaConf's error is the context, not the cause)
            unknown = ConfigKeyError("Key 'lrr' not in 'TrainerConfig'")
            unknown.full_key = "trainer.lrr"
            raise unknown
        except ConfigKeyError as err:
            raise ConfigCompositionException(
                f"In 'mine': ConfigKeyError raised while composing config:\n{err}")
    except ConfigCompositionException as composing:
        line = hydra_errors.hydra_error_line(composing)
    assert line == ("In 'mine': ConfigKeyError raised while composing config:; Key 'lrr' "
                    "not in 'TrainerConfig'")


def test_a_run_folder_that_cannot_be_made_names_hydra_run_dir(tmp_path, repo, script_starts):
    """Found in review: hydra.run.dir inside a file was "[Errno 20] Not a directory: ...",
    one line that named no key to change."""
    (tmp_path / "a-file").write_text("")
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["profile=smoke", f"hydra.run.dir={tmp_path}/a-file/run"],
                             cwd=os.getcwd(), env={**os.environ, "WANDB_MODE": "disabled"},
                             timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: cannot write {tmp_path}/a-file/run (Not a "
                                  f"directory); point hydra.run.dir"), done.stderr


def test_a_run_log_that_cannot_be_written_names_hydra_run_dir(tmp_path, repo, script_starts):
    """Found in review: a run folder whose train.log cannot be opened (a read-only folder,
    a folder of that name) was "Unable to configure handler 'file'; [Errno 21] ...", one
    line that named no fix."""
    (tmp_path / "run" / "train.log").mkdir(parents=True)
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["profile=smoke", "logger=none", f"hydra.run.dir={tmp_path}/run"],
                             cwd=os.getcwd(), env={**os.environ, "WANDB_MODE": "disabled"},
                             timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: cannot write {tmp_path}/run/train.log (Is a "
                                  f"directory); point hydra.run.dir"), done.stderr


def test_a_run_folder_whose_disk_refuses_writes_names_the_file(tmp_path, repo):
    """Found in review: a full disk at start (here a file-size limit of 0, which refuses
    writes as a full disk does: after the file is opened) was "error: [Errno 28] No space
    left on device", naming neither the file nor a fix (Python names no file for a write
    refused after the open)."""
    import resource

    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(repo / "scripts" / "train.py"), "profile=smoke", "logger=none",
         f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "WANDB_MODE": "disabled"},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: cannot write {run}/.hydra/config.yaml (File too "
                                  f"large); raise the file-size limit (ulimit -f) "), \
        done.stderr


def test_a_full_disk_at_start_is_said_with_freeing_space_as_a_fix():
    from basisconv.hydra_errors import hydra_error_line

    full = OSError(errno.ENOSPC, "No space left on device")
    full.filename = "/runs/x/.hydra/config.yaml"
    assert hydra_error_line(full) == (
        "cannot write /runs/x/.hydra/config.yaml (No space left on device); free space "
        "there, or point hydra.run.dir (hydra.sweep.dir with -m) at a folder that can be "
        "written")
    # found by a mutation test: a quota is a full disk too
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    quota.filename = "/runs/x/.hydra/config.yaml"
    assert "(Disk quota exceeded); free space there, or point" in hydra_error_line(quota)


ELSEWHERE = "point hydra.run.dir (hydra.sweep.dir with -m) at a folder that can be written"


@pytest.mark.parametrize("code, fix", [
    (errno.EFBIG, "raise the file-size limit (ulimit -f)"),
    (errno.EROFS, ELSEWHERE), (errno.EACCES, ELSEWHERE)])
def test_a_write_refused_at_start_names_the_fix_of_its_cause(code, fix):
    """Found in review: a file-size limit (``ulimit -f``: "File too large") was told to
    point hydra.run.dir at another folder, which has the same limit."""
    from basisconv.hydra_errors import hydra_error_line

    refused = OSError(code, os.strerror(code))
    refused.filename = "/runs/x/.hydra/config.yaml"
    assert hydra_error_line(refused) == (
        f"cannot write /runs/x/.hydra/config.yaml ({os.strerror(code)}); {fix}")


def test_a_broken_interpolation_on_the_command_line_names_its_key(tmp_path, repo, script_starts):
    """Found in review: outside -m, reading Hydra's list of the overrides resolved them,
    so a typo in one was reported "(in None)" before the config check could name it."""
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["profile=smoke", "logger=none", "selection=random",
                              "selection.seed=${typo}", f"hydra.run.dir={tmp_path}/run"],
                             cwd=os.getcwd(), env={**os.environ, "WANDB_MODE": "disabled"},
                             timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr == "error: Interpolation key 'typo' not found (in selection.seed)\n"
    assert not (tmp_path / "run").exists()  # a refused start: no folder of a run that never was
    # named by the override it was typed in, not by logger.group, which interpolates name
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["profile=smoke", "logger=none", "name=${typo}",
                              f"hydra.run.dir={tmp_path}/run2"], cwd=os.getcwd(),
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert done.returncode == 2 and done.stderr == (
        "error: Interpolation key 'typo' not found (in name)\n"), done.stderr
    # a reference that only starts alike is another key's (${seed} is not ${see})
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["profile=smoke", "logger=none", "name=run${seed}",
                              "selection=random", "selection.seed=${see}",
                              f"hydra.run.dir={tmp_path}/run3"], cwd=os.getcwd(),
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert done.returncode == 2 and done.stderr == (
        "error: Interpolation key 'see' not found (in selection.seed)\n"), done.stderr


def test_a_broken_interpolation_in_a_sweep_names_its_key_and_job_before_any_job_runs(
        tmp_path, repo, script_starts):
    """The sweep's check of every job (check_sweep_jobs) let a broken ``${...}`` through as
    Hydra's "Interpolation key 'typo' not found", naming neither the key nor the job."""
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["-m", "profile=smoke", "logger=none", "seed=0,1",
                              "logger.project=${typo}", f"hydra.sweep.dir={tmp_path}/sweep"],
                             cwd=os.getcwd(), env={**os.environ, "WANDB_MODE": "disabled"},
                             timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: the sweep job profile=smoke logger=none seed=0 "), \
        done.stderr
    assert "Interpolation key 'typo' not found (in logger.project); nothing ran" in done.stderr
    assert not list((tmp_path / "sweep").glob("*/run.json"))


def test_a_command_line_override_without_a_key_is_found_whatever_its_prefix():
    """``+=x`` and ``~=x`` add or delete nothing: reported as keyless before Hydra sees them
    (its own line for ``~=x`` is "Could not delete '=x'. No match in the defaults list")."""
    from basisconv.override_checks import malformed_override

    for arg in ("=3", "+=x", "++=x", "~=x"):
        assert malformed_override(["trainer.epochs=3", arg]) == arg
    assert malformed_override(["~trainer.threads", "+x=1", "++y=2", "-m", "a=b,c"]) is None
    # a flag's value is no override, whatever it looks like (a config folder named =old)
    assert malformed_override(["-cd", "=old", "seed=1"]) is None


@pytest.mark.parametrize("override, line", [
    # found in a walkthrough: Hydra's "Config group override must be a string or a list. Got
    # float", which named neither the group nor the key meant
    ("basis=0.25", "basis=0.25: basis is a config group and takes one of its configs (convert, "
                   "scratch, warmup); a value in it is set by its key, basis.<key>=..., one of "
                   "basis.size, basis.init,"),
    # a group of whole-config presets has no keys of its own to name
    ("profile=1", "profile=1: profile is a config group and takes one of its configs (paper, "
                  "quick, smoke) (BASISCONV_DEBUG"),
    # found in a walkthrough: "did you mean trainer.schedule?" for the top-level seed
    ("trainer.seed=1", "trainer.seed is not a config key (did you mean seed? also: "
                       "selection.seed, sensitivity.seed); valid keys here: trainer.epochs,"),
])
def test_a_value_given_in_the_wrong_place_is_pointed_to_its_key(tmp_path, repo, override, line,
                                                                script_starts):
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["profile=smoke", override, f"hydra.run.dir={tmp_path}/run"],
                             cwd=os.getcwd(), env={**os.environ, "WANDB_MODE": "disabled"},
                             timeout=120)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {line}"), done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


def test_a_config_group_set_to_null_is_one_line_naming_its_configs(tmp_path, repo, script_starts):
    """Hydra said "Config group override must be a string or a list. Got NoneType",
    naming neither the group nor what to give."""
    from basisconv.override_checks import group_value_override

    assert group_value_override(["model.width=null", "seed=null", "trainer=default",
                                 "sensitivity.layers=[all]"]) is None
    # found in review: a sweep's values were blamed for another group's null
    assert group_value_override(["-m", "--config-name", "train", "basis=scratch,warmup",
                                 "model=null"]).startswith("model=null: model is a config group")
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["profile=smoke", "model=null", f"hydra.run.dir={tmp_path}/run"],
                             cwd=os.getcwd(), env={**os.environ, "WANDB_MODE": "disabled"},
                             timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: model=null: model is a config group and takes one "
                                  "of its configs (resnet110, resnet18, resnet20"), done.stderr


def test_layer_problems_are_caught_when_the_model_is_built(compose_cfg):
    cfg = compose_cfg("model=resnet20", "selection=list", "selection.layers=[layer9.0.conv1]")
    with pytest.raises(ConfigError, match=r"^selection.layers: unknown layer 'layer9.0.conv1'"):
        build_network(cfg, choose_layers(cfg))
    # each name says which list it came from, and the rank the key the user set
    cfg = compose_cfg("model=resnet20", "selection=first_k", "selection.count=2",
                      "sensitivity.layers=[layer9.*]")
    with pytest.raises(ConfigError, match=r"^sensitivity.layers: layer pattern 'layer9.\*' "
                                          r"matches no convolution"):
        choose_layers(cfg)
    cfg = compose_cfg("model=resnet20", "selection=all", "basis.coefficient_rank=100")
    with pytest.raises(ConfigError, match=r"^basis.coefficient_rank must be an int in 1\.\.8 "
                                          r"for layer 'conv1'"):
        build_network(cfg, choose_layers(cfg))
    cfg = compose_cfg("model=resnet20", "selection=list",
                      "selection.layers=[conv1,layer3.0.conv1]", "basis.size=17",
                      "basis.only_where_saves=false")
    # named as the user set it, not as the function argument deep inside
    with pytest.raises(ConfigError, match=r"'conv1': basis.size = 17 is out of range: valid is "
                                          r"1\.\.16 .*set basis.size to a count in that range.*; "
                                          r"or set basis.only_where_saves=true to leave such "
                                          r"layers dense$"):
        build_network(cfg, choose_layers(cfg))
    # (above every selected layer, only_where_saves would refuse it too: not advised)
    cfg.selection.layers = ["conv1"]
    with pytest.raises(ConfigError, match=r"'conv1': basis.size = 17 is out of range: .*"
                                          r"of each layer's out_channels$"):
        build_network(cfg, choose_layers(cfg))
    with pytest.raises(ConfigError, match="selection.layers"):
        choose_layers(compose_cfg("model=resnet20", "selection=list"))


@pytest.mark.parametrize("overrides, message", [
    (["selection=list", "selection.layers=[layer1.0.conv]"],
     r"^selection.layers: unknown layer 'layer1.0.conv' \(did you mean"),
    (["selection=random", "sensitivity.layers=[layer9.*]"],
     r"^sensitivity.layers: layer pattern 'layer9.\*' matches no convolution"),
])
def test_the_layer_names_a_policy_reads_are_checked_with_the_config(compose_cfg, overrides,
                                                                    message):
    """Checked with the other values, before a sweep's first job (not only as each job
    builds its model); a policy that reads no names is not judged by them."""
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg("model=resnet20", *overrides))


def test_a_policy_that_reads_no_layer_names_is_not_judged_by_them(compose_cfg):
    """(Of the test above, once rather than in each of its cases.)"""
    validate(compose_cfg("model=resnet20", "selection=all", "sensitivity.layers=[layer9.*]"))


@pytest.mark.parametrize("policy", ["sensitivity_budget", "first_k", "random"])
def test_a_count_above_the_candidates_is_refused_with_the_config(compose_cfg, tmp_path,
                                                                 monkeypatch, policy):
    """Found in review: a ``selection.count`` above the number of candidates was refused
    only as the layers were chosen: under ``sensitivity_budget`` after the whole estimate
    (its pretraining and every fine-tune), in a sweep after the jobs before it had trained.
    It is checked with the other values, on the model shaped on the meta device."""
    from basisconv import sensitivity
    from basisconv.config_checks import validate_estimate

    def overrides(count, *more):  # ResNet-8 has 7 candidates at basis.size=0.5
        return compose_cfg("model=resnet8", f"selection={policy}", f"selection.count={count}",
                           f"sensitivity.cache_dir={tmp_path}", *more)
    refusal = r"^selection.count=8; there are 7 candidate layers, so choose 1\.\.7 "
    with pytest.raises(ConfigError, match=refusal):
        validate(overrides(8))
    with pytest.raises(ConfigError, match=refusal):
        validate_estimate(overrides(8))
    monkeypatch.setattr(sensitivity, "estimate", lambda cfg: pytest.fail("estimated"))
    with pytest.raises(ConfigError, match=refusal):  # (a caller of the API that validated none)
        choose_layers(overrides(8))
    validate(overrides(7))
    # the candidates are those of sensitivity.layers
    with pytest.raises(ConfigError, match=r"^selection.count=3; there are 2 candidate layers"):
        validate(overrides(3, "sensitivity.layers=[layer1.*]"))


@pytest.mark.parametrize("overrides", [
    ["model=resnet8"], ["model=resnet20", "basis.size=16"],
    ["model=resnet20", "basis.size=0.25", "basis.coefficient_rank=2"],
    ["model=resnet20", "basis.fuse_norm=true", "sensitivity.layers=[layer2.*,layer3.*]"],
    ["model=resnet18", "basis.size=0.75"]])
def test_the_config_check_counts_the_candidates_the_table_has(compose_cfg, overrides):
    """The config checks count the candidates on the model shaped on the meta device,
    converted in place (it is thrown away after): as many as the candidate table has,
    made on the real model (which converts a copy)."""
    from basisconv.candidates import layer_savings
    from basisconv.network import build_dense

    cfg = compose_cfg(*overrides, "selection=sensitivity_budget")
    counted = validate(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (what the table says of layers left dense)
        table = layer_savings(build_dense(cfg), cfg.basis, list(cfg.sensitivity.layers))
    assert counted == len(table) > 0


def test_the_config_check_converts_its_meta_model_without_copying_it(compose_cfg,
                                                                      monkeypatch):
    """Its copy (deep, of a model it builds for the check and throws away after) was a
    third of a check's time on ResNet-110."""
    from basisconv import surgery

    monkeypatch.setattr(surgery, "copy_model", lambda *args, **kwargs: pytest.fail("copied"))
    assert validate(compose_cfg("model=resnet8", "selection=sensitivity_budget")) == 7


def test_the_search_holds_no_selection_key_it_does_not_read_to_the_model(compose_cfg, tmp_path,
                                                                         monkeypatch):
    """Found in review: the exhaustive search warns that it does not read
    ``selection.count``, yet refused a count above ResNet-8's 7 candidates, so
    ``scripts/reproduce.sh OVERRIDES=selection.count=10`` (ten of ResNet-20's 19 layers for
    every selected row) was refused for the protocol's search. One rule: every run checks
    each selection value on its own, and against the model only where it reads it. The
    estimate (and ``scripts/sensitivity.py``, which marks the choice) still refuse it
    before estimating."""
    from basisconv import sensitivity
    from basisconv.config_checks import validate_estimate, validate_search

    cfg = compose_cfg("model=resnet8", "selection=sensitivity_budget", "selection.count=10",
                      f"sensitivity.cache_dir={tmp_path}")  # (sensitivity.yaml's policy)
    validate_search(cfg)
    validate_search(compose_cfg("model=resnet8", "selection=list", "selection.layers=[layer4.*]"))
    with pytest.raises(ConfigError, match=r"^selection.count=10; there are 7 candidate layers"):
        validate_estimate(cfg)
    # its own values are still checked, as in every run
    for bad, message in ((["selection.count=0"], r"^selection.count must be null or >= 1"),
                         (["selection=sensitivity_threshold", "selection.count=3"],
                          r"^selection.count=3 does not apply")):
        with pytest.raises(ConfigError, match=message):
            validate_search(compose_cfg("model=resnet8", *bad))

    class Estimated(Exception):
        pass

    def estimated(cfg):
        raise Estimated
    monkeypatch.setattr(sensitivity, "estimate", estimated)
    with pytest.raises(Estimated):  # (the search's table: reached the estimate)
        sensitivity.sensitivity_table(cfg)
    with pytest.raises(ConfigError, match=r"^selection.count=10; there are 7"):
        choose_layers(cfg)  # (a training run reads it: refused before its estimate)


def test_a_basis_size_at_which_no_layer_saves_is_refused_with_the_config(compose_cfg):
    """Found in review: ``basis.size=1.0`` (or ResNet-8's widest 64 filters) fits every
    layer but saves in none, so no layer is a candidate: refused only as the candidate
    table was made (the estimate's first step; in ``-m basis.size=0.5,1.0`` after the
    0.5 job had trained)."""
    from basisconv.config_checks import validate_estimate

    for size in ("1.0", "64"):
        overrides = ("model=resnet8", "experiment=basis_selected", f"basis.size={size}")
        for check in (validate, validate_estimate):
            with pytest.raises(ConfigError, match=rf"^no candidate layer: at basis.size={size} "):
                check(compose_cfg(*overrides))
    validate(compose_cfg("model=resnet8", "experiment=basis_selected", "basis.size=0.5"))


@pytest.mark.parametrize("overrides, message", [
    (["data=stripes", "data.synthetic_train=400"], r"^sensitivity.val_size=5000 would hold out "
     r"5000 of the 400 training images \(data.synthetic_train=400\), and the estimate holds "
     r"out 1\.\.399"),
    (["data.train_subset=0.1"], r"^sensitivity.val_size=5000 would hold out 5000 of the 5000 "
     r"training images \(data.train_subset=0.1 of CIFAR-10's 50000\)"),
    (["data=stripes", "sensitivity.val_size=0.0001"], r"^sensitivity.val_size=0.0001 would "
     r"hold out 0 of the 1000"),
    (["data=stripes", "sensitivity.val_size=990"], r"^sensitivity.val_size=990 leaves 10 of the "
     r"1000 training images \(data.synthetic_train=1000\) to pretrain and fine-tune on, less "
     r"than one batch of trainer.batch_size=128"),
])
def test_a_held_out_part_the_training_images_cannot_give_is_refused_with_the_config(
        compose_cfg, overrides, message):
    """Found in review: a ``sensitivity.val_size`` above the training images (the default
    5000 of ``data=stripes``' generated 1000, or of a small ``data.train_subset``), or one
    that left less than a batch, was refused only as the estimate split its data; in a
    sweep (``-m selection=all,sensitivity_budget``) after the jobs before it had trained.
    A run that estimates nothing is not refused for it, nor own data (its size is the
    files')."""
    from basisconv.config_checks import validate_estimate

    for check, policy in ((validate, "sensitivity_budget"), (validate, "sensitivity_threshold"),
                          (validate_estimate, "all")):
        with pytest.raises(ConfigError, match=message):
            check(compose_cfg(*overrides, f"selection={policy}"))
    for policy in ("none", "all", "random"):
        validate(compose_cfg(*overrides, f"selection={policy}"))
    if "data=stripes" not in overrides:  # (a generated count is known either way)
        validate_estimate(compose_cfg(*overrides, "data.verify_md5=false"))


def test_a_held_out_part_the_training_images_can_give_is_taken(compose_cfg):
    """(The size the cases above are refused beside, checked once rather than in each.)"""
    from basisconv.config_checks import validate_estimate

    validate_estimate(compose_cfg("data=stripes", "sensitivity.val_size=100"))


def test_a_held_out_part_leaving_less_than_a_batch_is_taken_where_the_estimate_trains_nothing(
        compose_cfg, tmp_path):
    """Found in review: with ``sensitivity.finetune_epochs=0`` and no pretraining here (a
    source checkpoint's drops as converted, or ``pretrain_epochs=0`` too) the estimate makes
    no training batch, and ``profile=smoke sensitivity.val_size=160`` (40 of 200 images
    left, batch 50) ran before the one-batch rule; it was then refused with the config."""
    from basisconv.config_checks import validate_estimate

    checkpoint = tmp_path / "dense.pt"
    checkpoint.write_bytes(b"")  # (validate reads no checkpoint's weights)
    left = ("data=stripes", "sensitivity.val_size=990", "sensitivity.finetune_epochs=0")
    validate_estimate(compose_cfg(*left, "sensitivity.pretrain_epochs=0"))
    validate_estimate(compose_cfg(*left, f"sensitivity.source_checkpoint={checkpoint}"))
    for trains in (left[:2], left, (*left[:2], "sensitivity.pretrain_epochs=0")):
        # (a fine-tune, the dense model pretrained here, or one fine-tune epoch alone)
        with pytest.raises(ConfigError, match=r"^sensitivity.val_size=990 leaves 10 of the "
                                              r"1000 training images"):
            validate_estimate(compose_cfg(*trains))
    # found by a mutation test: the boundary, one batch of 128 left exactly, is taken
    validate_estimate(compose_cfg("data=stripes", "sensitivity.val_size=872"))
    with pytest.raises(ConfigError, match=r"^sensitivity.val_size=873 leaves 127 of the 1000"):
        validate_estimate(compose_cfg("data=stripes", "sensitivity.val_size=873"))


@pytest.mark.parametrize("overrides", [["selection=none"], ["selection=all"], ["selection=blocks"],
                                       ["selection=list", "selection.layers=[conv1]"]])
def test_the_estimate_scripts_check_the_candidate_names_under_every_policy(compose_cfg,
                                                                           overrides):
    """``scripts/sensitivity.py`` and ``exhaustive_search.py`` count the candidates of
    ``sensitivity.layers`` whatever the policy, but their check took a misspelt one under
    the policies that choose none (found as the estimate began; in a sweep, after the jobs
    before it). A training run of those policies reads none and is not judged by them."""
    from basisconv.config_checks import validate_estimate

    cfg = compose_cfg("model=resnet20", *overrides, "sensitivity.layers=[layer9.*]")
    validate(cfg)
    with pytest.raises(ConfigError, match=r"^sensitivity.layers: layer pattern 'layer9.\*' "
                                          r"matches no convolution"):
        validate_estimate(cfg)
    validate_estimate(compose_cfg("model=resnet20", *overrides))


@pytest.mark.parametrize("overrides, message", [
    (["experiment=basis_all", "basis.size=100"], r"^basis.size=100 is more than the output "
     r"channels of every selected layer \(at most 64\)"),
    (["selection=list", "selection.layers=[layer1.0.conv1]", "basis.size=20"],
     r"^basis.size=20 is more than the output channels of every selected layer \(at most 16\)"),
    (["experiment=basis_all", "basis.size=20", "basis.only_where_saves=false"],
     r"^layer 'conv1': basis.size = 20 is out of range: valid is 1\.\.16"),
    (["experiment=basis_selected", "selection=random", "basis.size=100"],
     r"^basis.size=100 is more than the output channels of every selected layer"),
])
def test_a_basis_too_large_for_the_models_layers_is_found_with_the_config(compose_cfg,
                                                                          overrides, message):
    """Found in review: a count that fits one model of a sweep and not another (``-m
    model=resnet18,resnet8 basis.size=100``) was refused only as its job built the model,
    after the jobs before it had trained (docs/experiments.md: every job's values are
    checked first). ResNet-18's wider layers take it."""
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg("model=resnet8", *overrides))
    validate(compose_cfg("model=resnet18", *overrides))


def test_the_estimate_scripts_are_not_refused_a_basis_only_training_would_not_take(
        compose_cfg):
    """The estimate converts only candidates where a basis saves, whatever
    ``basis.only_where_saves`` says (its table's rule); the training run converts ``all``."""
    from basisconv.config_checks import validate_estimate

    overrides = ("model=resnet8", "selection=all", "basis.size=20", "basis.only_where_saves=false")
    validate_estimate(compose_cfg(*overrides))
    with pytest.raises(ConfigError, match="'conv1': basis.size = 20 is out of range"):
        validate(compose_cfg(*overrides))


def test_basis_selected_names_its_runs_by_the_selection_option_chosen(compose_cfg, repo):
    """Found in review: its name read ``selection.policy``, so ``selection=blocks`` (policy
    ``list``) ran as ``<model>-basis-list-<size>``, the name and folder of a ``selection=list``
    run of other layers. The protocol's rows keep the names their committed records hold."""
    for option in options(repo, "selection"):
        cfg = compose_cfg("experiment=basis_selected", f"selection={option}", hydra=True)
        assert cfg.name == f"resnet18-basis-{option}-0.5"
        # so its wandb tags (found in review: selection=blocks was tagged list)
        assert list(cfg.logger.tags) == ["basis", "selected", option]
    for policy in ("sensitivity_budget", "random", "first_k", "last_k"):
        row = repo / "results" / "quick" / "runs" / f"selected-{policy}-0.5"
        cfg = compose_cfg("profile=quick", "experiment=basis_selected", f"selection={policy}",
                          "basis.size=0.5", hydra=True)
        for record in row.glob("seed*.json"):
            assert json.loads(record.read_text())["config"]["name"] == cfg.name, record


@pytest.mark.parametrize("overrides, policy", [
    (["selection.policy=random", "selection.seed=0"], "random"),
    (["selection.policy=sensitivity_threshold", "selection.threshold=0.01"],
     "sensitivity_threshold"),
    (["selection=blocks", "selection.policy=all"], "all"),
    # (mutation review: given with Hydra's ++, the preset's option named it, all tests passing)
    (["++selection.policy=random", "selection.seed=0"], "random"),
])
def test_basis_selected_names_a_run_whose_policy_is_given_by_that_policy(compose_cfg,
                                                                          overrides, policy):
    """Found in review: named by the option chosen, a run given ``selection.policy=random``
    (or ``sensitivity_threshold``, which the selection errors advise) took the preset's
    option, ``sensitivity_budget``: the name, folder and wandb group of the protocol's
    sensitivity_budget row. A policy given names the run, as ``${selection.policy}`` did;
    so in the running job, whose config has no ``hydra`` node."""
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_cfg("experiment=basis_selected", *overrides, hydra=True)
    assert cfg.name == f"resnet18-basis-{policy}-0.5"
    assert cfg.logger.tags[-1] == policy
    job = HydraConfig.instance()
    saved = job.cfg
    try:
        job.set_config(cfg)
        run = compose_cfg("experiment=basis_selected", *overrides)
        assert run.name == f"resnet18-basis-{policy}-0.5"
        assert run.logger.tags[-1] == policy
    finally:
        job.cfg = saved


@pytest.mark.parametrize("script", ["train", "estimate"])
def test_checking_a_config_logs_nothing_of_its_dry_conversions(compose_cfg, caplog, script):
    """Found in review: the meta-device conversion of the candidates (a basis size no layer
    takes, refused before a sweep's first job) logged each layer left dense at every check,
    four lines for the protocol's ``experiment=basis_selected`` and as many again for each
    job of a sweep, before the run's own table said them. Held back, as the check of a
    dense warm-up's conversion holds back its lines."""
    import logging

    from basisconv.config_checks import validate_estimate

    caplog.set_level(logging.INFO)
    cfg = compose_cfg("experiment=basis_selected")
    (validate if script == "train" else validate_estimate)(cfg)
    assert not [m for m in caplog.messages if "saves no compute" in m], caplog.messages
    # and only while checking: the run's own lines are logged after it (found by a mutation
    # test: the package's logger left at ERROR failed no test)
    logging.getLogger("basisconv.surgery").info("a layer left dense, said by the run")
    assert caplog.messages[-1:] == ["a layer left dense, said by the run"]


@pytest.mark.parametrize("override, message", [
    ("sensitivity.layers=[layer9.*]", r"^sensitivity.layers: layer pattern 'layer9.\*' matches "
                                      r"no convolution"),
    ("basis.size=65", r"^basis.size=65 is more than the output channels of every selected "
                      r"layer \(at most 64\); give a count up to 64"),
])
def test_candidate_problems_are_found_before_the_sensitivity_pretraining(
        compose_cfg, monkeypatch, override, message):
    """They were found after it (sensitivity.pretrain_epochs of dense training: 10 epochs
    of ResNet-18 in the paper profile), when the candidates were first counted."""
    from basisconv import sensitivity_estimate

    def pretrain(cfg):
        raise AssertionError("pretrained before the candidates were checked")
    monkeypatch.setattr(sensitivity_estimate, "Probe", pretrain)
    # selection=none: scripts/sensitivity.py estimates for every policy, and validate
    # checks sensitivity.layers only for the policies that choose among them
    cfg = compose_cfg("model=resnet20", "selection=none", override)
    validate(cfg)
    with pytest.raises(ConfigError, match=message):
        sensitivity_estimate.estimate(cfg)


@pytest.mark.parametrize("override, message", [
    ("trainer.epochs=0", "trainer.epochs must be >= 1, got 0"),
    ("trainer.epochs=-2", "trainer.epochs must be >= 1, got -2"),
])
def test_a_bad_trainer_value_is_named_before_the_basis_checks_that_use_it(compose_cfg,
                                                                          override, message):
    """experiment=basis_all trainer.epochs=0 once blamed basis.dense_warmup_epochs."""
    with pytest.raises(ConfigError, match=f"^{message}$"):
        validate(compose_cfg("experiment=basis_all", override))


@pytest.mark.parametrize("overrides, message", [
    (["+trainer.epochz=1"], r"trainer.epochz \(did you mean trainer.epochs\?\) is not a "
                            r"config key; nothing reads a key added with \+, so remove it"),
    (["+sensitivity.val_sise=5", "+seeds=3"],
     r"sensitivity.val_sise \(did you mean sensitivity.val_size\?\), seeds \(did you mean "
     r"seed\?\) are not config keys"),
    (["+trainer.schedule_options.gamma=0.5"], r"trainer.schedule_options \(did you mean "
                                               r"trainer.schedule\?\) is not a config key"),
])
def test_keys_added_with_plus_that_nothing_reads_are_refused(compose_cfg, overrides, message):
    """+trainer.epochz=1 once ran the default 3 epochs silently, the key stored."""
    with pytest.raises(ConfigError, match=f"^{message}") as err:
        validate(compose_cfg(*overrides, hydra=True))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("data", ["cifar10", "stripes"])
def test_the_datasets_own_class_count_passes(compose_cfg, data):
    """(The count the test below asks for, checked once for each data option.)"""
    validate(compose_cfg(f"data={data}", "data.num_classes=10"))


@pytest.mark.parametrize("data", ["cifar10", "stripes"])
@pytest.mark.parametrize("classes", [5, 0, 100])
def test_num_classes_must_be_the_datasets_class_count(compose_cfg, data, classes):
    """Fewer classes than the labels once ended in an IndexError trace from the loss, 0 in
    a ValueError trace from the model registry, and more trained a too-wide head silently."""
    with pytest.raises(ConfigError, match=rf"^data.num_classes={classes}, but data={data} has "
                                          rf"10 classes; drop the override "
                                          rf"\(data.num_classes=10\)$"):
        validate(compose_cfg(f"data={data}", f"data.num_classes={classes}"))


@pytest.mark.parametrize("override", ["data.synthetic_train=0", "data.synthetic_test=0",
                                      "data.synthetic_test=-5"])
def test_generated_data_sizes_below_one_fail_validation(compose_cfg, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key} must be >= 1") as err:
        validate(compose_cfg("data=stripes", override))
    assert "\n" not in str(err.value)


def test_a_subset_larger_than_the_generated_data_fails_validation(compose_cfg):
    """Found in review: ``profile=quick data=stripes`` (5,000 training images of the 1,000
    generated) was refused as each job started, not by the sweep's check of its jobs."""
    with pytest.raises(ConfigError, match=r"^data.train_subset=5000 must select between 1 and "
                                          r"1000 images \(data.synthetic_train=1000 are "
                                          r"generated\): lower it, or raise "
                                          r"data.synthetic_train$"):
        validate(compose_cfg("profile=quick", "data=stripes"))
    with pytest.raises(ConfigError, match=r"^data.test_subset=51 must select between 1 and 50"):
        validate(compose_cfg("data=stripes", "data.synthetic_test=50", "data.test_subset=51"))
    validate(compose_cfg("profile=quick", "data=stripes", "data.synthetic_train=5000",
                         "data.synthetic_test=2000"))
    validate(compose_cfg("data=stripes", "data.synthetic_test=50", "data.test_subset=50"))
    validate(compose_cfg("data=stripes", "data.synthetic_test=50", "data.test_subset=1.0"))


@pytest.mark.parametrize("overrides, message", [
    (["data.train_subset=50001"], r"^data.train_subset=50001 must select between 1 and 50000 "
     r"images \(CIFAR-10's training set has 50000\): lower it, or give a fraction in \(0, 1\]$"),
    (["data.test_subset=10001"], r"^data.test_subset=10001 must select between 1 and 10000 "
     r"images \(CIFAR-10's test set has 10000\)"),
    (["trainer.batch_size=50001"], r"^trainer.batch_size=50001 is larger than the 50000 "
     r"training images \(CIFAR-10's 50000\); lower trainer.batch_size, or keep more training "
     r"images$"),
    (["data.train_subset=100"], r"^trainer.batch_size=128 is larger than the 100 training "
     r"images \(data.train_subset=100 of CIFAR-10's 50000\)"),
    (["data=stripes", "data.synthetic_train=100"], r"^trainer.batch_size=128 is larger than "
     r"the 100 training images \(data.synthetic_train=100\)"),
])
def test_cifar_subsets_and_a_batch_beyond_the_known_training_images_fail_validation(
        compose_cfg, overrides, message):
    """Found in review: these were refused only as the data was read or the loop started
    (in a sweep, after the jobs before them had trained), though the config tells the
    sizes (:func:`~basisconv.data.training_images`). Own data
    (``data.verify_md5=false``) is left to the files' check; the edges are accepted."""
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(*overrides, "selection=none"))
    if "data=stripes" not in overrides:
        validate(compose_cfg(*overrides, "selection=none", "data.verify_md5=false"))


def test_cifar_subsets_and_a_batch_at_the_known_training_images_pass(compose_cfg):
    """(The edges of the cases above, checked once rather than in each of them.)"""
    validate(compose_cfg("data.train_subset=50000", "data.test_subset=10000",
                         "trainer.batch_size=50000", "selection=none"))
    validate(compose_cfg("data.train_subset=128", "selection=none"))


def test_an_estimate_that_trains_nothing_takes_a_batch_beyond_the_training_images(compose_cfg):
    """Found in review: the training-batch rule refused it in the estimate scripts too,
    where the held-out rule asks one batch only where the estimate trains, and
    ``profile=smoke data.synthetic_train=40 sensitivity.val_size=20
    sensitivity.finetune_epochs=0 sensitivity.pretrain_epochs=0`` (batch 50) ran
    scripts/sensitivity.py to its table."""
    from basisconv.config_checks import validate_estimate, validate_search

    smoke = ("profile=smoke", "data.synthetic_train=40", "sensitivity.val_size=20",
             "sensitivity.finetune_epochs=0", "sensitivity.pretrain_epochs=0")
    validate_estimate(compose_cfg(*smoke))
    # (on ResNet-8: the 969 subsets of 3 of ResNet-20's 19 candidates are too many to search)
    validate_search(compose_cfg(*smoke, "model=resnet8"))
    with pytest.raises(ConfigError, match=r"^trainer.batch_size=50 is larger than the 40 "):
        validate(compose_cfg(*smoke))  # (scripts/train.py trains on them)


def test_basis_fuse_norm_reaches_the_layers_and_keys_the_sensitivity_cache_only_when_on(
        compose_cfg):
    from basisconv.layers import basis_layers
    from basisconv.sensitivity_key import cache_key

    plain = compose_cfg("model=resnet20", "experiment=basis_all")
    fused = compose_cfg("model=resnet20", "experiment=basis_all", "basis.fuse_norm=true")
    layers = basis_layers(build_network(fused, choose_layers(fused)))
    assert layers and all(layer.fuse_norm for layer in layers.values())
    assert not any(layer.fuse_norm
                   for layer in basis_layers(build_network(plain, choose_layers(plain))).values())
    off = OmegaConf.merge(plain, {"basis": {"fuse_norm": False}})
    without_key = OmegaConf.create(OmegaConf.to_container(plain))
    del without_key.basis["fuse_norm"]  # a record written before the key existed
    assert cache_key(off) == cache_key(without_key) != cache_key(fused)


def test_device_names_are_checked_at_validation_and_when_resolved(compose_cfg):
    """trainer.device: auto, cpu, cuda, cuda:N pass validation (whether the machine has
    CUDA is the run's question); anything else is one line at validation, and at
    resolve_device for callers that do not validate (e.g. the benchmarks)."""
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        validate(compose_cfg(f"trainer.device={device}"))
    with pytest.raises(ConfigError, match="trainer.device=xpu: no such device; choose one of auto"):
        resolve_device("xpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is available to this torch; use "
                                              "trainer.device=cpu or auto"):
            resolve_device("cuda")


def test_a_gpu_index_the_machine_lacks_is_one_line(monkeypatch):
    """Found in review (read, not run: no GPU here): cuda:3 on a one-GPU machine passed,
    and torch's "invalid device ordinal" came from deep inside the run's set-up."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"trainer.device=cuda:3: this torch sees 1 GPU\(s\), "
                                          r"cuda:0..cuda:0"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("value, mode", [("dryrun", "offline"), ("run", "online")])
def test_wandbs_other_mode_names_are_taken_from_the_environment_and_logged(
        compose_cfg, monkeypatch, caplog, value, mode):
    """WANDB_MODE=dryrun (wandb's name for offline) once stopped the run at validation."""
    monkeypatch.setenv("WANDB_MODE", value)
    cfg = compose_cfg()
    with caplog.at_level("INFO", logger="basisconv.config_checks"):
        validate(cfg)
    assert cfg.logger.mode == mode
    assert f"WANDB_MODE={value} is wandb's other name for {mode}" in caplog.text
    cfg = compose_cfg(f"logger.mode={value}")
    validate(cfg)
    assert cfg.logger.mode == mode


def test_an_invalid_wandb_mode_from_the_environment_is_named_as_such(compose_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ConfigError, match=r"^WANDB_MODE='bogus' \(the environment variable "
                                          r"logger.mode reads\); choose one of offline, online, "
                                          r"disabled, or unset it$"):
        validate(compose_cfg())
    with pytest.raises(ConfigError, match=r"^logger.mode='nope'; choose one of offline"):
        validate(compose_cfg("logger.mode=nope"))


@pytest.mark.parametrize("override, said", [
    ("logger.project=", "is empty: wandb takes it"),
    ("logger.project=' '", "is empty: wandb takes it"),
    ("logger.project=a/b", r"is refused by wandb \(cannot contain characters .*found '/'\)"),
    ("logger.project='what?'", r"is refused by wandb \(cannot contain .*found '\?'\)"),
    (f"logger.project={'x' * 129}", r"is refused by wandb \(exceeded 128 characters\)")])
def test_a_wandb_project_that_is_empty_or_refused_by_wandb_is_refused_at_start(
        compose_cfg, monkeypatch, override, said):
    """Found in review: an empty project was taken (an offline run kept project '', so a
    sweep's runs landed outside the project), and a name wandb refuses was a warning at
    wandb.init, so a sweep with a typo trained every job without wandb."""
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    with pytest.raises(ConfigError, match=rf"^logger.project=.* {said}, and every run would "
                                          rf"train without wandb; give a project name|"
                                          rf"^logger.project=.* {said}, and the runs would land "
                                          rf"outside any named project; give a project name"
                                          ) as err:
        validate(compose_cfg(override, "logger.mode=offline"))
    assert "\n" not in str(err.value)
    # unread with wandb off, so not checked
    validate(compose_cfg(override, "logger.mode=disabled"))
    validate(compose_cfg(override, "logger=none", "logger.mode=offline"))


def test_the_wandb_project_defaults_to_wandb_project_and_is_named_by_it(repo, compose_cfg,
                                                                       monkeypatch):
    """WANDB_PROJECT was ignored (the config's basisconv was always passed to wandb.init),
    though WANDB_MODE sets logger.mode; an override still wins, and a bad value from the
    environment is named as the variable the user set."""
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    assert compose_cfg().logger.project == "mine"
    assert compose_cfg("logger.project=other").logger.project == "other"
    # and source=wandb analysis reads from where the runs went
    with initialize_config_dir(config_dir=str(repo / "configs" / "analysis"), version_base="1.3"):
        assert compose("analyze", overrides=["source=wandb"]).wandb.project == "mine"
    for value, said in [("a:b", "is refused by wandb"), ("", "is empty")]:
        monkeypatch.setenv("WANDB_PROJECT", value)
        with pytest.raises(ConfigError, match=rf"^WANDB_PROJECT='{value}' \(the environment "
                                              rf"variable logger.project reads\) {said}.*; set "
                                              rf"it to a project name, or unset it"):
            validate(compose_cfg("logger.mode=offline"))
    monkeypatch.delenv("WANDB_PROJECT")
    assert compose_cfg().logger.project == "basisconv"


def test_a_sweep_jobs_folder_is_its_overrides_and_never_another_jobs():
    from basisconv.config import job_folder

    assert job_folder("basis.size=0.25,seed=0,selection=first_k") == \
        "basis.size=0.25,seed=0,selection=first_k"
    assert job_folder("") == "defaults"
    # a path in a value is no nested folder, and stays apart from the same name with "_"
    root, underscored = job_folder("data.root=/a/b,seed=0"), job_folder("data.root=_a_b,seed=0")
    assert "/" not in root and root.startswith("data.root=_a_b,seed=0-") and root != underscored
    long = [job_folder(f"selection.layers=[{'x' * 300}],seed={s}") for s in (0, 1)]
    assert all(len(name) <= 200 for name in long) and long[0] != long[1]


# Every key of the first published run records (70ccc68, 2026-11-29): a key not among them
# was added later, and a record without it must be read as what it ran as.
FIRST_RECORD_KEYS = {
    "basis": ["coefficient_l1", "coefficient_rank", "coefficient_update_every", "combine",
              "dense_warmup_epochs", "init", "only_where_saves", "share_coefficients", "size",
              "source_checkpoint"],
    "data": ["crop_padding", "download", "flip", "name", "num_classes", "root",
             "synthetic_test", "synthetic_train", "test_subset", "train_subset", "verify_md5"],
    "logger": ["backend", "entity", "group", "mode", "project", "tags"],
    "model": ["name", "width"],
    "selection": ["budget_metric", "budget_reduction", "count", "layers", "metric", "policy",
                  "seed", "threshold"],
    "sensitivity": ["cache_dir", "finetune_epochs", "finetune_lr", "layers", "noise_repeats",
                    "pretrain_epochs", "recompute", "restore_from", "search_max_subsets",
                    "search_subset_size", "seed", "source_checkpoint", "val_size"],
    "trainer": ["amp", "batch_size", "channels_last", "checkpoint", "compile", "compile_mode",
                "deterministic", "device", "epochs", "eval_batch_size", "label_smoothing",
                "lr", "momentum", "nesterov", "progress", "resume", "schedule", "threads",
                "warmup_fraction", "weight_decay"],
    "": ["name", "publish", "seed"]}


def test_every_key_added_since_the_first_records_says_what_older_runs_ran_as(compose_cfg):
    """A key added to the config is read, where an older record or checkpoint lacks it,
    as :data:`basisconv.same_run.ADDED_KEYS` says (found in review: the analysis
    ignored such keys, so old runs and new runs of another ``basis.fuse_norm`` were
    averaged as seeds of one row). The value must be the key's default."""
    from basisconv.same_run import ADDED_KEYS, flatten

    first = {f"{group}.{k}" if group else k for group, keys in FIRST_RECORD_KEYS.items()
             for k in keys}
    defaults = flatten(OmegaConf.to_container(compose_cfg(), resolve=True))
    added = sorted(set(defaults) - first)
    assert sorted(ADDED_KEYS) == added, "add the new key and its default to ADDED_KEYS"
    assert ADDED_KEYS == {k: defaults[k] for k in added}
    # 0 and 0.0 are two values to a resume (which refuses a count for a fraction) and to
    # the analysis (JSON): the value must be the default as a record holds it
    assert [type(ADDED_KEYS[k]) for k in added] == [type(defaults[k]) for k in added]


def test_the_compiled_split_form_in_nchw_is_refused_at_the_start(compose_cfg):
    """torch 2.13's Inductor corrupts the heap in that combination's first backward (an
    abort, no error line, a run that can never finish); channels_last, the stacked form or
    a dense run compile fine."""
    with pytest.raises(ConfigError, match=r"runs the stacked form \(torch's compiled backward "
                                          r"of the split form crashes there\)") as err:
        validate(compose_cfg("selection=all", "basis.combine=split", "trainer.compile=true",
                             "trainer.channels_last=false"))
    assert "\n" not in str(err.value)
    for fine in (["trainer.channels_last=true"], ["basis.combine=stacked",
                                                   "trainer.channels_last=false"],
                 ["selection=none", "trainer.channels_last=false"]):
        validate(compose_cfg("selection=all", "basis.combine=split", "trainer.compile=true",
                             *fine))


# The resume hints, Hydra's errors as one line and the device rule, where a mutation test
# of resuming, hydra_errors and execution.device_problem found no test that failed
class _SweepHydra:
    def __init__(self, cwd, sweep_dir):
        self.cfg = OmegaConf.create({"runtime": {"cwd": str(cwd)}, "sweep": {"dir": sweep_dir}})

    def get(self):
        return self.cfg


def test_a_sweep_jobs_stop_names_the_sweeps_folder_quoted_for_the_shell(tmp_path, monkeypatch):
    monkeypatch.setattr(resuming, "in_sweep", lambda: True)
    monkeypatch.setattr(resuming, "HydraConfig", _SweepHydra(tmp_path, "multirun/x/2024-01-01"))
    cfg = OmegaConf.create({"name": "x", "trainer": {"resume": True}})
    said = resuming.how_to_go_on(tmp_path / "job", cfg, 1)
    override = f"hydra.sweep.dir={tmp_path}/multirun/${{name}}/2024-01-01"
    assert said == f"run the same command again with {shlex.quote(override)} to resume it"


def test_a_config_without_trainer_resume_gets_no_resume_flag(tmp_path):
    assert resuming.folder_override(tmp_path, OmegaConf.create({"name": "x"})) == \
        f"hydra.run.dir={tmp_path}"


class _Initialized:
    @staticmethod
    def initialized():
        return True


def test_a_broken_interpolation_is_named_by_the_override_that_references_it_exactly(
        monkeypatch):
    """The key that failed (logger.group) was not typed: the typed override that references
    ${see} is named, not one referencing ${seed}, and a ++ prefix is no part of its key."""
    cfg = OmegaConf.create({"seed": 1, "name": "${see}", "logger": {"group": "${name}"},
                            "selection": {"seed": "${seed}"}})
    with pytest.raises(Exception) as err:
        cfg.logger.group
    monkeypatch.setattr(hydra_errors, "HydraConfig", _Initialized)
    for typed in (["selection.seed=${seed}", "name=${see}"],
                  ["selection.seed=${seed}", "++name=${see}"]):
        monkeypatch.setattr(hydra_errors, "typed_overrides", lambda: typed)
        assert hydra_errors.interpolation_error_line(err.value) == \
            "Interpolation key 'see' not found (in name)"


def test_a_misplaced_key_is_never_pointed_at_hydras_own(repo):
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
            compose("train", overrides=["trainer.mode=x"])
    assert hydra_errors.hydra_error_line(err.value).startswith(
        "trainer.mode is not a config key (did you mean logger.mode?); valid keys here:")


def test_a_config_group_set_to_null_is_told_to_drop_the_override():
    assert override_checks.group_value_override(["model=null"]).endswith(
        "; drop the override for the default")


def test_plain_cuda_is_valid_on_a_machine_with_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert execution.device_problem("cuda") is None


@pytest.mark.parametrize("overrides, said", [
    (["basis.combine=auto", "trainer.deterministic=true"], True),
    (["basis.combine=auto"], False),
    (["basis.combine=stacked", "trainer.deterministic=true"], False),
])
def test_a_deterministic_run_that_chooses_forms_by_timing_is_told_it_may_not_repeat(
        compose_cfg, monkeypatch, caplog, overrides, said):
    """``combine=auto`` keeps the fastest form measured in the process: a deterministic run,
    or its resumption, may choose differently and round differently."""
    from basisconv import errors

    monkeypatch.setattr(errors, "SAID_ONCE", set())
    validate(compose_cfg("selection=all", *overrides))
    assert any(m.startswith("basis.combine=auto chooses each layer's form by timing")
               for m in caplog.messages) == said


@pytest.mark.parametrize("script, override", [
    ("train.py", "+experiment=baseline"), ("train.py", "+model=resnet8"),
    # found in review: the sensitivity config overrides selection itself, so Hydra let
    # that override win over the user's +selection=random, which ran sensitivity_budget
    ("sensitivity.py", "+selection=random")])
def test_a_config_group_added_with_plus_is_told_to_drop_the_plus(tmp_path, repo, script,
                                                                 override, script_starts):
    """Found in review: ``+experiment=baseline`` (the form Hydra's own docs use for an
    experiment group) was told "To override a value use 'override experiment: baseline'",
    a line of a YAML defaults list; on the command line it is ``experiment=baseline``."""
    done = script_starts.run(repo / "scripts" / script,
                             ["profile=smoke", "logger=none", override,
                              f"hydra.run.dir={tmp_path}/run"], cwd=os.getcwd(),
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    group, option = override[1:].split("=")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        f"error: {override}: {group} is in the config's defaults list already, so the + "
        f"(add) does not apply; choose it with {group}={option}, without the +"), done.stderr
    assert not (tmp_path / "run").exists()


def test_an_empty_cifar10_root_variable_is_named_not_an_override(compose_cfg, monkeypatch):
    """Found in review: ``CIFAR10_ROOT=`` (set but empty; the Makefile's ``?=`` keeps it)
    was "data.root is empty ...; give a path, or drop the override for the default", where
    no override was given and the default is that variable."""
    monkeypatch.setenv("CIFAR10_ROOT", "")
    with pytest.raises(ConfigError, match=r"^data.root is empty: the environment variable "
                                          r"CIFAR10_ROOT it reads is set but empty; set it"):
        validate(compose_cfg())
    with pytest.raises(ConfigError, match="drop the override for the default"):
        validate(compose_cfg("data.root="))  # (typed: the override is what to drop)


@pytest.mark.parametrize("folder", ["lr=0.1", "basis.size=0.25,seed=0", "it's", "réseau",
                                    # backslashes before a quote, or ending the value
                                    "it\\'s", "lr=0.1\\"])
def test_the_resume_hint_is_an_override_hydra_parses_back_to_the_folder(tmp_path, monkeypatch,
                                                                        folder):
    """Found in review: a run in ``hydra.run.dir='outputs/lr=0.1'`` stopped with "run the
    same command again with hydra.run.dir=.../lr=0.1", which Hydra cannot parse (an ``=``,
    ``,``, quote or non-ASCII letter needs Hydra's quotes as well as the shell's)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.create({"name": "x", "trainer": {"resume": True}})
    said = resuming.folder_override(tmp_path / folder, cfg)
    override, = shlex.split(said)
    assert OverridesParser.create().parse_override(override).value() == str(tmp_path / folder)
    monkeypatch.setattr(resuming, "in_sweep", lambda: True)
    monkeypatch.setattr(resuming, "HydraConfig", _SweepHydra(tmp_path / folder, "multirun/x/d"))
    override, = shlex.split(resuming.folder_override(tmp_path / "job", cfg))
    assert OverridesParser.create().parse_override(override).value() == (
        f"{tmp_path / folder}/multirun/${{name}}/d")


def test_the_packages_own_name_for_the_basis_size_points_to_its_key(compose_cfg, tmp_path, repo,
                                                                    script_starts):
    """Found in review: ``basis.num_basis=8`` (the layer's argument, and the name the run's
    own log gives: "num_basis=16 saves no compute") was "did you mean basis.combine?"."""
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["profile=smoke", "basis.num_basis=8",
                              f"hydra.run.dir={tmp_path}/run"], cwd=os.getcwd(),
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith(
        "error: basis.num_basis is not a config key (did you mean basis.size?)"), done.stderr
    with pytest.raises(ConfigError, match=r"^basis.num_basis \(did you mean basis.size\?\)"):
        validate(compose_cfg("+basis.num_basis=8"))


def test_the_k_of_first_k_points_to_the_selection_count(compose_cfg):
    """Found in review: ``selection.k=3`` (the k of ``selection=first_k``) was "did you mean
    selection.seed?"."""
    with pytest.raises(ConfigError, match=r"^selection.k \(did you mean selection.count\?\)"):
        validate(compose_cfg("selection=first_k", "+selection.k=3"))


@pytest.mark.parametrize("override, last", [("model=[resnet8,resnet20]", "resnet20"),
                                            ("selection=[all,none]", "none")])
def test_a_config_group_given_a_list_of_its_configs_is_one_line_not_their_merge(
        tmp_path, repo, override, last, script_starts):
    """Found in review: Hydra merges the configs a list names into one, each over the one
    before, so ``model=[resnet8,resnet20]`` (meant as a sweep of two models) trained
    ResNet-20 alone and ``selection=[all,none]`` the dense model, neither saying so."""
    group, _, options = override.partition("=")
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["profile=smoke", "logger=none", override,
                              f"hydra.run.dir={tmp_path}/run"], cwd=os.getcwd(),
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {override}: {group} is a config group and takes "
                                  f"one of its configs"), done.stderr
    assert f"-m {group}={options.strip('[]')}" in done.stderr and f"{group}={last}" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", [[], ["-m"]])
def test_a_config_group_given_twice_is_one_line_not_the_last_alone(tmp_path, repo, flag,
                                                                   script_starts):
    """Found in the sweep review: two presets combined as ``experiment=basis_all
    experiment=baseline`` trained the dense baseline alone (Hydra keeps the last choice of
    a group), saying nothing of the first, as a list of them did before it was refused."""
    done = script_starts.run(repo / "scripts" / "train.py",
                             [*flag, "profile=smoke", "logger=none", "experiment=basis_all",
                              "experiment=baseline",
                              f"hydra.{'sweep' if flag else 'run'}.dir={tmp_path}/run"],
                             cwd=os.getcwd(), env={**os.environ, "WANDB_MODE": "disabled"},
                             timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "experiment=basis_all and experiment=baseline: experiment is a config group " \
           "given twice" in done.stderr, done.stderr
    assert "-m experiment=basis_all,baseline" in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


def test_a_config_group_given_twice_the_same_or_in_other_places_is_not_refused():
    """The same config twice changes nothing, and a group put in two places (``@package``)
    is two choices, not one made twice."""
    from basisconv.override_checks import repeated_group_line

    is_model = lambda group: group == "model"  # noqa: E731
    assert repeated_group_line(["model=resnet8", "model=resnet8"], is_model) is None
    assert repeated_group_line(["model=resnet8", "+model@extra=resnet20"], is_model) is None
    assert repeated_group_line(["seed=0", "seed=1"], is_model) is None
    assert repeated_group_line(["model=resnet8", "model=resnet20"], is_model)


@pytest.mark.parametrize("override, key", [("+model@extra=[resnet8,resnet20]", "+model@extra"),
                                           ("model@net=[resnet8,resnet20]", "model@net")])
def test_a_listed_groups_advice_keeps_its_prefix_and_package(override, key):
    """Found in review: the advice dropped a ``+`` or ``@package`` from the key, so the
    sweep it named (``-m model=...``) chose another group's place than the one given."""
    from basisconv.override_checks import listed_group_line

    line = listed_group_line([override], lambda group: group == "model")
    assert f"sweep them with -m {key}=resnet8,resnet20; for one run, give one, e.g. " \
           f"{key}=resnet20" in line


def test_a_resume_hints_word_is_double_quoted_only_where_a_shell_expands_nothing_in_it():
    """Found in a mutation round: in double quotes an interactive bash expands ``!`` (history),
    as it does ``$``, backquotes and backslashes, so a folder holding one is single-quoted."""
    from basisconv.resuming import shell_word

    assert shell_word("hydra.run.dir='a b'") == "\"hydra.run.dir='a b'\""
    for word in ("hydra.run.dir='wow! b'", "hydra.run.dir='$x b'"):
        assert shell_word(word) == shlex.quote(word) and shlex.split(shell_word(word)) == [word]


def test_a_folder_with_an_edge_space_is_quoted_for_hydra():
    """Found in a mutation round: Hydra strips an unquoted value's edge spaces, so a folder
    ending in a space would be read back as another folder; quoted, it is itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from basisconv.resuming import hydra_value

    for folder in ("/tmp/run ", " run", "/tmp/a b"):
        override = OverridesParser.create().parse_override(f"k={hydra_value(folder)}")
        assert override.value() == folder


def test_a_config_group_given_a_list_of_one_config_is_not_refused():
    """Found in a mutation round: a list of one config merges nothing into it (Hydra loads
    that config), so only a list of two or more is refused."""
    from basisconv.override_checks import listed_group_line

    assert listed_group_line(["model=[resnet8]"], lambda group: group == "model") is None
    assert listed_group_line(["model=[resnet8,resnet20]"], lambda group: group == "model")


@pytest.mark.parametrize("override, advice", [
    (" =x", "write key=value, e.g. trainer.epochs=3"), ("a b=", "write key=value, e.g. "),
    ("name=résnet", "quote the value, e.g. \"name='résnet'\"")])
def test_an_override_hydra_cannot_parse_is_told_to_quote_only_a_value_it_has(override, advice):
    """Found in a mutation round: advice to quote the value is for a key=value whose value
    Hydra cannot read; one with a blank key or no value (" =x", which the keyless check
    lets by) is told to write key=value, not to quote "''"."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from basisconv.hydra_errors import hydra_error_line

    with pytest.raises(OverrideParseException) as err:
        OverridesParser.create().parse_overrides([override])
    assert advice in hydra_error_line(err.value)


def test_a_force_added_groups_advice_keeps_its_package():
    """Found in review: ``++model@net=resnet8`` was told to choose ``model=resnet8``, which
    puts the config in another place than the one given."""
    from basisconv.hydra_errors import hydra_error_line

    line = hydra_error_line(Exception("force-add of config groups is not supported: "
                                      "'++model@net=resnet8'"))
    assert line.startswith("++model@net=resnet8: model is a config group")
    assert "choose it with model@net=resnet8, without the ++" in line


def test_an_interval_sweep_is_one_line_naming_what_the_basic_sweeper_runs(tmp_path, repo,
                                                                         script_starts):
    """Found in the sweeps review: ``-m basis.size=interval(0.1,0.5)`` ended with Hydra's
    "BasicSweeper does not support sweep type : INTERVAL_SWEEP", naming neither the
    override nor what works. Where no override on the command line is the interval (a
    preset's ``hydra.sweeper.params``), the line says the sweep's interval."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from basisconv.hydra_errors import hydra_error_line

    sweep = tmp_path / "sweep"
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["-m", "profile=smoke", "logger=none", "basis.size=interval(0.1,0.5)",
                              f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: basis.size=interval(0.1,0.5): Hydra's sweeper "
                                  "(BasicSweeper) runs a list of values"), done.stderr
    assert "sweep a comma list (basis.size=0.1,0.5), range(start,stop,step) or " in done.stderr
    assert "choice(...), or sample the interval with a sweeper plugin (e.g. Optuna's" in (
        done.stderr)
    assert not sweep.exists()
    with pytest.raises(Exception) as err:  # a preset's sweep: not on the command line
        BasicSweeper.split_arguments(
            OverridesParser.create().parse_overrides(["seed=interval(0,3)"]), None)
    line = hydra_error_line(err.value, ["-m", "experiment=mine"])
    assert line.startswith("the sweep's interval(...): Hydra's sweeper (BasicSweeper) "), line
    assert "sweep a comma list (<key>=<a>,<b>)" in line, line


def test_a_sweep_refuses_what_every_job_would_refuse_before_the_first_job_runs(tmp_path, repo,
                                                                              script_starts):
    """Found in review: the command line's own checks (``hydra.job.chdir=true``, a group
    given a list of its configs) ran in each job of a sweep, not in the check of every job
    before the first: each job failed alone, the sweep's folder was left with a folder per
    job, and its summary said "the other jobs ran" and to run the sweep again in that
    folder."""
    for override in ("hydra.job.chdir=true", "selection=[all,none]"):
        sweep = tmp_path / override.partition("=")[0]
        done = script_starts.run(repo / "scripts" / "train.py",
                                 ["-m", "profile=smoke", "logger=none", "seed=0,1", override,
                                  f"hydra.sweep.dir={sweep}"], cwd=os.getcwd(),
                                 env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: the sweep job "), done.stderr
        assert "; nothing ran" in done.stderr and not sweep.exists(), done.stderr
        # our own line: Hydra has no fuller message to show (found in review: it said so)
        assert "BASISCONV_DEBUG" not in done.stderr


@pytest.mark.parametrize("overrides, key, job", [
    (["selection=first_k,sensitivity_budget", "sensitivity.source_checkpoint={missing}"],
     "sensitivity.source_checkpoint", "selection=sensitivity_budget "),
    (["selection=all", "basis=convert", "basis.size=0.25,0.5",
      "basis.source_checkpoint={missing}"], "basis.source_checkpoint", "selection=all ")])
def test_a_sweeps_missing_source_checkpoint_is_refused_before_the_first_job_runs(
        tmp_path, repo, overrides, key, job, script_starts):
    """Found in the sweep review: a sweep's source checkpoint was looked for only as its job
    built its model or estimate, so a misspelt path failed the sensitivity job after the
    sweep's first_k job had trained (each job of a basis=convert sweep failing alone). The
    job refused is one that reads it: the first_k job does not (one run of it warns), and
    was refused first (found in review)."""
    missing = tmp_path / "baseline" / "checkpoint.pt"
    sweep = tmp_path / "sweep"
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["-m", "profile=smoke", "logger=none", "trainer.epochs=1",
                              *(o.format(missing=missing) for o in overrides),
                              f"hydra.sweep.dir={sweep}"], cwd=os.getcwd(),
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: the sweep job "), done.stderr
    assert f"trainer.epochs=1 {job}" in done.stderr.split(": ")[1], done.stderr
    assert f"{key}={missing} does not exist; give the checkpoint.pt" in done.stderr
    assert "; nothing ran" in done.stderr and not sweep.exists(), done.stderr


def test_a_sweep_without_its_dataset_is_refused_before_the_first_job_runs(
        tmp_path, repo, script_starts):
    """Found in a new user's walk through the README: a training sweep whose data.root
    holds no CIFAR-10 (the default ./data on a fresh clone) started each job in turn, each
    failing with the not-found line and leaving its folder, then the sweep's summary line.
    Now one line, naming the fix, before any job."""
    sweep = tmp_path / "sweep"
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["-m", "experiment=baseline", "model=resnet8", "logger=none",
                              "trainer.epochs=1", "seed=0,1", f"data.root={tmp_path / 'data'}",
                              f"hydra.sweep.dir={sweep}"], cwd=os.getcwd(),
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: the sweep job "), done.stderr
    assert f"CIFAR-10 not found: data.root {tmp_path / 'data'} does not exist" in done.stderr
    assert "Point data.root" in done.stderr and "; nothing ran" in done.stderr
    assert not sweep.exists(), done.stderr


def test_a_sweep_job_run_again_in_its_folder_is_not_asked_for_its_dataset(tmp_path):
    """A job whose folder exists (a sweep run again: complete jobs read no data) says what
    it needs itself, as it did before the sweep looked for the dataset, and so does a job
    on a cluster's node; a new job here is refused."""
    from basisconv.sweep_checks import check_dataset_found

    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path), "subdir": "job"}},
                            "data": {"name": "cifar10", "download": False,
                                     "root": str(tmp_path / "data")}})
    with pytest.raises(ConfigError, match="CIFAR-10 not found"):
        check_dataset_found(cfg)
    (tmp_path / "job").mkdir()
    check_dataset_found(cfg)
    (tmp_path / "job").rmdir()  # a cluster's job: its node may see other folders
    cfg.hydra.launcher = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher"
                                      ".SlurmLauncher"}
    check_dataset_found(cfg)
    cfg.hydra.launcher._target_ = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    with pytest.raises(ConfigError, match="CIFAR-10 not found"):
        check_dataset_found(cfg)


@pytest.mark.parametrize("override, why", [
    ("selection=glob(sensitvity*)", "the configs of selection are all, base,"),
    ("seed=range(0)", "an empty range")])
def test_a_sweep_value_that_expands_to_nothing_is_one_line_not_a_sweep_of_no_job(
        tmp_path, repo, override, why, script_starts):
    """Found in the configs review: a misspelt glob (or an empty range) made Hydra launch
    0 jobs and exit with status 0, leaving a sweep folder with its multirun.yaml alone."""
    sweep = tmp_path / "sweep"
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["-m", "profile=smoke", "logger=none", override,
                              f"hydra.sweep.dir={sweep}"], cwd=os.getcwd(),
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: the sweep has no job: {override} gives no value ("
                                  f"{why}"), done.stderr
    assert not sweep.exists()


@pytest.mark.parametrize("flags, override, fix", [
    ([], "hydra.sweep.dir=multirun/x", "give hydra.run.dir=<folder> for one run"),
    (["-m"], "hydra.run.dir=outputs/x", "give hydra.sweep.dir=<folder> for a sweep")])
def test_the_run_folder_override_of_the_other_mode_is_refused_not_ignored(
        tmp_path, repo, flags, override, fix, script_starts):
    """Found in the configs review: Hydra reads hydra.sweep.dir under -m alone and
    hydra.run.dir without it, ignoring the other: one run given a sweep job's folder to
    resume trained from epoch 1 in a new outputs/<name>/<date>/, silently."""
    done = script_starts.run(repo / "scripts" / "train.py",
                             [*flags, "profile=smoke", "logger=none", "trainer.epochs=1",
                              override], cwd=tmp_path,
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {override} is read by ") and fix in done.stderr
    assert not list(tmp_path.iterdir())  # nothing made, neither folder
    shown = script_starts.run(repo / "scripts" / "train.py",
                              ["--cfg", "job", override], cwd=tmp_path,
                              env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert shown.returncode == 0, shown.stderr  # (showing the config runs nothing)


@pytest.mark.parametrize("line, said", [
    (["profile=smoke", "--cfg", "job", "seed=3"], "seed: 3"),
    (["profile=smoke", "-m", "logger=none", "seed=0,0"], "error: the sweep lists the job ")])
def test_overrides_on_both_sides_of_a_flag_are_all_read(tmp_path, repo, line, said,
                                                        script_starts):
    """Found in the sensitivity/cli review: Hydra's parser took the overrides before the
    first flag alone, so ``profile=smoke -m seed=0,1`` (a sweep added to a command) was
    argparse's usage, nine lines, and "unrecognized arguments: seed=0,1", naming no fix."""
    done = script_starts.run(repo / "scripts" / "train.py", line, cwd=tmp_path,
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert "unrecognized arguments" not in done.stderr, done.stderr
    if said.startswith("error: "):  # the sweep was read whole: its repeated job refused
        assert done.returncode == 2 and done.stderr.startswith(said), done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
    else:  # both sides of --cfg job: the profile's and the seed
        assert done.returncode == 0 and said in done.stdout, done.stderr
        assert "synthetic_train: 200" in done.stdout


@pytest.mark.parametrize("line", [
    ["seed=1", "-m"], ["-m", "seed=1"], ["seed=1", "--info"], ["seed=1", "--info", "config"],
    ["-i", "defaults", "seed=1"], ["-cn", "sensitivity", "seed=1"], ["seed=1", "-sc"],
    ["--cfg", "job", "seed=1"], ["seed=1", "--experimental-rerun", "config.pickle"],
    ["--", "seed=1"]])
def test_a_command_line_hydras_parser_reads_is_read_alike(line):
    """The scripts' parser (``cli.args_parser_intermixed``, overrides on both sides of a
    flag) reads every line Hydra's own reads as Hydra does: flags with and without their
    value (``--info``), short forms, overrides after a flag's value, ``--``."""
    from hydra._internal.utils import get_args_parser

    from basisconv import cli

    assert vars(cli.args_parser_intermixed().parse_args(line)) == vars(
        get_args_parser().parse_args(line))


def test_overrides_on_both_sides_of_a_flag_are_read_in_their_order():
    """What Hydra's parser refused ("unrecognized arguments") is read whole, in order: the
    last of two values of one key wins, as on any command line."""
    from basisconv import cli

    args = cli.args_parser_intermixed().parse_args(["profile=smoke", "seed=0", "-m", "seed=1"])
    assert args.multirun and args.overrides == ["profile=smoke", "seed=0", "seed=1"]


@pytest.mark.parametrize("line, said", [
    (["--cfg", "jbo"], "error: argument --cfg/-c: invalid choice: 'jbo' (choose from 'job'"),
    (["--no-such-flag", "profile=smoke"], "error: unrecognized arguments: --no-such-flag"),
    # found in review: an override after --info was read as what to show, and the line
    # said the choices but not why an override was taken for one
    (["--info", "seed=0"], "error: argument --info/-i: invalid choice: 'seed=0' (choose from "
                           "'all', 'config', 'defaults', 'defaults-tree', 'plugins', "
                           "'searchpath'); --info reads the word after it as what to show: "
                           "put the overrides first (seed=0 --info), or name what to show "
                           "(--info all seed=0)\n"),
    # found in the stop-85 review: a value holding a single quote is said by argparse in
    # double quotes, and the hint above was missing
    (["--info", "model.name='x'"], "error: argument --info/-i: invalid choice: "
                                   "\"model.name='x'\" (choose from 'all', 'config', "
                                   "'defaults', 'defaults-tree', 'plugins', 'searchpath'); "
                                   "--info reads the word after it as what to show: put the "
                                   "overrides first (model.name='x' --info), or name what to "
                                   "show (--info all model.name='x')\n")])
def test_a_flag_refused_by_the_parser_is_one_line(tmp_path, repo, line, said, script_starts):
    """Found in the sensitivity/cli review: a flag the parser refuses (a misspelt
    ``--cfg`` value, an unknown flag) was argparse's usage, eight lines, then its error."""
    done = script_starts.run(repo / "scripts" / "train.py", line, cwd=tmp_path,
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith(said), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize("flags", [["--multi"], ["++hydra.mode=MULTIRUN"],
                                   ["--config-dir={configs}", "experiment=sweep_mode"],
                                   ["--cfg=job"]])
def test_a_sweep_started_without_dash_m_keeps_its_sweep_folder_override(tmp_path, repo, flags,
                                                                       script_starts):
    """Found in review: the mode was read off the command line as -m alone, so a sweep
    started by Hydra's other ways (argparse's --multi, ++hydra.mode, a preset's
    hydra.mode: MULTIRUN) was refused its hydra.sweep.dir as one run's, and --cfg=job too."""
    configs = tmp_path / "configs"
    (configs / "experiment").mkdir(parents=True)
    (configs / "experiment" / "sweep_mode.yaml").write_text(
        "# @package _global_\nhydra:\n  mode: MULTIRUN\n")
    sweep = tmp_path / "sweep"
    done = script_starts.run(repo / "scripts" / "train.py",
                             [*(flag.format(configs=configs) for flag in flags), "profile=smoke",
                              "logger=none", "trainer.epochs=0", f"hydra.sweep.dir={sweep}"],
                             cwd=tmp_path, env={**os.environ, "WANDB_MODE": "disabled"},
                             timeout=120)
    if flags == ["--cfg=job"]:
        assert done.returncode == 0 and "epochs: 0" in done.stdout, done.stderr
    else:  # a sweep, whose job's value is refused (and nothing trains)
        assert done.returncode == 2 and done.stderr.startswith("error: the sweep job "), (
            done.stderr)
    assert not sweep.exists()


@pytest.mark.parametrize("override", ["~selection", "~logger", "selection.policy=???",
                                      "selection=all ~basis basis.fit=svd"])
def test_a_group_the_unread_warnings_read_removed_is_one_line_from_the_script(
        tmp_path, repo, override, script_starts):
    """Found in review: ``scripts/train.py ~selection`` (or ``~logger``) was an omegaconf
    MissingMandatoryValue traceback with exit status 1, and left its run folder: the
    warnings of unread overrides read ``selection.policy`` and ``logger.backend`` before the
    config check (in ``fit``) could say that the group is not set, as sensitivity.py says."""
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["profile=smoke", *override.split(), f"hydra.run.dir={tmp_path}/run"],
                             cwd=os.getcwd(), env={**os.environ, "WANDB_MODE": "disabled"},
                             timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "not set (a config group removed with ~, or a value given as ???)" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("fixed, swept, said", [
    # found in review: each of these trained one run once per value, unsaid (one run with
    # the key is warned of; a sweep's jobs say none of their warnings)
    (["experiment=basis_all"], ["selection.count=2", "selection.count=3"],
     "selection.count is swept over 2,3, but no job of the sweep reads it (selection=all "
     "does not read it): each value trains the same run again"),
    (["experiment=basis_selected"], ["selection.threshold=0.005", "selection.threshold=0.01"],
     "(selection=sensitivity_budget does not read it)"),
    (["experiment=baseline"], ["basis.size=0.25", "basis.size=0.5"],
     "(selection=none converts no layer)"),
    (["experiment=baseline"], ["basis=scratch", "basis=warmup"], "basis is swept over"),
    (["selection=all"], ["basis.fit=pivots", "basis.fit=svd"], "train from scratch"),
    (["logger=none"], ["logger.project=a", "logger.project=b"], "logger=none logs to no"),
    # left at stop 72: the sensitivity group, read only by the runs an estimate chooses for
    (["experiment=basis_all"], ["sensitivity.finetune_epochs=1",
                                "sensitivity.finetune_epochs=2"],
     "(selection=all takes no sensitivity estimate"),
    (["experiment=basis_selected"], ["sensitivity.search_subset_size=2",
                                     "sensitivity.search_subset_size=3"],
     "(only scripts/exhaustive_search.py reads it)"),
    (["experiment=basis_selected"], ["sensitivity.finetune_epochs=1",
                                     "sensitivity.finetune_epochs=2"], None),
    # read by some job: a sweep gives it to the others on purpose
    (["selection=none,all"], ["basis.size=0.25", "basis.size=0.5"], None),
    (["selection=random"], ["selection.seed=1", "selection.seed=2"], None),
    (["selection=first_k"], ["selection.count=2", "selection.count=3"], None),
    (["experiment=basis_all"], ["basis.size=0.25", "basis.size=0.5"], None),
    (["experiment=baseline"], ["seed=0", "seed=1"], None),
    # one value, given to every job and read by none: its single run's warning, which each
    # job of a sweep leaves unsaid (found in review: -m seed=0,1 basis.size=0.25 was silent)
    (["experiment=basis_all", "selection.count=2"], ["seed=0", "seed=1"],
     "selection.count=2 is given to every job of the sweep, but no job reads it (selection=all "
     "does not read it); choose what reads it, or drop it"),
    (["basis.size=0.25"], ["seed=0", "seed=1"], "basis.size=0.25 is given to every job of"),
    # one value read by some job
    (["selection=none,all", "basis.size=0.25"], ["seed=0", "seed=1"], None)])
def test_a_key_swept_that_no_job_of_the_sweep_reads_is_warned_before_it_runs(
        compose_cfg, caplog, fixed, swept, said):
    from basisconv.unread import warn_keys_no_sweep_job_reads

    jobs = []
    for value in swept:
        for option in fixed[0].partition("=")[2].split(",") if "," in fixed[0] else [None]:
            overrides = [fixed[0].partition("=")[0] + "=" + option if option else fixed[0],
                         *fixed[1:], value]
            jobs.append((overrides, compose_cfg(*overrides)))
    with caplog.at_level("WARNING", logger="basisconv.unread"):
        warn_keys_no_sweep_job_reads(jobs)
    warnings = [r.getMessage() for r in caplog.records if r.name == "basisconv.unread"]
    assert (warnings == []) if said is None else (len(warnings) == 1 and said in warnings[0])


def test_a_sweep_says_before_its_first_job_that_no_job_reads_a_swept_key(tmp_path, repo,
                                                                         script_starts):
    done = script_starts.run(repo / "scripts" / "train.py",
                             ["-m", "experiment=basis_all", "selection.count=2,3", "profile=smoke",
                              "model=resnet8", "logger=none", "trainer.epochs=1",
                              "data.synthetic_train=50", "data.synthetic_test=10",
                              f"hydra.sweep.dir={tmp_path}/sweep"], cwd=os.getcwd(),
                             env={**os.environ, "WANDB_MODE": "disabled"}, timeout=300)
    assert done.returncode == 0, done.stderr
    said = (done.stdout + done.stderr).split("Launching")[0]
    assert "selection.count is swept over 2,3, but no job of the sweep reads it" in said


def test_the_exhaustive_search_is_not_refused_a_count_it_does_not_read(compose_cfg, capsys):
    """Found in review: the check above, run by ``exhaustive_search.py`` too (and by
    scripts/reproduce.sh's check of its ``OVERRIDES`` on the protocol's search row, ResNet-8:
    7 candidates), refused ``selection.count=8``, which the search does not read (it scores
    the ``sensitivity.search_subset_size`` least sensitive layers, and says the count
    unread); ``scripts/sensitivity.py``, which picks that many layers, still refuses it."""
    from basisconv.config_checks import validate_estimate, validate_search
    from basisconv.reproduce import check_overrides

    cfg = compose_cfg("model=resnet8", "selection=first_k", "selection.count=8")
    validate_search(cfg)
    with pytest.raises(ConfigError, match=r"^selection.count=8; there are 7 candidate layers"):
        validate_estimate(cfg)
    check_overrides("quick", ["selection.count=8", "data.download=true"])
    assert "error" not in capsys.readouterr().err
