"""Speed benchmarks: how fast basis convolutions run against the dense ones they replace
(``layers``: single conv shapes; ``whole_model``: the whole ResNet-18; ``speed_run``: that
benchmark run and its files written and read back), and how fast the real training loop runs
(``train``; its flags: ``throughput_options``), with the timing machinery of :mod:`basisconv.timing` (which the time budget
of layer selection uses too).

They live in the package, not in ``scripts/``, so that they can be tested and reused; the
scripts only parse flags, call in here and print. Each writes its results with a JSON
sidecar, a :class:`basisconv.records.RunRecord` of kind ``benchmark``. Plots of the
results belong to :mod:`basisconv.analysis`, which sits above the producers: nothing here
imports it.
"""

from __future__ import annotations

from ..kernels import triton_conv


def profile_table(prof, device, title: str, row_limit: int = 25) -> str:
    """A finished ``torch.profiler.profile``'s operators as a text table under ``title``:
    by self GPU time on CUDA (which kernels, how many launches), else by self CPU time."""
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"== {title}\n" + prof.key_averages().table(sort_by=sort, row_limit=row_limit)


def flag_below_minimum(flags: tuple[tuple, ...]) -> str | None:
    """The first ``(flag, value, least[, why])`` whose value is below its least, as one
    line for ``parser.error`` (``--threads 0`` is torch's default), else ``None``."""
    for flag, value, least, *why in flags:
        if value < least:
            note = " (0: torch's default)" if flag == "--threads" else "".join(
                f" ({reason})" for reason in why)
            return f"{flag} must be >= {least}{note}, got {value}"
    return None


def fused_problem(combine: str, device: str) -> str | None:
    """Why ``combine='fused'`` cannot be benchmarked on ``device`` (one line), else
    ``None``: off CUDA the layer would run the stacked fallback (or, under
    TRITON_INTERPRET, Triton's interpreter), and without triton the stacked form; neither
    is the fused kernel's speed, and a record would say it was."""
    if combine != "fused":
        return None
    if not str(device).startswith("cuda"):
        return (f"combine='fused' is benchmarked on --device cuda only (its Triton kernel "
                f"runs on CUDA), got --device {device}")
    if triton_conv.triton is None:
        return ("combine='fused' needs triton, which a CUDA build of torch ships with "
                "(install that torch, not a triton of another version); without it the "
                "layer runs the stacked form")
    return None
