"""What each autotuning tile of the fused kernel (:mod:`basisconv.kernels.triton_conv`),
and of the folded norm's kernels (:mod:`basisconv.kernels.triton_combine`,
``triton_moments``, ``triton_fold``), costs a GPU, read from the compiler on a machine
without one: shared memory per block, registers per thread, and bytes spilled to local
memory.

Why: autotuning on a GPU picks the fastest tile, but GPU time is scarce and a tile that
spills registers, or needs more shared memory than a block may have, is slow or refused on
every GPU of its architecture. Triton compiles to machine code anywhere (it bundles
NVIDIA's ``ptxas``), and ``ptxas -v`` reports registers and spills. So kernel changes and
tile choices can be judged here first; speed itself still needs the GPU.

Integer sizes are specialized as Triton's JIT specializes them for a layer whose sizes are
multiples of 16 (ResNet's channel counts, feature-map sizes and basis
sizes of 16 or more), so the numbers are those of the kernel that runs there; without
that knowledge the compiler cannot vectorize loads and needs many more registers.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pandas as pd

from basisconv.kernels import (triton_combine, triton_conv, triton_fold, triton_fold_wide,
                               triton_moments)
from basisconv.records import (RunRecord, file_digest, provenance, write_record,
                               write_text_atomic)

#: The architecture compiled for: Hopper (H100, H200), the GPUs this project targets.
ARCH = 90
#: Shared memory one block may use there, in bytes.
HOPPER_SHARED_BYTES = 227 * 1024


@dataclass(frozen=True)
class Tile:
    """One autotuning config of the kernel: ``BLOCK_M`` output pixels by ``BLOCK_K``
    reduction steps, ``BLOCK_C`` output channels per epilogue block, warps, stages."""
    block_m: int
    block_k: int
    block_c: int
    warps: int
    stages: int

    def __str__(self) -> str:
        return f"{self.block_m}x{self.block_k}x{self.block_c} w{self.warps} s{self.stages}"


def autotune_tiles() -> list[Tile]:
    """The tiles the kernel's autotuner tries on a GPU."""
    return [Tile(*tile) for tile in triton_conv._GPU_TILES]


def compile_tile(tile: Tile, basis_width: int, dtype: str = "bf16", kernel_size: int = 3):
    """The kernel compiled for ``tile`` at ``BLOCK_N = basis_width`` with ``dtype``
    (``"bf16"``, ``"fp16"`` or ``"fp32"``) pointers, a ``kernel_size`` square filter and a
    bias, for sm_90, without a GPU: Triton's ``CompiledKernel``."""
    kernel = triton_conv._basis_conv_kernel
    names = kernel.__code__.co_varnames[:kernel.__code__.co_argcount]
    constants = dict(KH=kernel_size, KW=kernel_size, HAS_BIAS=True, STORE_BASIS=True,
                     PRECISION="tf32", BLOCK_M=tile.block_m, BLOCK_N=basis_width,
                     BLOCK_K=tile.block_k, BLOCK_C=tile.block_c)
    # the pointers (16-byte aligned, as torch allocates) and the sizes M .. m
    return compile_for_hopper(kernel, constants, {name: dtype for name in names[:6]},
                              names[:names.index("m") + 1], tile.warps, tile.stages)


def compile_for_hopper(kernel, constants: dict, pointers: dict[str, str],
                       divisible: list[str], warps: int, stages: int,
                       floats: tuple[str, ...] = ()):
    """``kernel`` (a plain function, undecorated) compiled for sm_90 without a GPU:
    ``constants`` its constexpr arguments (and the ints Triton's JIT would specialize to
    1), ``pointers`` the element type of each pointer argument, ``floats`` its float
    arguments, the other arguments 32-bit ints; those named in ``divisible`` are multiples
    of 16 (pointers 16-byte aligned, as torch allocates them), as the JIT specializes them
    for a ResNet layer."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jitted = triton_conv.triton.jit(kernel)
    signature = {name: "constexpr" if name in constants else f"*{pointers[name]}"
                 if name in pointers else "fp32" if name in floats else "i32"
                 for name in jitted.arg_names}
    attrs = {(jitted.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (triton 3.9's notice about its FP-fusion default)
        return triton_conv.triton.compile(
            ASTSource(jitted, signature, constants, attrs),
            target=GPUTarget("cuda", ARCH, 32), options=dict(num_warps=warps, num_stages=stages))


def ptxas_usage(ptx: str) -> dict[str, int]:
    """Registers per thread and spill-store bytes of an sm_90 PTX kernel, from Triton's
    own ``ptxas -v`` (the one it compiles sm_90 with)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as f:
            f.write(ptx)
        done = subprocess.run([get_ptxas(ARCH).path, "-v", "--gpu-name",
                               sm_arch_from_capability(ARCH), source, "-o", os.devnull],
                              capture_output=True, text=True)
    registers = re.search(r"Used (\d+) registers", done.stderr)
    spills = re.search(r"(\d+) bytes spill stores", done.stderr)
    if done.returncode or not registers or not spills:
        raise RuntimeError(f"ptxas -v gave no register report: {done.stderr[-500:]}")
    return {"registers": int(registers[1]), "spill_store_bytes": int(spills[1])}


