#!/usr/bin/env bash
# The paper's protocol as an explicit list of runs, one block per table row:
#   scripts/reproduce.sh [paper|quick|smoke]      (make reproduce PROFILE=...)
# Every run has a fixed folder outputs/<profile>/<row>/seed<k>; a run whose record is
# complete is not trained again and an interrupted one resumes from its last epoch, so
# re-running this script continues where it stopped. The sensitivity table is cached.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-quick}
PY=${PY:-.venv/bin/python}
OUT=outputs/$PROFILE
case $PROFILE in
  paper) SEEDS="0 1 2"; BENCH="";;
  quick) SEEDS="0 1 2"; BENCH="--quick";;
  smoke) SEEDS="0";     BENCH="--quick";;
  *) echo "unknown profile '$PROFILE': use paper, quick or smoke" >&2; exit 2;;
esac

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
"$PY" scripts/exhaustive_search.py profile="$PROFILE" model=resnet8 \
  sensitivity.search_subset_size=3 hydra.run.dir="$OUT/exhaustive-search-resnet8"
# 7. tables
"$PY" scripts/analyze.py profile="$PROFILE"
