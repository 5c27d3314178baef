"""The schema of every config group, as Hydra structured configs.

The dataclasses give the keys and their types; the YAML files under ``configs/`` give the
values (``MISSING`` here means: set in YAML), so there is one place to read them. A
misspelt key or a value of the wrong type fails when the config is composed, before
anything runs; what a schema cannot say (keys added with ``+``, ranges, names, the layers
of the model) :mod:`basisconv.config_checks` checks. Kept apart from those checks so that
the keys, the resolvers the YAML files call (``job_folder``, ``choice``, ``profile_results``)
and the values a choice key takes read in one short file.
Importing this module registers the schema with Hydra's ConfigStore as ``train_schema``
(and ``scripts/analyze.py``'s as ``analyze_schema``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from .data import NUM_CLASSES
from .execution import AMP_DTYPES
from .selection_checks import SelectionConfig


@dataclass
class ModelConfig:
    name: str = MISSING
    width: float = MISSING


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = MISSING
    num_classes: int = MISSING
    download: bool = MISSING
    verify_md5: bool = MISSING
    train_subset: Any = MISSING  # null, an int count or a float fraction
    test_subset: Any = MISSING
    crop_padding: int = MISSING
    flip: bool = MISSING
    synthetic_train: int = MISSING
    synthetic_test: int = MISSING


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING
    weight_decay: float = MISSING
    schedule: str = MISSING
    warmup_fraction: float = MISSING
    label_smoothing: float = MISSING
    amp: str = MISSING
    channels_last: bool = MISSING
    compile: bool = MISSING
    compile_mode: str = MISSING  # torch.compile mode; reduce-overhead = CUDA graphs
    cuda_graphs: bool = MISSING  # replay each training and evaluation step as CUDA graphs
    device: str = MISSING
    threads: Optional[int] = MISSING
    deterministic: bool = MISSING
    progress: bool = MISSING
    checkpoint: bool = MISSING
    checkpoint_every_s: float = MISSING
    resume: bool = MISSING
    collective_timeout_s: float = MISSING


@dataclass
class LoggerConfig:
    backend: str = MISSING
    mode: str = MISSING
    project: str = MISSING
    entity: Optional[str] = MISSING
    group: Optional[str] = MISSING
    tags: list[str] = MISSING
    init_timeout_s: float = MISSING
    finish_timeout_s: float = MISSING


@dataclass
class BasisConfig:
    size: Any = MISSING  # an int count or a float fraction of each layer's out_channels
    init: str = MISSING
    source_checkpoint: Optional[str] = MISSING
    dense_warmup_epochs: int = MISSING
    coefficient_update_every: int = MISSING
    combine: str = MISSING
    fuse_norm: bool = MISSING
    coefficient_rank: Optional[int] = MISSING
    share_coefficients: bool = MISSING
    coefficient_l1: float = MISSING
    only_where_saves: bool = MISSING
    fit: str = "pivots"  # init=convert and the sensitivity probe: pivots | svd
    frobenius_decay: bool = False  # weight decay on the computed weight, not the factors


@dataclass
class SensitivityConfig:
    pretrain_epochs: int = MISSING
    source_checkpoint: Optional[str] = MISSING
    finetune_epochs: int = MISSING
    finetune_lr: float = MISSING
    val_size: Any = MISSING  # held-out training images: a count or a fraction
    layers: list[str] = MISSING  # candidates: ["all"] or names/patterns
    cache_dir: str = MISSING
    recompute: bool = MISSING
    seed: int = MISSING  # pretraining, held-out split and fine-tune batches
    noise_repeats: int = MISSING  # extra reference fine-tunes that measure the noise
    drop_noise_layers: int = 0  # layers fine-tuned again under those orders: drops' noise
    search_subset_size: int = MISSING  # exhaustive search: size of the subsets
    search_max_subsets: int = MISSING  # refuse a search larger than this
    restore_from: Optional[str] = MISSING  # a published sensitivity record: refills the cache
    workers: int = MISSING  # fine-tunes at once, in that many processes


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    basis: BasisConfig = field(default_factory=BasisConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    name: str = MISSING  # experiment name: the wandb group and the output folder
    seed: int = MISSING
    publish: Optional[str] = MISSING  # also write the complete record to this .json file


@dataclass
class AnalysisWandbConfig:
    project: str = MISSING
    entity: Optional[str] = MISSING


@dataclass
class AnalysisConfig:
    """``scripts/analyze.py``'s keys (``configs/analysis/analyze.yaml``): ``runs_dir=null``
    was a TypeError deep in the analysis, and a key added with ``+`` was taken silently."""
    profile: str = MISSING
    source: str = MISSING  # local | wandb
    runs_dir: str = MISSING
    out_dir: str = MISSING
    wandb: AnalysisWandbConfig = field(default_factory=AnalysisWandbConfig)


ConfigStore.instance().store(name="train_schema", node=TrainConfig)
ConfigStore.instance().store(name="analyze_schema", node=AnalysisConfig)


def job_folder(overrides: str) -> str:
    """The folder name of a sweep job (``hydra.sweep.subdir`` in ``train.yaml``): its
    overrides as Hydra's ``override_dirname`` lists them (sorted, so their order on the
    command line does not matter). A job gets the same folder on every run of its sweep,
    whatever other values the sweep lists, so running a sweep again, extended or
    reordered, resumes or skips each job in its own folder (a folder per job number gave a
    job another job's folder). Characters a folder name cannot hold become ``_``, and a
    name too long for a file system (255 bytes) is cut; either way a hash of the overrides
    follows, so that two jobs never share a folder."""
    if not overrides:
        return "defaults"
    name = re.sub(r"[^\w.,=+\-\[\]]", "_", overrides, flags=re.ASCII)
    return capped(name, overrides, limit=200 if name == overrides else 0)


def capped(name: str, whole: str | None = None, limit: int = 200) -> str:
    """``name`` as a file name can hold it (255 bytes, with room for a suffix): longer than
    ``limit``, its first 187 characters and a hash of ``whole`` (the name itself unless
    given), so that two long names never become one."""
    if len(name) <= limit:
        return name
    return f"{name[:187]}-{hashlib.sha256((whole or name).encode()).hexdigest()[:12]}"


def chosen_option(group: str, key: str, *, _root_: DictConfig) -> Any:
    """The option of config group ``group`` the config was composed with
    (``selection=blocks``: ``blocks``), for a preset's ``name``: ``${selection.policy}``
    would name a ``selection=blocks`` run (policy ``list``) ``-basis-list-``, as a
    ``selection=list`` run of other layers. The value of ``group.key``
    instead where an override gives that key (``selection.policy=random`` over the preset's
    ``sensitivity_budget``: the option no longer says what the run does, and its name was
    that row's), or where no option is known (a config composed without Hydra's node:
    only checked). Read from the config's own Hydra node (a sweep's job checked before it
    runs), else from the running job's."""
    value = OmegaConf.select(_root_, f"{group}.{key}")
    hydra = OmegaConf.select(_root_, "hydra", default=None)
    if hydra is None and HydraConfig.initialized():
        hydra = HydraConfig.get()
    if hydra is None:
        return value
    overrides = OmegaConf.select(hydra, "overrides.task", default=None) or []
    if any(re.fullmatch(rf"[+~]*{group}\.{key}=.*", str(o)) for o in overrides):
        return value
    return (OmegaConf.select(hydra, "runtime.choices", default=None) or {}).get(group) or value