def tile_resources(tile: Tile, basis_width: int, dtype: str = "bf16",
                   kernel_size: int = 3) -> dict:
    """One row of :func:`resource_table`."""
    row = {"dtype": dtype, "basis_width": basis_width, "tile": str(tile),
           "kernel_size": kernel_size}
    return {**row, **resources(compile_tile(tile, basis_width, dtype, kernel_size))}


def resources(compiled) -> dict:
    """A compiled kernel's shared memory (KiB), registers per thread and spill-store bytes,
    and whether a block fits an sm_90 block's shared memory (``fits``)."""
    row = {"shared_kib": round(compiled.metadata.shared / 1024, 1)}
    row.update(ptxas_usage(compiled.asm["ptx"]))
    row["fits"] = compiled.metadata.shared <= HOPPER_SHARED_BYTES
    return row


def compile_combination(backward: bool, basis_width: int, dtype: str = "bf16",
                        tile: tuple[int, int, int] | None = None):
    """One of the folded norm's combination kernels (:mod:`basisconv.kernels.triton_combine`,
    the backward's with ``backward``) compiled for sm_90 at ``BLOCK_N = basis_width`` with
    ``dtype`` tensors (float32 bias and partial sums), channels_last strides (the channel
    stride 1, as the JIT specializes it) and the ReLU, for ``tile`` (``BLOCK_C``, warps,
    stages; default the kernel's tile without autotuning) and its rows per program."""
    kernel = (triton_combine._combine_backward_kernel if backward
              else triton_combine._combine_kernel)
    block_c, warps, stages = tile or combination_tiles(backward)[0]
    names = kernel.__code__.co_varnames[:kernel.__code__.co_argcount]
    pointers = {name: "fp32" if name.startswith(("part_", "bias")) else dtype
                for name in names if name.endswith("_ptr")}
    constants = {name: 1 for name in names if name.endswith(("_sc", "_sb"))}
    if backward:
        constants["MAPS_GRAD"] = True
    constants.update(RELU=True, PRECISION="tf32", BLOCK_N=basis_width, BLOCK_C=block_c,
                     BLOCK_M=triton_combine._rows_per_program(basis_width))
    return compile_for_hopper(kernel, constants, pointers,
                              [name for name in names if name not in constants], warps, stages)


def compile_moments(basis_width: int, dtype: str = "bf16", shift: bool = False):
    """The batch moments' kernel (:mod:`basisconv.kernels.triton_moments`; its shift's with
    ``shift``) compiled for sm_90 at ``BLOCK_N = basis_width`` over ``dtype`` maps in
    channels_last."""
    kernel = triton_moments._shift_kernel if shift else triton_moments._moments_kernel
    names = kernel.__code__.co_varnames[:kernel.__code__.co_argcount]
    constants = {"sc": 1, "BLOCK_N": basis_width if shift
                 else min(basis_width, triton_moments.MAX_TILE)}
    constants.update({"SAMPLE": triton_moments.SHIFT_SAMPLE} if shift
                     else {"BLOCK_M": triton_moments.ROWS_PER_BLOCK,
                           "TILED": basis_width > triton_moments.MAX_TILE})
    (config,) = triton_moments._configs(interpret=False, tune=False)
    return compile_for_hopper(
        kernel, constants, {name: "fp32" if name != "maps_ptr" else dtype
                            for name in names if name.endswith("_ptr")},
        [name for name in names if name not in constants and name not in ("row_blocks", "tiles")],
        config.num_warps, config.num_stages)


