"""A sensitivity table restored from its protocol's published record
(``sensitivity.restore_from``: ``results/<profile>/runs/sensitivity.json``, written on another
machine) instead of estimated again: whether the published table differs from the cached
one (:func:`published_differs`), a ``restore_from`` that names no file said once
(:func:`say_a_missing_record`), and the empty cache filled from the record
(:func:`restore_published`).

Apart from :mod:`basisconv.sensitivity_cache`, which it fills and reads through, and which
calls nothing here: the cache reads and checks a table kept on this machine, this reads
another machine's, and :mod:`basisconv.sensitivity` chooses between them under the cache
folder's lock.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from .errors import ConfigError, one_line
from .records import KIND_WORDS, read_record, write_bytes_atomic, write_json_atomic
from .sensitivity_cache import (COLUMNS, ESTIMATE_FIELDS, RECORD, TABLE, damaged_fields,
                                load_cached, table_csv)
from .sensitivity_key import cache_dir, cache_key

if TYPE_CHECKING:  # pandas (half a second) is imported where a table is read
    import pandas as pd

log = logging.getLogger(__name__)


def published_differs(cfg: DictConfig, cached: dict) -> bool:
    """Whether the published record at ``sensitivity.restore_from`` holds another table of
    this key than the cache's record ``cached``: two machines of one protocol each
    estimated the table (the key does not name the machine or thread count, which change
    it), and after a merge one was published. Else each machine's runs keep choosing from
    its own, and one table row mixes layer sets chosen from two tables."""
    path = cfg.sensitivity.restore_from
    if not path or not Path(path).is_file():
        return False
    try:
        published = read_record(path).get("cache") or {}
    except (OSError, ValueError):
        return False  # restore_published, which reads it when needed, says what is wrong
    return (published.get("key") == cache_key(cfg) and cached.get("table_sha256") is not None
            and published.get("table_sha256") not in (None, cached["table_sha256"]))


#: The ``sensitivity.restore_from`` paths already reported missing in this process.
WARNED_MISSING: set[str] = set()


def say_a_missing_record(cfg: DictConfig, instead: str, why: str = "") -> None:
    """A ``sensitivity.restore_from`` that names no file, said once per path and process,
    with what is done ``instead`` (and ``why`` that is fine). A warning, not a refusal: a
    protocol's first machine names the record it publishes later. Said on a cache hit
    too, where the path is otherwise never read: a typo there went unseen (found in
    review)."""
    path = cfg.sensitivity.restore_from
    if not path or Path(path).is_file() or str(path) in WARNED_MISSING:
        return
    WARNED_MISSING.add(str(path))
    log.warning("sensitivity: no published record at sensitivity.restore_from=%s yet, %s "
                "(%sif you meant an existing record, check the path)", path, instead, why)


def restore_published(cfg: DictConfig, estimating: bool = True
                      ) -> tuple[pd.DataFrame, dict] | None:
    """Fill the empty cache from the published sensitivity record named by
    ``sensitivity.restore_from`` (``results/<profile>/runs/sensitivity.json``, written on
    another machine) when it was made for this key, and load it; ``None`` when there is no
    such record or it is for other settings. Called under the cache folder's lock.
    ``estimating``: whether a missing record means the table is estimated here (said once),
    or refused (under torchrun, whose refusal says it)."""
    import pandas as pd
    path = cfg.sensitivity.restore_from
    if not path:
        return None
    if not Path(path).is_file():
        if estimating:
            say_a_missing_record(cfg, "so the table is estimated here", "as on the first "
                                 "machine of a protocol, which publishes it there; ")
        return None
    fix = f"delete {path} (the table is then estimated again)"
    point = ("point sensitivity.restore_from at a published sensitivity record "
             "(<results>/runs/sensitivity.json, written by scripts/sensitivity.py publish=...)")
    try:
        published = read_record(path)
        cache = published.get("cache")
        if cache is not None and not isinstance(cache, dict):  # (an AttributeError trace)
            raise ValueError(f"its cache is a {type(cache).__name__}, not an object")
        table = pd.DataFrame(published["table"])[list(COLUMNS)] if cache else None
    except (OSError, ValueError, KeyError) as err:
        # not "delete" alone: the path may name another file (the run's own sensitivity.csv,
        # or the README)
        raise ConfigError(f"the published sensitivity record {path} is unreadable "
                          f"({one_line(err)}); {point}, or, if it is one that is "
                          f"damaged, {fix}") from None
    if published.get("kind") != "sensitivity":  # (a training run's run.json: said at INFO
        kind = published.get("kind")             # as "for other settings", found in review)
        raise ConfigError(f"sensitivity.restore_from={path} is the record of "
                          f"{KIND_WORDS.get(kind, kind)}, not a sensitivity estimate; {point}")
    if not cache or cache.get("key") != cache_key(cfg):
        log.info("sensitivity: %s is for other settings (key %s, not %s); not restoring it",
                 path, (cache or {}).get("key"), cache_key(cfg))
        return None
    data = table_csv(table)
    if hashlib.sha256(data).hexdigest() != cache.get("table_sha256"):
        raise ConfigError(f"the published sensitivity record {path} does not match its own "
                          f"checksum (edited or damaged); {fix}")
    # the cache's record is checked here, not once copied into the cache: the fix that the
    # cache's refusal names (delete that folder) restored the same record again
    malformed = damaged_fields(cache, ESTIMATE_FIELDS)
    if malformed:
        raise ConfigError(f"the published sensitivity record {path} is damaged (its cache's "
                          f"{', '.join(malformed)} missing or of another type); {fix}")
    folder = cache_dir(cfg)
    write_bytes_atomic(folder / TABLE, data)
    write_json_atomic(folder / RECORD, cache)
    log.info("sensitivity: cache %s restored from the published record %s", folder, path)
    return load_cached(cfg)
