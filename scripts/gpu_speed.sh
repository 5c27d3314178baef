#!/usr/bin/env bash
# The GPU speed measurements behind docs/speed.md's GPU tables, most important first, each
# step under its own time limit (a GPU slot may end at any time: what finished is kept):
#   scripts/gpu_speed.sh [quick|full|kernels]   (make gpu-speed [SPEED=...]; default full)
# kernels: the first minutes of a GPU slot for issue 13, what decides whether the folded
# norm's Triton kernels make the basis step faster than dense: their device tests on CUDA
# (compiled for the first time there, bf16 included; each test stopped after 120 s), the
# graphed bf16 step dense, folded with the kernels at 1/4 and 1/2 and folded in standard
# ops at 1/4 (each profiled), the folded kernels under torch.compile, and the whole model
# with folded kernels at batch 128 and 512 (1/4 and 1/2); then combine=auto with folded
# norms (per shape the fastest of the fold's forms and the unfused modules), graphed, and
# its per-shape choices at batch 128. The modes below:
# 1. the training step, as an epoch time (scripts/benchmark_train.py, bf16): dense and
#    basis 1/4 and 1/2 eager, and with every step a CUDA graph (trainer.cuda_graphs) in the
#    stacked form, with folded batch norms (in standard ops and as Triton kernels), and with
#    the fused Triton kernel; basis 1/4 graphed with the Frobenius decay's correction term
#    (--frobenius-decay); dense graphed in fp32; dense and basis 1/4
#    (stacked, fused, folded with kernels) under torch.compile's reduce-overhead; the
#    graphed dense, stacked and both folded-norm steps also profiled
#    (torch.profiler's kernels by GPU time, in <file>-profile.txt);
# 2. layer and whole-model speed against the FLOP ratio (scripts/benchmark_layers.py):
#    bf16 at batch 128 and 512 in the stacked, fused and auto forms and with folded norms
#    (standard ops and kernels),
#    the stacked and fused forms also timed as CUDA graph replays (--cuda-graphs), then
#    fp32 at batch 128.
# Uses the Python it finds (PY, default python3: a GPU machine's own CUDA torch; no .venv,
# no network). Files go to OUT_DIR (default results/gpu-<gpu>, e.g. results/gpu-h200: the
# files' own names say only "cuda"), logs to OUT_DIR/logs; STEP_LIMIT seconds per step
# (default 300), BUDGET seconds for all steps (default: no limit; a step gets what is
# left, and once it is spent the rest are not run). Ends with one line naming the steps
# that failed or were not run.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-full}
PY=${PY:-python3}
LIMIT=${STEP_LIMIT:-300}
BUDGET=${BUDGET:-0}
case $MODE in
  # the comment above: which modes, steps and variables there are, before any Python runs
  -h|--help) sed -n '2,/^set -uo/{/^set -uo/d; s/^# \{0,1\}//; p}' scripts/gpu_speed.sh; exit 0;;
  full) STEPS=300; QUICK=();;
  quick) STEPS=60; QUICK=(--quick);;
  kernels) STEPS=300; QUICK=(--quick);;
  *) echo "unknown mode '$MODE': use full, quick or kernels (--help: what each runs)" >&2; exit 2;;
esac
# whole seconds, checked first: the tests below would fail on BUDGET=10m at every step and
# run them all, the slot's budget silently ignored
for var in STEP_LIMIT BUDGET; do
  value=${!var:-0}
  if ! [[ $value =~ ^[0-9]+$ ]]; then
    echo "gpu-speed: $var=$value: give whole seconds (e.g. $var=600)" >&2
    exit 2
  fi
