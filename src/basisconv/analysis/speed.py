"""Every speed record in some folders read into the tables of one summary, so that the
speed tables of ``docs/speed.md`` are generated from records (with their source, commit and
date), never copied by hand, and CPU and GPU stand side by side (:mod:`.speed_summary`
writes them as its page and plot):

- the whole ResNet-18 against dense (``model-speed-*.json`` of ``scripts/benchmark_layers.py``
  with their CSVs): measured training forward+backward time relative to dense, beside the
  FLOP ratio and the time bound, per hardware, precision, batch and form;
- the training step (``train-throughput-*.json`` of ``scripts/benchmark_train.py``): time
  per step and per CIFAR-10 epoch, and relative to the dense model measured at the same
  commit on the same machine (its record's hardware, not only its name) with the same
  architecture, layout, threads, precision, batch, execution mode (eager, compiled,
  graphed) and number of timed and untimed steps.

It loads no torch (nor does the summary's page and plot): ``scripts/reproduce.sh`` reads
the whole-model records with :func:`model_speed` to skip a benchmark already measured, in a
process of its own.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import textwrap
from pathlib import Path

import pandas as pd

from ..errors import DatasetError, one_line
from ..records import (amp_of_precision, commit_name, hardware_name, is_recorded_table,
                       precision_name, read_benchmark_record, recorded_table, tf32_name)

#: ``tf32``: whether float32 ran in TF32 (:func:`~basisconv.records.tf32_name`), a column of
#: a table only where one of its rows is float32 on a GPU (:func:`tf32_where_it_applies`).
MODEL_COLUMNS = ["hardware", "precision", "tf32", "batch", "threads", "form", "fraction",
                 "theory_fwdbwd_ratio", "time_bound_ratio", "fwdbwd_ratio", "fwdbwd_vs_theory",
                 "fwdbwd_spread", "dense_fwdbwd_ms", "source", "commit", "date"]
#: The training memory of the whole-model records that measured it (bench.memory): the
#: parameters, and what a training forward keeps for the backward, relative to dense.
MEMORY_COLUMNS = ["hardware", "precision", "batch", "form", "fraction", "params_ratio",
                  "dense_saved_mib", "saved_ratio", "dense_peak_mib", "peak_ratio", "source",
                  "commit", "date"]
TRAIN_COLUMNS = ["hardware", "precision", "tf32", "batch", "mode", "architecture", "layout",
                 "threads", "model", "form", "seconds_per_step", "epoch_seconds",
                 "images_per_second", "relative_to_dense", "checkpoint_seconds", "cuda_peak_mib",
                 "source", "commit", "date"]
#: The columns of a whole-model table (``model-speed-*.csv``) the summary reads, each a
#: number in every row; ``time_bound_ratio`` and ``fwdbwd_spread`` are not among them (older
#: tables lack them: "-").
TABLE_COLUMNS = ["batch", "fraction", "theory_fwdbwd_ratio", "fwdbwd_ratio",
                 "fwdbwd_vs_theory", "dense_fwdbwd_ms"]
#: The fields of a training-step record (``train-throughput-*.json``) the summary reads,
#: each a number; the others have defaults for older records.
TRAIN_FIELDS = ["batch_size", "seconds_per_step", "images_per_second"]
#: The records the summary is made of, and what writes them.
RECORD_FILES = {"model-speed-*.json": "scripts/benchmark_layers.py",
                "train-throughput-*.json": "scripts/benchmark_train.py"}
#: What a training step is compared on: a basis row is relative to the dense record that
#: matches it in all of these (measured with the same code on the same machine, alike).
#: ``code`` is the commit, for a dirty tree the hash of its diff (two records of one dirty
#: commit with different uncommitted changes ran different code), and the torch build.
#: ``steps``: the timed epoch's steps, since a graphed epoch's eager first step and capture
#: (the 1/4 fused H200 record: 4.75 ms a step over 60, its profiled replays 3.53) weigh
#: 1/steps on each step. ``warmup``: the untimed steps before them, since with none the
#: timed steps include the first one's allocations, cuDNN's algorithm search or a compile
#: (on a 2-core CPU, ``--warmup 0`` made 4 dense steps 25-40 % slower than ``--warmup 3``).
#: ``machine``: the record's whole hardware but its thread count (a column of its own), since
#: ``hardware`` is only the CPU's or GPU's name, which VMs of one kind share (at one commit,
#: the dense step took 2.47 s on one 2-core AMD EPYC VM and 1.20 s on another); it holds
#: the TF32 flags too (records from before they were kept lack them: compared among
#: themselves), so an fp32 step with TF32 is not relative to a dense one without.
SAME_SETTING = ["hardware", "precision", "batch", "mode", "architecture", "layout", "threads",
                "steps", "warmup", "code", "machine"]


def _origin(record: dict, path: Path) -> dict:
    """Where a record was measured: the hardware of the device it ran on (a CPU benchmark
    on a GPU machine is the CPU's, not the GPU's), its file, commit and date."""
    provenance = record.get("provenance") or {}
    # a model-speed record keeps it in its settings, a training-step record at its top
    device = (record.get("settings") or {}).get("device") or record.get("device")
    return {"hardware": hardware_name(provenance.get("hardware") or {}, device) or "unknown",
            "source": str(path), "commit": commit_name(provenance.get("git")),
            "date": (provenance.get("date") or "")[:10]}


def _or_dash(value):
    """A setting as the tables show it: "-" for one an older record lacks (0 threads is
    torch's default, a value of its own)."""
    return "-" if value is None else value


def _threads(value, device) -> str | int:
    """The recorded torch CPU threads as the tables show them: "-" on a GPU too, where they
    are recorded (2) but do not bound the step, so a column of 2s beside an H200 misled."""
    return "-" if str(device).startswith("cuda") else _or_dash(value)


def _options(path: Path) -> str:
    """The non-default options a benchmark file's name carries (``model-speed-cuda-bf16-
    fused-b512.json``: ``fused``), the batch and threads aside (columns of their own);
    ``stacked`` when there are none. ``-quick`` (``--quick``: few repeats) and other
    repeats (``-r5_7_2``) are how it was measured, not a form: they follow the form in
    brackets (``stacked (quick)``)."""
    words = path.stem.split("-")[4:]  # after model-speed-<device>-<precision>
    how = [w for w in words if w == "quick" or re.fullmatch(r"r\d+_\d+_\d+", w)]
    form = ", ".join(w for w in words if w not in how and not re.fullmatch(r"[bt]\d+", w))
    return (form or "stacked") + (f" ({', '.join(how)})" if how else "")


def _training_form(record: dict) -> str:
    """How a training benchmark's basis layers ran: their combine form, folded norms,
    whether the loss had the Frobenius decay correction, and, for a chosen layer set
    (``--layers``), how many layers it converted and the list's start."""
    chosen = record.get("layers", "all")
    return ", ".join([record.get("combine") or "stacked",
                      *(["folded norms"] if record.get("fuse_norm") else []),
                      *(["Frobenius decay"] if record.get("frobenius_decay") else []),
                      *([f"{len(record.get('basis_layers') or [])} layers "
                         f"({textwrap.shorten(chosen.replace(',', ' '), 40, placeholder=' ...')})"]
                        if chosen != "all" else [])])


def _records(folders: list[Path], pattern: str) -> list[tuple[dict, Path]]:
    """Every record matching ``pattern`` in ``folders``, each file once (a folder named twice,
    ``make speed-report ARGS=results/gpu-h200`` beside the default ``results/gpu*/``, gave
    its rows twice, or called one file two measurements of one setting)."""
    found, seen = [], set()
    for path in (p for folder in folders for p in sorted(Path(folder).glob(pattern))):
        if (real := path.resolve()) in seen:
            continue
        seen.add(real)
        found.append((read_benchmark_record(path), path))
    return found


def model_speed(folders: list[Path], columns: list[str] | None = MODEL_COLUMNS) -> pd.DataFrame:
    """One row per basis fraction of every whole-model benchmark in ``folders``: the
    summary's ``columns`` (``None``: every column of the tables, those a table lacks
    empty, and ``tf32`` as :func:`~basisconv.records.tf32_name` says it, ``None`` where it
    does not apply)."""
    frames = []
    for record, path in _records(folders, "model-speed-*.json"):
        with _readable(record, path):
            settings = record.get("settings") or {}
            table = recorded_table(record, path)
            if not table.is_file():
                raise DatasetError(f"{path} names its table {table.name}, which is not beside "
                                   f"it; copy the two files together")
            frame = _model_table(record, path, table)
            device = settings.get("device") or record.get("device")
            precision = settings.get("precision")
            hardware = (record.get("provenance") or {}).get("hardware") or {}
            frame = frame.assign(**_origin(record, path), precision=_or_dash(precision),
                                 tf32=tf32_name(hardware, device, amp_of_precision(precision)),
                                 threads=_threads(settings.get("threads"), device),
                                 form=_options(path))
        frames.append(frame)
    if not frames:
        return tf32_where_it_applies(pd.DataFrame(columns=MODEL_COLUMNS),
                                     columns or MODEL_COLUMNS)
    rows = pd.concat(frames, ignore_index=True)
    return rows if columns is None else tf32_where_it_applies(rows, columns)


def tf32_where_it_applies(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``table`` in ``columns``, its ``tf32`` "-" on the rows where TF32 changes nothing
    (``None``: a CPU, bf16), and left out where that is every row: a table of no float32
    GPU step (the CPU's, a bf16 one) stays as it was before the records kept the flags."""
    applies = "tf32" in table.columns and table["tf32"].notna().any()
    shown = table.assign(tf32=table["tf32"].fillna("-")) if applies else table
    return shown.reindex(columns=[c for c in columns if applies or c != "tf32"])


def training_memory(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`model_speed` (all columns) whose benchmark measured the training
    memory (tables made before it lack it and are left out), in :data:`MEMORY_COLUMNS`."""
    if "saved_ratio" not in rows.columns:
        return pd.DataFrame(columns=MEMORY_COLUMNS)
    measured = rows[rows["saved_ratio"].notna()]
    return measured.assign(params_ratio=measured["params"] / measured["dense_params"]
                           ).reindex(columns=MEMORY_COLUMNS)


def _model_table(record: dict, path: Path, table: Path) -> pd.DataFrame:
    """The table beside a whole-model record, refused (naming both files and the command
    that measures again) when it is not a CSV, is cut off or empty, or lacks a column the
    summary reads (:data:`TABLE_COLUMNS`)."""
    try:
        text = table.read_bytes()
        frame = pd.read_csv(table)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        problem = f"cannot be read as a table ({one_line(err)})"
    else:
        lacking = [c for c in TABLE_COLUMNS if c not in frame.columns]
        broken = [c for c in TABLE_COLUMNS if c in frame.columns and (
            not pd.api.types.is_numeric_dtype(frame[c]) or frame[c].isna().any())]
        if not is_recorded_table(record, text):
            problem = ("is not the table its record was written with (their sha256 differ: "
                       "a run stopped between writing the two, or one of them replaced)")
        elif lacking:
            problem = f"lacks the columns {', '.join(lacking)}"
        elif not len(frame):
            problem = "has no rows"
        elif not text.endswith(b"\n"):  # the benchmark ends every line
            problem = "is cut off (its last line is not complete)"
        elif broken:
            problem = f"has empty or non-numeric values in {', '.join(broken)} (cut off?)"
        else:
            return frame
    command = _command(record, "python scripts/benchmark_layers.py")
    raise DatasetError(f"{table}, the table of {path.name}, {problem}: measure again "
                       f"(`{command}`, writing to {path.parent}) or move both files out of "
                       f"the folder")


def training_speed(folders: list[Path]) -> pd.DataFrame:
    """One row per training-throughput record in ``folders``, with its step time relative
    to the dense model's on the same machine, precision, batch and execution mode."""
    rows = []
    for record, path in _records(folders, "train-throughput-*.json"):
        with _readable(record, path):
            _check_training_record(record, path)
            row = _training_row(record, path)
            # what the steps are matched on must be hashable: a list there (an edited
            # record) is a TypeError here, naming the file, not one from pandas' join
            hash(tuple(row[k] for k in SAME_SETTING))
            rows.append(row)
    table = pd.DataFrame(rows, columns=[c for c in TRAIN_COLUMNS if c != "relative_to_dense"]
                         + ["steps", "warmup", "code", "machine"])
    dense = table[table["model"] == "dense"]
    twice = dense[dense.duplicated(SAME_SETTING, keep=False)]
    if len(twice):
        raise DatasetError(f"{' and '.join(twice['source'])} are dense measurements of the "
                           f"same setting with the same code, so which one a basis row is "
                           f"relative to would be a guess; move all but one out of the folders")
    reference = dense.set_index(SAME_SETTING)["seconds_per_step"].rename("dense_seconds")
    table = table.join(reference, on=SAME_SETTING)  # no match: no ratio (shown as "-")
    table["relative_to_dense"] = table["seconds_per_step"] / table["dense_seconds"]
    return tf32_where_it_applies(table, TRAIN_COLUMNS)


def _training_row(record: dict, path: Path) -> dict:
    basis = record.get("basis_size")
    mode = ("graphs" if record.get("cuda_graphs") else
            f"compiled ({record['compile_mode']})" if record.get("compile_mode") else "eager")
    origin = _origin(record, path)
    provenance = record.get("provenance") or {}
    diff = (provenance.get("git") or {}).get("diff_sha256")
    # the torch build too: one commit timed under two (a GPU machine's torch and this
    # one's, on a CPU of one name) is two codes, whose steps are not to be compared
    torch_version = (provenance.get("versions") or {}).get("torch")
    hardware = provenance.get("hardware") or {}
    return {**origin, "code": (origin["commit"], diff, torch_version),
            "machine": json.dumps({k: v for k, v in hardware.items() if k != "torch_threads"},
                                  sort_keys=True, default=str),  # (hashable, whatever it holds)
            "precision": precision_name(record.get("amp", "none")),
            "tf32": tf32_name(hardware, record.get("device"), record.get("amp", "none")),
            "batch": record["batch_size"], "mode": mode,
            "architecture": record.get("model", "resnet18"),
            "layout": "NHWC" if record.get("channels_last", True) else "NCHW",
            "threads": _threads(record.get("threads") or None, record.get("device")),
            "steps": _or_dash(record.get("steps")),
            "warmup": _or_dash((record.get("config") or {}).get("warmup")),  # (its flag)
            "model": "dense" if basis is None else f"basis {basis:g}",
            "form": "-" if basis is None else _training_form(record),
            "seconds_per_step": record["seconds_per_step"],
            "epoch_seconds": record.get("epoch_seconds",
                                        record["seconds_per_step"]
                                        * (50000 // record["batch_size"])),
            "images_per_second": record["images_per_second"],
            # (records from before d1a73b6 did not time it: "-")
            "checkpoint_seconds": record.get("checkpoint_seconds_median", math.nan),
            # (CUDA records from b697cd8 on; "-" on a CPU and before)
            "cuda_peak_mib": _number(record.get("cuda_peak_mib"))}


def _number(value) -> float:
    """A record's optional number, NaN (shown "-") where it has none."""
    return math.nan if value is None else value


@contextlib.contextmanager
def _readable(record: dict, path: Path):
    """Refuse, in one line naming the file and the command that measures again, a record
    whose fields are not of the kinds its benchmark writes (an edited or foreign file: a
    ``provenance`` that is a string, a batch of 0, a basis size in quotes), which would
    otherwise stop the report with a stack trace from inside it."""
    try:
        yield
    except (TypeError, ValueError, AttributeError, KeyError, ZeroDivisionError) as err:
        writer = next(w for pattern, w in RECORD_FILES.items() if path.match(pattern))
        raise DatasetError(
            f"{path} is not a benchmark record the summary can read ({type(err).__name__}: "
            f"{one_line(err)}): measure again (`{_command(record, f'python {writer}')}`) or "
            f"move it out of the folder") from None


def _command(record: dict, default: str) -> str:
    """The command that measured ``record`` again (``default`` when it names none)."""
    provenance = record.get("provenance")
    command = provenance.get("command") if isinstance(provenance, dict) else None
    return command if isinstance(command, str) and command else default


def _check_training_record(record: dict, path: Path) -> None:
    """Refuse, in one line naming the file and the command that measures again, a
    training-step record that lacks a number the summary reads (:data:`TRAIN_FIELDS`):
    an edited or foreign file would otherwise stop the report with a ``KeyError``."""
    lacking = [k for k in TRAIN_FIELDS
               if isinstance(record.get(k), bool) or not isinstance(record.get(k), (int, float))]
    if lacking:
        command = _command(record, "python scripts/benchmark_train.py")
        raise DatasetError(f"{path} lacks the numbers {', '.join(lacking)} of a training-step "
                           f"record: measure again (`{command}`) or move it out of the folder")