def profile_results(profile: str) -> str:
    """The folder of a profile's published records and tables as scripts/reproduce.sh keeps
    them (``analyze.yaml``'s ``runs_dir`` and ``out_dir``): ``results/<profile>``, committed;
    the smoke profile's, a CI-scale check never published, ``outputs/smoke/results``
    (git-ignored). Found in review: ``analyze.py profile=smoke`` run by hand wrote its tables
    into ``results/smoke/``."""
    return "outputs/smoke/results" if profile == "smoke" else f"results/{profile}"


if not OmegaConf.has_resolver("job_folder"):
    OmegaConf.register_new_resolver("job_folder", job_folder)
if not OmegaConf.has_resolver("choice"):
    OmegaConf.register_new_resolver("choice", chosen_option)
if not OmegaConf.has_resolver("profile_results"):
    OmegaConf.register_new_resolver("profile_results", profile_results)

#: The values each choice key takes (:mod:`basisconv.config_checks` refuses any other).
AMP = tuple(AMP_DTYPES)
DATASETS = tuple(NUM_CLASSES)
BASIS_INIT = ("scratch", "convert")
LOGGER_BACKENDS = ("wandb", "none")
LOGGER_MODES = ("offline", "online", "disabled")
#: wandb's other names for them (its WANDB_MODE accepts these too)
LOGGER_MODE_ALIASES = {"dryrun": "offline", "run": "online"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAPHING_COMPILE_MODES = ("reduce-overhead", "max-autotune")  # these capture CUDA graphs
#: the ``sensitivity`` keys only ``scripts/exhaustive_search.py`` reads: a training run
#: given one warns it is unread (:mod:`basisconv.unread`), and the estimate's check of its
#: folder's earlier record leaves them out (:func:`basisconv.sensitivity.run_sensitivity`)
SEARCH_ONLY = ("search_subset_size", "search_max_subsets")
