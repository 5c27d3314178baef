"""Where a sensitivity table is kept, and how a kept one is found, checked and trusted:
the table's CSV bytes, the checks a cached table and its record pass before a run chooses
from it. The key and the folder it is kept in are :mod:`basisconv.sensitivity_key`'s; the
published record (``sensitivity.restore_from``) that fills an empty cache on another
machine is :mod:`basisconv.sensitivity_published`'s, which checks its record here too.

Apart from :mod:`basisconv.sensitivity`, which computes the table (the estimate,
:mod:`basisconv.sensitivity_estimate`) and uses it (choosing layers,
``scripts/sensitivity.py``): nothing here trains or estimates, and nothing here calls back
into either; the exhaustive search checks the record of the table it reuses here too.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any, TYPE_CHECKING

from omegaconf import DictConfig

from .errors import ConfigError, WriteError, one_line
from .network import architecture_digest
from .records import (ABSENT, commit_name, field_at, git_commit, of_type, write_bytes_atomic,
                      write_json_atomic)
from .selection import TABLE_FLOAT_FORMAT
from .sensitivity_key import cache_dir, cache_key

if TYPE_CHECKING:  # pandas (half a second) is imported where a table is read: a process
    import pandas as pd  # that reads none (most training runs) starts without it

log = logging.getLogger(__name__)

TABLE = "sensitivity.csv"
RECORD = "sensitivity.json"
COLUMNS = ("layer", "position", "shape", "num_basis", "reconstruction_error",
           "converted_accuracy", "accuracy", "loss", "accuracy_drop", "loss_increase",
           "params_saved", "flops_saved", "forward_flops_saved", "seconds")


# ----------------------------------------------------------------------------- cache
#: The columns a cached table holds as numbers (one that holds text there is refused).
_NUMERIC = tuple(c for c in COLUMNS if c not in ("layer", "shape"))


def table_csv(table: pd.DataFrame) -> bytes:
    """The bytes a table is cached (and written) as."""
    return table.to_csv(index=False, float_format=TABLE_FLOAT_FORMAT).encode()


def table_from_csv(data: bytes) -> pd.DataFrame:
    """The table that :func:`table_csv`'s bytes hold (its numbers as
    :data:`~basisconv.selection.TABLE_FLOAT_FORMAT` keeps them)."""
    import pandas as pd
    return pd.read_csv(io.BytesIO(data))


def cache(folder: Path, data: bytes, record: dict) -> None:
    """Keep a new estimate for the runs after this one. A cache that cannot be written (a
    full disk) is a warning, not the end of the run that paid for the estimate: this run
    uses its table, the next estimates it again (a half-written pair is removed, so it is
    not read as a corrupt cache)."""
    try:
        write_bytes_atomic(folder / TABLE, data)  # first: a record has its table
        write_json_atomic(folder / RECORD, record)
    except WriteError as err:
        for name in (RECORD, TABLE):
            (folder / name).unlink(missing_ok=True)
        log.warning("sensitivity: the estimate could not be cached (%s): this run uses it, "
                    "the next one with this key estimates it again", err)


#: The fields of an estimate's record (a cached table's, a published record's cache) that
#: its readers take (the run's summary, the search, the reuse line), each with the types
#: :func:`~basisconv.records.of_type` takes there (``None``: where an estimate writes a
#: null); a dotted name is a field inside a field (the noise repeats :func:`load_cached`
#: reads in ``config.sensitivity``, the commit :func:`code_note` reads in
#: ``provenance.git``, the spreads the search compares accuracies with), listed after it.
#: :data:`ESTIMATE_FIELDS` are those every estimate's record holds.
RECORD_FIELDS = {"dense": (dict,), "pretrained": (dict,), "reference": (dict,),
                 "provenance": (dict,), "seconds": (float,), "config": (dict, None),
                 "noise": (dict, None), "drop_noise": (dict, None),
                 "config.sensitivity": (dict,), "provenance.git": (dict,),
                 "provenance.git.commit": (str, None), "noise.accuracy_std": (float,),
                 "drop_noise.accuracy_std": (float,)}
ESTIMATE_FIELDS = ("dense", "pretrained", "reference", "provenance", "seconds")

#: What every refusal of a cached table names as its fix.
_CACHE_FIX = "delete that folder or run with sensitivity.recompute=true"


def damaged_fields(record: dict, required: tuple[str, ...] = ()) -> list[str]:
    """The fields of an estimate's ``record`` that are missing (of ``required``) or of
    another type than its readers take (found in review: a hand-edited one ended them in a
    KeyError or AttributeError trace, the search after all its subsets)."""
    return [name for name in required if name not in record] + [
        name for name, kinds in RECORD_FIELDS.items()
        if (value := field_at(record, name)) is not ABSENT
        and not any(of_type(value, kind) for kind in kinds)]


def check_estimate_record(cfg: DictConfig, record: dict,
                          fields: tuple[str, ...] = ESTIMATE_FIELDS) -> None:
    """Refuse, with the fix, a reused table whose record is damaged in ``fields`` (which
    every estimate's holds) or in the type of another field its readers take."""
    damaged = damaged_fields(record, fields)
    if damaged:
        raise ConfigError(f"the cached sensitivity table's record {cache_dir(cfg) / RECORD} "
                          f"is damaged (its {', '.join(damaged)} missing or of another type); "
                          f"{_CACHE_FIX}")


def load_cached(cfg: DictConfig) -> tuple[pd.DataFrame, dict] | None:
    """The cached table and its record, or ``None`` when there is none for this key.

    The record holds the table's row count and the sha256 of its CSV bytes; a table that
    does not match them (rows lost, a cell changed) is refused. A cache written before
    records held them (before commit 1b1da0d) loads, logged as unverified. The checks run
    in this order, and the first that fails is the refusal: the pair is read, it is this
    key's (every column, the key), then the record's own checks, then the table's."""
    folder = cache_dir(cfg)
    cached = _read_cached(folder)
    if cached is None:
        return None
    record, data, table = cached
    missing = set(COLUMNS) - set(table.columns)
    if missing or not isinstance(record, dict) or record.get("key") != cache_key(cfg):
        raise ConfigError(f"the cached sensitivity table in {folder} is incomplete or was made "
                          f"for another key; {_CACHE_FIX}")
    _check_cached_record(cfg, folder, record)
    _check_cached_table(folder, record, data, table)
    return table, record


def _read_cached(folder: Path) -> tuple[Any, bytes, pd.DataFrame] | None:
    """The record, the table's bytes and the table cached in ``folder``, as read (not yet
    checked), or ``None`` when it holds no record."""
    if not (folder / RECORD).exists():
        return None
    try:
        record = json.loads((folder / RECORD).read_text())
        data = (folder / TABLE).read_bytes()
        return record, data, table_from_csv(data)
    except (OSError, ValueError) as err:
        if isinstance(err, FileNotFoundError) and not (folder / RECORD).exists():
            # removed while read (a recompute, record first, under the lock this reader
            # takes next): no table, the caller waits for the new one
            return None
        raise ConfigError(f"the cached sensitivity table in {folder} is unreadable "
                          f"({one_line(err)}); {_CACHE_FIX}") from None


def _check_cached_record(cfg: DictConfig, folder: Path, record: dict) -> None:
    """Refuse a cached record of the right key that does not fit ``cfg`` all the same:
    fields of another type than its readers take, or made before a setting or the model's
    definition that the key leaves out changed."""
    malformed = damaged_fields(record)  # (its readers check what they need present)
    if malformed:
        raise ConfigError(f"the cached sensitivity table's record {folder / RECORD} is damaged "
                          f"({', '.join(malformed)} of another type); {_CACHE_FIX}")
    # a table cached before noise_repeats joined the key has this key whatever its repeats
    made = ((record.get("config") or {}).get("sensitivity") or {}).get("noise_repeats")
    if made is not None and made != cfg.sensitivity.noise_repeats:
        raise ConfigError(f"the cached sensitivity table in {folder} was made with "
                          f"sensitivity.noise_repeats={made}, not "
                          f"{cfg.sensitivity.noise_repeats} (before that setting joined the "
                          f"cache key); {_CACHE_FIX}")
    # the key names the model, not its definition: a table of an edited model file (another
    # layer's channels, a renamed layer) would choose as if for the model it was made for
    made_of = record.get("architecture")  # (tables cached before it was recorded: unchecked)
    if made_of is not None and made_of != architecture_digest(cfg):
        raise ConfigError(f"the cached sensitivity table in {folder} was made for another "
                          f"definition of model {cfg.model.name} (its layers differ from the "
                          f"model built now: an edited model file?); {_CACHE_FIX}")


def _check_cached_table(folder: Path, record: dict, data: bytes, table: pd.DataFrame) -> None:
    """Refuse a cached table that is not the one its ``record`` was written with (its row
    count, the sha256 of its bytes ``data``), or that holds text where numbers go."""
    import pandas as pd
    expected = record.get("table_sha256")
    if expected is None:
        log.warning("sensitivity: the cached table %s has no checksum (written by an older "
                    "basisconv); using it unverified", folder / TABLE)
    elif hashlib.sha256(data).hexdigest() != expected or len(table) != record.get("table_rows"):
        raise ConfigError(f"the cached sensitivity table {folder / TABLE} is damaged ({len(table)} "
                          f"rows, record says {record.get('table_rows')}; its sha256 does not "
                          f"match {RECORD}); {_CACHE_FIX}")
    bad = [c for c in _NUMERIC if not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        raise ConfigError(f"the cached sensitivity table {folder / TABLE} has non-numeric "
                          f"values in {', '.join(bad)}; {_CACHE_FIX}")


def code_note(record: dict) -> str:
    """What a reused table's reader should know of the code that estimated it: the key
    holds every setting that shapes the table, but not the code (a key with the commit
    would set aside each published estimate at every commit), so a table estimated by other
    code is named as such, with how to estimate it again; "" when the code is this one or
    either is unknown."""
    made = ((record.get("provenance") or {}).get("git")) or {}
    now = git_commit()
    if not made.get("commit") or not now.get("commit") or (
            made.get("commit"), made.get("diff_sha256")) == (now["commit"], now.get("diff_sha256")):
        return ""
    if made["commit"] == now["commit"]:  # (else "abc1234-dirty (this code: abc1234-dirty)")
        differs = ("with other uncommitted changes than this code's"
                   if made.get("dirty") and now.get("dirty") else
                   "with uncommitted changes this code lacks" if made.get("dirty") else
                   "without this code's uncommitted changes")
        return (f", estimated at commit {commit_name(made)[:7]} {differs}; "
                f"sensitivity.recompute=true estimates it again with this code")
    return (f", estimated at commit {commit_name(made)} (this code: {commit_name(now)}); "
            f"sensitivity.recompute=true estimates it again with this code")
