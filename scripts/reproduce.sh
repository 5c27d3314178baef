#!/usr/bin/env bash
# The paper's protocol as an explicit list of runs, one block per table row:
#   scripts/reproduce.sh [paper|quick|smoke]      (make reproduce PROFILE=..., make smoke)
# Every run has a fixed folder outputs/<profile>/<row>/seed<k>; a run whose record is
# complete is not trained again and an interrupted one resumes from its last epoch, so
# re-running this script continues where it stopped. The sensitivity table is cached,
# the speed benchmark is skipped when its results exist.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-quick}
PY=${PY:-.venv/bin/python}
OUT=${OUTPUTS:-outputs}/$PROFILE
RESULTS=results/$PROFILE
case $PROFILE in
  paper) SEEDS="${SEEDS:-0 1 2}"; BENCH=();;
  quick) SEEDS="${SEEDS:-0 1 2}"; BENCH=(--quick);;
  # generated data, tiny models: checks the whole path in minutes; its results stay in outputs/
  smoke) SEEDS="0";     BENCH=(--quick --batch-size 8 --fractions 0.25 0.5); RESULTS=$OUT/results;;
  *) echo "unknown profile '$PROFILE': use paper, quick or smoke" >&2; exit 2;;
esac

DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
if [ "$PROFILE" = paper ] && [ "$DEVICE" = cpu ] && [ -z "${ALLOW_CPU:-}" ]; then
  echo "the paper profile trains 27 ResNet-18 runs of 30 epochs: weeks on a CPU (~16 min an" \
       "epoch on 2 cores). Run it on a GPU machine, use PROFILE=quick here, or set ALLOW_CPU=1." >&2
  exit 2
fi

train() {  # train <row folder> <overrides...>: one run per seed
  local row=$1; shift
  for seed in $SEEDS; do
    echo "== $row seed $seed"
    "$PY" scripts/train.py profile="$PROFILE" seed="$seed" "$@" \
      hydra.run.dir="$OUT/$row/seed$seed" trainer.progress=false
  done
}

# 1. dense baseline; 2. basis convolutions everywhere (the naive deployment)
train baseline experiment=baseline
train basis-all-0.5 experiment=basis_all basis.size=0.5
# 3. sensitivity analysis (one table, reused by every seed below)
"$PY" scripts/sensitivity.py profile="$PROFILE" hydra.run.dir="$OUT/sensitivity"
# 4. sensitivity-selected layers, and the baselines on the same FLOP budget
for policy in sensitivity_budget random first_k last_k; do
  train "selected-$policy-0.5" experiment=basis_selected selection="$policy" basis.size=0.5
done
# 5. basis-size sweep, every layer (0.5 is row 2)
for size in 0.125 0.25 0.75; do
  train "basis-all-$size" experiment=basis_all basis.size="$size"
done
# 6. does the fast method find what exhaustive search finds? (ResNet-8: 7 layers)
if [ -f "$OUT/exhaustive-search-resnet8/search.csv" ]; then
  echo "== exhaustive search: done before, skipped (delete $OUT/exhaustive-search-resnet8 to redo)"
else
  "$PY" scripts/exhaustive_search.py profile="$PROFILE" model=resnet8 \
    sensitivity.search_subset_size=3 hydra.run.dir="$OUT/exhaustive-search-resnet8"
fi
# 7. layer and model speed of basis vs dense convolutions (ResNet-18 shapes)
if compgen -G "$RESULTS/model-speed-$DEVICE-*.csv" > /dev/null; then
  echo "== speed benchmark: results in $RESULTS exist, skipped"
else
  echo "== speed benchmark"
  "$PY" scripts/benchmark_layers.py --device "$DEVICE" "${BENCH[@]}" --out-dir "$RESULTS"
fi
# 8. tables and plots
"$PY" scripts/analyze.py profile="$PROFILE" runs_dir="$OUT" out_dir="$RESULTS"
