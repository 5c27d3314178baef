"""The cache key of a sensitivity table, what makes two estimates the same: every setting
that changes a table and nothing that does not (:func:`key_fields`), the readable key
(:func:`cache_key`) and the folder a key's table, record and kept fine-tunes are under
(:func:`cache_dir`).

Apart from :mod:`basisconv.sensitivity_cache`, which keeps, reads and checks the table in
that folder: the key is the config's alone (no table, no record), and it is read where no
table is (``reproduce.sh``'s checks, :mod:`basisconv.reproduce`; the estimate's record and
kept work, :mod:`basisconv.sensitivity_estimate` and :mod:`basisconv.search`). Nothing here
imports the cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .cifar10_location import absolute_root
from .errors import ConfigError
from .records import file_digest
from .time_budget import readable_key


#: ``sensitivity.noise_repeats`` of every table cached before the setting joined the key
#: (the configs' default): tables made with it keep their keys.
UNKEYED_NOISE_REPEATS = 2


def key_fields(cfg: DictConfig) -> dict[str, Any]:
    """Everything that changes a sensitivity table (and nothing that does not, such as
    the root of md5-checked data, the logger or speed options).

    Why it differs from the two other caches' keys: one table is reused on any machine,
    so no hardware, device, threads or torch version, which the layer timings
    (:func:`basisconv.time_budget.key_fields`) are made of and the kept work
    (:func:`basisconv.progress.conditions`, a folder inside this key's) is kept under; no
    ``basis.share_coefficients`` (a probe converts one layer, which has none to share) nor
    ``basis.only_where_saves`` (the candidates are always the layers where a basis saves
    compute, :func:`~basisconv.candidates.layer_savings`).

    A setting (or a change of the code) that joined the key after tables were cached is
    added only where it applies, so that the other keys stay valid: the key is kept byte
    for byte, field order included."""
    estimate = _estimate_fields(cfg)  # (before the data's: the error it may raise comes first)
    return {
        "model": _picked(cfg.model, ["name", "width"]),
        "basis": _basis_fields(cfg),
        "data": _data_fields(cfg),
        "sensitivity": estimate,
        "trainer": _picked(cfg.trainer, ["batch_size", "lr", "momentum", "nesterov",
                                         "weight_decay", "schedule", "warmup_fraction",
                                         "label_smoothing", "amp"]),
        "seed": cfg.sensitivity.seed,
    }


def _picked(node: DictConfig, keys: list[str]) -> dict[str, Any]:
    """The resolved values of ``keys`` in ``node``, in that order."""
    values = OmegaConf.to_container(node, resolve=True)
    return {k: values[k] for k in keys}


def _basis_fields(cfg: DictConfig) -> dict[str, Any]:
    """The basis layers a probe converts to, and how it counts what they save."""
    basis = _picked(cfg.basis, ["size", "combine", "coefficient_rank"])
    if cfg.basis.get("fuse_norm"):  # only when on, so that earlier keys stay valid
        basis["fuse_norm"] = True
    if cfg.basis.get("fit", "pivots") != "pivots":  # how each layer is fitted (likewise)
        basis["fit"] = cfg.basis.fit
    if cfg.basis.get("frobenius_decay"):  # the fine-tunes' weight decay (likewise)
        basis["frobenius_decay"] = True
    if basis.get("fuse_norm") or basis["coefficient_rank"]:
        # the only layers with costs paid once per batch, whose savings per image are now
        # counted at the training batch: tables counted at one image are not reused
        basis["savings_per_image_at"] = "trainer.batch_size"
    return basis


def _estimate_fields(cfg: DictConfig) -> dict[str, Any]:
    """The estimate's own budget: the dense model it starts from, its fine-tunes, its
    noise yardsticks and the layers it probes."""
    estimate = _picked(cfg.sensitivity, ["pretrain_epochs", "source_checkpoint",
                                         "finetune_epochs", "finetune_lr", "val_size",
                                         "layers"])
    source = estimate["source_checkpoint"]
    if source and Path(source).is_file():
        estimate["source_checkpoint"] = _checkpoint_digest(source)
    # the noise yardstick's repeats, only when not the number earlier keys were made with
    if cfg.sensitivity.noise_repeats != UNKEYED_NOISE_REPEATS:
        estimate["noise_repeats"] = cfg.sensitivity.noise_repeats
    if cfg.sensitivity.get("drop_noise_layers"):  # (likewise: only when measured)
        estimate["drop_noise_layers"] = cfg.sensitivity.drop_noise_layers
    # the pretraining's schedule changed twice; tables made before are not reused, other
    # keys stay valid: under cosine it warms up since 2f730ef (it did not before), and
    # one-cycle without a warm-up anneals from lr since 0aab165 (one step in, before)
    pretrained_here = not estimate["source_checkpoint"] and estimate["pretrain_epochs"] > 0
    schedule, warmup = cfg.trainer.schedule, cfg.trainer.warmup_fraction
    if pretrained_here and schedule == "cosine" and warmup > 0:
        estimate["pretrain_warmup"] = True
    if pretrained_here and schedule == "onecycle" and warmup == 0:
        estimate["onecycle_from_lr"] = True
    return estimate


def _checkpoint_digest(source: str) -> str:
    """A source checkpoint as the key knows it: its weights, not its path (a run's
    checkpoint.pt changes at the same path with each epoch it trains, or a rerun there, and
    one file named two ways is one source)."""
    try:
        return f"sha256:{file_digest(source)}"
    except OSError as err:  # (a trace, from reproduce.sh's check of its OVERRIDES too)
        raise ConfigError(f"sensitivity.source_checkpoint={source} cannot be read "
                          f"({type(err).__name__}: {err.strerror or err}); point "
                          f"sensitivity.source_checkpoint at the checkpoint.pt of a "
                          f"trained dense run") from None


def _data_fields(cfg: DictConfig) -> dict[str, Any]:
    """The training images the estimate sees (its held-out split is made from them)."""
    data = _picked(cfg.data, ["name", "train_subset", "crop_padding", "flip", "synthetic_train",
                              "num_classes"])
    if cfg.data.name == "stripes":  # one draw makes train and test images: the test count
        data["synthetic_test"] = cfg.data.synthetic_test  # changes the training images too
    elif not cfg.data.verify_md5:  # not the published CIFAR-10 (your own data in its format):
        # known by its folder, as resuming knows it (same_run.same_data)
        data["root"] = str(absolute_root(cfg.data.root))
    return data


def cache_key(cfg: DictConfig) -> str:
    """A readable, stable key: ``<model>-w<width>-m<size>-<hash of key_fields>``."""
    return readable_key(cfg, key_fields(cfg))


def cache_dir(cfg: DictConfig) -> Path:
    """The folder this key's table and record are cached in, under ``sensitivity.cache_dir``."""
    return Path(cfg.sensitivity.cache_dir) / cache_key(cfg)