def compile_moments_backward(basis_width: int, dtype: str = "bf16", tile=None,
                             precision: str = "tf32"):
    """The moments' part of the maps' gradient (:mod:`basisconv.kernels.triton_moments`)
    compiled for sm_90 over ``dtype`` maps and gradients in channels_last, its blocks as
    the launcher sets them for ``basis_width``, for ``tile`` (a ``triton.Config`` of its
    autotuner; default the one without autotuning) and ``precision`` (``"ieee"``: float32
    maps without TF32)."""
    kernel = triton_moments._moments_backward_kernel
    names = kernel.__code__.co_varnames[:kernel.__code__.co_argcount]
    config = tile or triton_moments._backward_configs(interpret=False, tune=False)[0]
    block = min(64, max(16, basis_width))
    constants = {name: 1 for name in names if name.endswith("_sc")}
    constants.update(PRECISION=precision, BLOCK_J=block, BLOCK_K=block, **config.kwargs)
    return compile_for_hopper(
        kernel, constants, {name: "fp32" if name in ("sym_ptr", "shift_ptr") else dtype
                            for name in names if name.endswith("_ptr")},
        [name for name in names if name not in constants and name != "col_blocks"],
        config.num_warps, config.num_stages)


def compile_fold(backward: bool | str, basis_width: int, dtype: str = "bf16"):
    """One of the fold's kernels (:mod:`basisconv.kernels.triton_fold`, the backward's with
    ``backward``) compiled for sm_90 at ``basis_width``, every optional input present, the
    folded matrix in ``dtype`` (the rest float32): the one-program kernels up to
    ``ONE_PROGRAM_WIDTH``, the tiled ones (:mod:`basisconv.kernels.triton_fold_wide`)
    above; ``backward="moments"``: the tiled backward's second kernel."""
    if basis_width > triton_fold.ONE_PROGRAM_WIDTH or backward == "moments":
        kernel = (triton_fold_wide._moments_grad_kernel if backward == "moments" else
                  triton_fold_wide._wide_fold_backward_kernel if backward
                  else triton_fold_wide._wide_fold_kernel)
        blocks = {"BLOCK_R": triton_fold_wide.ROWS,
                  "BLOCK_K": min(basis_width, triton_moments.MAX_TILE)}
        configs = triton_fold_wide._configs
    else:
        kernel = triton_fold._fold_backward_kernel if backward else triton_fold._fold_kernel
        blocks = {"BLOCK_R": triton_fold.rows_per_block(basis_width), "BLOCK_N": basis_width}
        configs = triton_fold._configs
    names = kernel.__code__.co_varnames[:kernel.__code__.co_argcount]
    constants = {name: True for name in names if name.startswith(("HAS_", "MOMENTS_", "UPDATE"))}
    constants.update({name: 1 for name in ("coef_sk", "g_sk") if name in names}, **blocks)
    (config,) = configs(interpret=False, tune=False)
    return compile_for_hopper(
        kernel, constants, {name: dtype if name == "folded_ptr" else "i64"
                            if name == "index_ptr" else "fp32"
                            for name in names if name.endswith("_ptr")},
        [name for name in names if name.endswith("_ptr")], config.num_warps,
        config.num_stages, floats=("count", "eps", "momentum"))


def _fold_tile(width: int, tiled: bool) -> str:
    """How the fold's kernels split the work at ``width``."""
    if tiled:
        return (f"{triton_fold_wide.ROWS} channels a program, tiles of "
                f"{min(width, triton_moments.MAX_TILE)} "
                f"w{triton_fold_wide._configs(False, False)[0].num_warps}")
    return (f"one program, {triton_fold.rows_per_block(width)} channels a block "
            f"w{triton_fold._configs(False, False)[0].num_warps}")


def combination_tiles(backward: bool) -> list[tuple[int, int, int]]:
    """The tiles the combination kernel's autotuner tries on a GPU."""
    return triton_combine._GPU_BACKWARD_TILES if backward else triton_combine._GPU_TILES


