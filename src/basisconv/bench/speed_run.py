"""The speed benchmark as ``scripts/benchmark_layers.py`` runs it: torch's threads and the
CPU allocator set as its options say, the parts asked for measured (the layer benchmark of
:mod:`.layers`, the whole-model one of :mod:`.whole_model`), and their CSV tables written with a JSON record
each; and those files read back (:func:`measured_rows`), so the figures can be drawn again
without measuring. Apart from :mod:`.layers` and :mod:`.whole_model`, which measure and
return rows, write no file and call nothing here."""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, DatasetError
from ..kernels import auto
from ..execution import seed_everything, settings_restored, slow_precision
from ..records import (RunRecord, file_digest, hardware_name, is_recorded_table,
                       precision_name, provenance, read_benchmark_record, recorded_table,
                       threads_name, write_record, write_text_atomic)
from ..timing import ALLOCATOR_TUNED, Timer, tune_cpu_allocator
from .layers import Progress, SpeedOptions, benchmark_layers, print_progress
from .whole_model import TARGET_SLACK, benchmark_model


def to_csv(rows: list[dict]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_csv(index=False, float_format="%.6g")


#: The files' stems: ``<stem>-<tag>.csv`` / ``.json`` / ``.png`` / ``.txt``.
LAYER_FILE, MODEL_FILE, FIGURE_FILE = "layer-speed", "model-speed", "basis-speedup"
PROFILE_FILE = "model-profile"


def file_name(stem: str, tag: str, suffix: str) -> str:
    """``<stem>-<tag><suffix>``, e.g. ``layer-speed-cpu-fp32.csv``."""
    return f"{stem}-{tag}{suffix}"


@dataclass
class SpeedResult:
    """What :func:`run` measured and where it wrote it."""

    options: SpeedOptions
    out_dir: Path
    settings: dict
    layer_rows: list[dict]
    model_rows: list[dict]
    record: RunRecord  # the fields both sidecars share
    files: list[Path]

    @property
    def tag(self) -> str:
        return self.options.tag

    @property
    def seconds(self) -> float:
        return self.record.results["seconds"]

    @property
    def figure_path(self) -> Path:
        return self.out_dir / file_name(FIGURE_FILE, self.tag, ".png")

    @property
    def title(self) -> str:
        return figure_title(self.tag, {"device": self.options.device,
                                       "batch_size": self.options.batch_size, **self.settings},
                            self.record.provenance)


def figure_title(tag: str, settings: dict, provenance: dict) -> str:
    """The figure's title: what was measured, on which machine (the CPU's name for a CPU
    run, also on a machine with a GPU)."""
    machine = hardware_name(provenance.get("hardware") or {}, settings.get("device"))
    return (f"basis vs dense convolution, {tag}, batch {settings.get('batch_size')}, "
            f"{threads_name(settings.get('threads'))}, {machine}")


def measured_rows(folder: str | os.PathLike) -> dict[str, dict]:
    """Every benchmark measured into ``folder``, read back from its files, by tag: its
    layer and model rows, the figure's path and title. So the figures can be drawn again
    (a new plot style) without measuring again. A table that is not the one its record
    was written with (its sha256) is an error naming both files, and so is a record that
    cannot be read (cut off, not a JSON object), as the speed report says it."""
    import pandas as pd

    folder, found = Path(folder), {}
    for stem, key in ((LAYER_FILE, "layer_rows"), (MODEL_FILE, "model_rows")):
        for path in sorted(folder.glob(file_name(stem, "*", ".json"))):
            record = read_benchmark_record(path)
            table = recorded_table(record, path)
            if not table.is_file() or not is_recorded_table(record, table.read_bytes()):
                raise DatasetError(f"{path} was written with a table {table.name} that is "
                                   f"not beside it as it was; measure it again")
            tag = path.stem[len(stem) + 1:]
            entry = found.setdefault(tag, {
                "layer_rows": [], "model_rows": [],
                "path": folder / file_name(FIGURE_FILE, tag, ".png"),
                "title": figure_title(tag, record.get("settings") or {},
                                      record.get("provenance") or {})})
            frame = pd.read_csv(table)
            entry[key] = [{k: v for k, v in row.items() if not pd.isna(v)}
                          for row in frame.to_dict("records")]
    return found


def run(options: SpeedOptions, out_dir: str | os.PathLike, command: str | None = None, *,
        progress: Progress = print_progress) -> SpeedResult:
    """Set threads and the CPU allocator as ``options`` say (warning of ``--amp fp16`` on a
    CPU: :func:`~basisconv.execution.slow_precision`), measure the parts asked for,
    and write ``layer-speed-<tag>.csv`` / ``model-speed-<tag>.csv`` with a JSON record each
    to ``out_dir``. ``command`` is recorded in the provenance. Torch's settings are the
    caller's again afterwards (the allocator's tuning stays for the process)."""
    with settings_restored():
        return _run(options, out_dir, command, progress)


def _run(options: SpeedOptions, out_dir: str | os.PathLike, command: str | None,
         progress: Progress) -> SpeedResult:
    if options.threads:
        torch.set_num_threads(options.threads)
    if slow := slow_precision(options.amp, options.device, "--amp {}"):
        warnings.warn(slow, stacklevel=3)  # (the caller of run)
    # as a (non-deterministic) training run sets them: cuDNN times its algorithms per shape
    # on first use (in the warm-up rounds) and runs the fastest
    seed_everything(0, deterministic=False)
    if options.device == "cpu" and not options.allocator_tuning and ALLOCATOR_TUNED:
        # (else its record said "default" and its file "-defaultmalloc" of a tuned heap)
        raise ConfigError("allocator_tuning=False (--no-allocator-tuning) measures glibc's "
                          "default allocator, but this process tuned it before, which cannot "
                          "be undone; run that benchmark in a process of its own")
    allocator = (tune_cpu_allocator() if options.allocator_tuning and options.device == "cpu"
                 else "default")
    tag = options.tag
    runner, timer = options.runner(), Timer(options.device)
    settings = {"batch_size": options.batch_size, "threads": torch.get_num_threads(),
                "device": options.device, "precision": precision_name(options.amp),
                "channels_last": options.channels_last, "compile": options.compile,
                "combine": options.combine, "allocator": allocator,
                "layer_repeats": options.layer_repeats, "model_repeats": options.model_repeats,
                "warmup": options.warmup, "statistic": "median of interleaved rounds",
                "spread": "interquartile range / median, the larger of dense and basis",
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "cuda_graphs": options.cuda_graphs}
    progress(f"benchmark {tag}: {settings}")
    started, load = time.time(), os.getloadavg()
    auto.start_run()  # the record lists the combine=auto shapes of this benchmark alone
    layer_rows, model_rows, profiled = [], [], None
    if "layers" in options.parts:
        progress("single layers (ResNet-18 conv shapes):")
        layer_rows = benchmark_layers(options, runner, timer, progress=progress)
    if "model" in options.parts:
        progress("whole ResNet-18:")
        model_rows, profiled = benchmark_model(options, runner, timer, layer_rows,
                                               progress=progress)
    record = RunRecord("benchmark", dataclasses.asdict(options), provenance(command), "complete", {
        "settings": settings, "seconds": round(time.time() - started, 1),
        "load_average_before_after": [load, os.getloadavg()],
        **({"auto_choices": auto.described(this_run=True)} if options.combine == "auto" else {})})
    out, files = Path(out_dir), []
    for stem, rows, extra in ((LAYER_FILE, layer_rows, {}),
                              (MODEL_FILE, model_rows, _model_summary(model_rows))):
        if rows:
            csv = file_name(stem, tag, ".csv")
            files.append(write_text_atomic(out / csv, to_csv(rows)))
            # the table's sha256 ties it to its record: a run stopped between the two
            # writes leaves a new table beside an older record, which the report refuses
            files.append(write_record(out / file_name(stem, tag, ".json"), dataclasses.replace(
                record, results={**record.results, "file": csv,
                                 "file_sha256": file_digest(files[-1]), **extra})))
    if profiled:
        files.append(write_text_atomic(out / file_name(PROFILE_FILE, tag, ".txt"), profiled))
    return SpeedResult(options, out, settings, layer_rows, model_rows, record, files)


def _model_summary(model_rows: list[dict]) -> dict:
    """The model sidecar's extra fields: the target, and the key ratios per fraction."""
    return {
        "target": f"fwdbwd_ratio <= {TARGET_SLACK} x theory_fwdbwd_ratio at fractions 0.25 and 0.5",
        "summary": {str(r["fraction"]): {k: r.get(k) for k in (
            "fwdbwd_ratio", "theory_fwdbwd_ratio", "fwdbwd_vs_theory", "time_bound_ratio",
            "target_met")} for r in model_rows}}