done
LIMIT=$((10#$LIMIT)) BUDGET=$((10#$BUDGET))  # in base 10: bash reads 0900 as bad octal
# torch first: a Python without it would otherwise print a traceback and then claim there
# is no CUDA device, sending the user to look for a GPU instead of for torch
if ! TORCH=$("$PY" -c "import torch" 2>&1); then
  echo "gpu-speed: torch does not import under $PY ($(echo "$TORCH" | tail -1)); set PY to" \
       "the Python of the GPU machine's CUDA torch (GPU_PYTHON=... with make gpu-speed)" >&2
  exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-speed: no CUDA device is visible to $PY; run it on a GPU machine" >&2
  exit 2
fi
# absolute: a run a step starts in another folder finds the package too
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} WANDB_MODE=disabled
# what the steps import (hydra, omegaconf, tqdm through the package): without the carried
# wheels every step would fail alone; the GPU's name alone on stdout (a warning torch
# prints goes to stderr, not into the folder's name)
PROBE_ERR=$(mktemp)
if ! GPU=$("$PY" -c "import basisconv.cli, basisconv.config, basisconv.bench.train, basisconv.bench.speed_run, basisconv.analysis.figures
from basisconv.records import device_name, hardware; print(device_name(hardware()))" 2>"$PROBE_ERR"); then
  echo "gpu-speed: the package does not import under $PY ($(tail -1 "$PROBE_ERR")); install" \
       "requirements.txt without torch, or carry wheels (make gpu-wheels) and put them on PYTHONPATH" >&2
  rm -f "$PROBE_ERR"
  exit 2
fi
rm -f "$PROBE_ERR"
if ! [[ $GPU =~ ^[a-z0-9._-]+$ ]]; then
  echo "gpu-speed: the GPU's name came out as '$GPU', not a folder name; set OUT_DIR" >&2
  [ -z "${OUT_DIR:-}" ] && exit 2
fi
OUT=${OUT_DIR:-results/gpu-$GPU}
# (not checked, every step "failed" with a log that does not exist)
if ! mkdir -p "$OUT/logs" 2>/dev/null || ! [ -w "$OUT/logs" ]; then
  echo "gpu-speed: cannot write $OUT/logs; set OUT_DIR to a folder that can be written" >&2
  exit 2
fi
FAILED=()
NOT_RUN=()

step() {  # step <name> <command...>: run it under the time limit, log it, go on
  local name=$1; shift
  local start=$SECONDS limit=$LIMIT
  if [ "$BUDGET" -gt 0 ]; then
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 10 ]; then NOT_RUN+=("$name"); return; fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  # --kill-after: a step that ignores SIGTERM is killed, and the next one is timed alone.
  # In the background and waited for: timeout runs the step in a process group of its own,
  # which Ctrl-C or a SIGTERM to this script does not reach; the trap passes it on.
  timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1 &
  local status=0
  wait "$!" || status=$?
  if [ "$status" -eq 0 ]; then
    echo "== $name: done in $((SECONDS - start)) s"
  elif { [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; } \
       && [ $((SECONDS - start)) -ge "$limit" ]; then  # (137 sooner: killed, e.g. out of memory)
    echo "== $name: stopped at its ${limit} s limit (log $OUT/logs/$name.log)"
    FAILED+=("$name")
  else
    echo "== $name: FAILED after $((SECONDS - start)) s (log $OUT/logs/$name.log)"
    FAILED+=("$name")
  fi
}

stop() {  # stop <status>: the running step stops too (timeout passes SIGTERM to its group)
  trap - INT TERM
  # the shell's own job list, not a pid noted after the fork: a signal landing just
  # after the fork, before the pid was noted, left the step running (found in review)
  local step
  step=$(jobs -p)
  if [ -n "$step" ]; then
    kill -TERM $step 2>/dev/null
    wait $step 2>/dev/null
  fi
  echo "gpu-speed: stopped; files so far in $OUT" >&2
  exit "$1"
}
trap 'stop 130' INT
trap 'stop 143' TERM

train() {  # train <name> <benchmark_train options...>
  # the warm-up and timed steps in the name (-w10-s60, as benchmark_train.py names them):
  # the speed report compares a step only with a dense step after as many and timed over
  # as many, so one mode's dense record must not replace another's (found in review:
  # quick's and full's records had the same names in one folder), nor a run at the default
  # warm-up (`--steps 60` names its record ...-s60.json) one of these
  local name=$1; shift
  step "train-$name" "$PY" scripts/benchmark_train.py --device cuda --steps "$STEPS" \
    --warmup 10 "$@" --out "$OUT/train-throughput-cuda-$name-w10-s$STEPS.json"
}

layers() {  # layers <name> <benchmark_layers options...>
  local name=$1; shift
  step "layers-$name" "$PY" scripts/benchmark_layers.py --device cuda \
    ${QUICK[@]+"${QUICK[@]}"} "$@" --out-dir "$OUT"
}

kernel_steps() {  # the kernels mode (above)
  # -v: each test named as it starts, so a step stopped at its limit shows where it was
  step tests-kernels "$PY" -m pytest --device cuda -m device -v -p no:cacheprovider \
    --timeout=120 tests/test_fused_norm_kernels.py tests/test_kernels.py tests/test_auto_norm.py
  train bf16-graphs --amp bf16 --cuda-graphs --profile
  for size in 0.25 0.5; do
    train "bf16-basis$size-fused-fusenorm-graphs" --amp bf16 --cuda-graphs \
      --basis-size "$size" --combine fused --fuse-norm --profile
  done
  train bf16-basis0.25-fusenorm-graphs --amp bf16 --cuda-graphs --basis-size 0.25 \
    --fuse-norm --profile
  train bf16-basis0.25-fused-fusenorm-compile --amp bf16 --compile-mode reduce-overhead \
    --basis-size 0.25 --combine fused --fuse-norm
  for batch in 128 512; do
    layers "bf16-b$batch-fused-fusenorm" --amp bf16 --batch-size "$batch" --fuse-norm \
      --combine fused --parts model --fractions 0.25 0.5
  done
  # per shape the fastest of the fold (standard ops or kernels) and the unfused modules,
  # timed eagerly before the graphs are captured; then what it chose, shape by shape
  train bf16-basis0.25-auto-fusenorm-graphs --amp bf16 --cuda-graphs --basis-size 0.25 \
    --combine auto --fuse-norm
  layers bf16-b128-auto-fusenorm --amp bf16 --batch-size 128 --fuse-norm --combine auto \
    --fractions 0.25 0.5
}

all_steps() {  # the full and quick modes
  train bf16 --amp bf16
  # --profile: then where a graphed step's time goes, beside each file (<name>-profile.txt)
  train bf16-graphs --amp bf16 --cuda-graphs --profile
  for size in 0.25 0.5; do
    train "bf16-basis$size-graphs" --amp bf16 --cuda-graphs --basis-size "$size" --profile
    train "bf16-basis$size-fusenorm-graphs" --amp bf16 --cuda-graphs --basis-size "$size" \
      --fuse-norm --profile
    train "bf16-basis$size-fused-graphs" --amp bf16 --cuda-graphs --basis-size "$size" --combine fused
    # folded norms with the combination as Triton kernels (fuse_norm with combine=fused)
    train "bf16-basis$size-fused-fusenorm-graphs" --amp bf16 --cuda-graphs --basis-size "$size" \
      --combine fused --fuse-norm --profile
    train "bf16-basis$size" --amp bf16 --basis-size "$size"
  done
  # basis.frobenius_decay's correction term (counted: 3.0 % and 1.7 % of the FLOPs at 1/2, 1/4)
  train bf16-basis0.25-frobenius-graphs --amp bf16 --cuda-graphs --basis-size 0.25 \
    --frobenius-decay
  train fp32-graphs --cuda-graphs
  train bf16-compile --amp bf16 --compile-mode reduce-overhead
  train bf16-basis0.25-compile --amp bf16 --compile-mode reduce-overhead --basis-size 0.25
  train bf16-basis0.25-fused-compile --amp bf16 --compile-mode reduce-overhead --basis-size 0.25 \
    --combine fused
  # the folded norm's kernels compiled: Inductor fuses the fold's few dozen small per-layer ops
  # (statistics, folded matrix, their backward) that graphs alone replay one by one
  train bf16-basis0.25-fused-fusenorm-compile --amp bf16 --compile-mode reduce-overhead \
    --basis-size 0.25 --combine fused --fuse-norm

  for batch in 128 512; do
    layers "bf16-b$batch" --amp bf16 --batch-size "$batch"
    # the fused kernel compiles and autotunes per shape: the two sizes the goal names
    layers "bf16-b$batch-fused" --amp bf16 --batch-size "$batch" --combine fused --fractions 0.25 0.5
    # the same timed as CUDA graph replays: the GPU's work without the launches (eager, a
    # layer at batch 128 takes its launch time whatever its FLOPs)
    layers "bf16-b$batch-graphs" --amp bf16 --batch-size "$batch" --cuda-graphs
    layers "bf16-b$batch-fused-graphs" --amp bf16 --batch-size "$batch" --cuda-graphs \
      --combine fused --fractions 0.25 0.5
    layers "bf16-b$batch-auto" --amp bf16 --batch-size "$batch" --combine auto
    layers "bf16-b$batch-fusenorm" --amp bf16 --batch-size "$batch" --fuse-norm --parts model
    layers "bf16-b$batch-fused-fusenorm" --amp bf16 --batch-size "$batch" --fuse-norm \
      --combine fused --parts model --fractions 0.25 0.5
  done
  layers fp32-b128 --batch-size 128
  layers fp32-b128-fused --batch-size 128 --combine fused --fractions 0.25 0.5
}

if [ "$MODE" = kernels ]; then kernel_steps; else all_steps; fi

if [ ${#NOT_RUN[@]} -gt 0 ]; then
  echo "gpu-speed: the ${BUDGET} s budget was spent; not run: ${NOT_RUN[*]}" >&2
fi
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu-speed: ${#FAILED[@]} steps failed: ${FAILED[*]}; files in $OUT" >&2
fi
if [ ${#FAILED[@]} -gt 0 ] || [ ${#NOT_RUN[@]} -gt 0 ]; then exit 1; fi
echo "gpu-speed: every step done; files in $OUT"