def combination_table(dtypes: list[str], widths: list[int]) -> list[dict]:
    """:func:`resource_table`'s rows for the folded norm's kernels: the combination's,
    forward and backward, every autotuning tile (``BLOCK_C`` output channels, warps,
    stages; ``BLOCK_M`` rows), the moments' part of the maps' gradient (every tile), and
    the batch moments' and the fold's up to their widest basis."""
    rows = []
    for dtype in dtypes:
        for width in widths:
            for backward in (False, True):
                for tile in combination_tiles(backward):
                    block_c, warps, stages = tile
                    rows.append({
                        "dtype": dtype, "basis_width": width,
                        "kernel": "backward" if backward else "forward",
                        "tile": f"{triton_combine._rows_per_program(width)}x{block_c} "
                                f"w{warps} s{stages}",
                        **resources(compile_combination(backward, width, dtype, tile))})
            for config in triton_moments._backward_configs(interpret=False, tune=True):
                for precision in ("tf32", "ieee") if dtype == "fp32" else ("tf32",):
                    rows.append({"dtype": dtype + ("-ieee" if precision == "ieee" else ""),
                                 "basis_width": width, "kernel": "moments backward",
                                 "tile": f"{config.kwargs['BLOCK_M']}x{min(64, width)} "
                                         f"w{config.num_warps} s{config.num_stages}",
                                 **resources(compile_moments_backward(width, dtype, config,
                                                                      precision))})
            if width <= triton_moments.MAX_WIDTH:
                (config,) = triton_moments._configs(interpret=False, tune=False)
                rows.append({"dtype": dtype, "basis_width": width, "kernel": "moments",
                             "tile": f"{triton_moments.ROWS_PER_BLOCK} rows w{config.num_warps} "
                                     f"s{config.num_stages}",
                             **resources(compile_moments(width, dtype))})
                tiled = width > triton_fold.ONE_PROGRAM_WIDTH
                for backward in (False, True, "moments") if tiled else (False, True):
                    rows.append({"dtype": dtype, "basis_width": width,
                                 "kernel": ("fold moments" if backward == "moments" else
                                            "fold backward" if backward else "fold")
                                           + (" (tiled)" if tiled else ""),
                                 "tile": _fold_tile(width, tiled),
                                 **resources(compile_fold(backward, width, dtype))})
    return rows


def resource_table(dtypes: list[str], widths: list[int], tiles: list[Tile] | None = None,
                   kernel_size: int = 3) -> list[dict]:
    """A row per dtype, basis width (``BLOCK_N``: ``m`` rounded up to a power of two) and
    tile: shared memory (KiB), registers per thread, spill-store bytes, and whether the
    block fits an sm_90 block's shared memory (``fits``)."""
    return [tile_resources(tile, width, dtype, kernel_size)
            for dtype in dtypes for width in widths for tile in tiles or autotune_tiles()]


def measure(dtypes: list[str], widths: list[int], kernel_size: int = 3,
            kernels: str = "conv") -> tuple[pd.DataFrame, float]:
    """:func:`resource_table` (``kernels="conv"``) or :func:`combination_table`
    (``"combination"``) compiled afresh (an empty Triton cache), so that the seconds it
    also returns are the compile time."""
    started = time.time()
    with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ,
                                                                 {"TRITON_CACHE_DIR": cache}):
        rows = (combination_table(dtypes, widths) if kernels == "combination"
                else resource_table(dtypes, widths, kernel_size=kernel_size))
    return pd.DataFrame(rows), time.time() - started


def write_resources(table: pd.DataFrame, out: Path, options: dict, command: str,
                    seconds: float) -> list[Path]:
    """The table at ``out`` (a .csv) and its record beside it (.json), written last and
    naming the table's sha256, as the speed benchmarks' records do."""
    written = [write_text_atomic(out, table.to_csv(index=False))]
    written.append(write_record(out.with_suffix(".json"), RunRecord(
        "benchmark", options, provenance(command), "complete",
        {"file": out.name, "file_sha256": file_digest(out),
         "target": f"sm_{ARCH}a (compiled, not run)",
         "specialization": "sizes and pointers divisible by 16, as Triton's JIT "
                           "specializes a ResNet layer",
         "seconds": round(seconds, 1),
         "seconds_are": "compile time, every tile compiled afresh, on the CPU named in "
                        "provenance"})))
    return written
