#!/usr/bin/env bash
# A GPU slot's call as one command (docs/gpu.md; the first runs speed measurements, later
# ones the check): a call of the device machine returns only the files under $OUT, and one
# killed at its time limit returns what is there then, so what a call measures is archived
# into $OUT as it is made:
#   scripts/gpu_slot.sh <quick|full|kernels> | check [gpu_check.py arguments...]
# 1. without hydra importable, installs the carried wheels (wheels/*.whl, made by
#    make gpu-wheels and git-ignored: name wheels/ among what is carried) into SITE;
# 2. exports PYTHONPATH=SITE:<repository>/src (absolute) and WANDB_MODE=disabled (unless
#    set);
# 3. runs scripts/gpu_speed.sh <mode> (BUDGET, OUT_DIR set) or scripts/gpu_check.py with
#    the arguments given (--budget-s, --out-dir, --work-dir set), under a budget of SLOT_S
#    less MARGIN_S less the seconds already spent (the install), into SLOT_DIR/<name>
#    (speed-<mode> or check) with its output in SLOT_DIR/<name>.log;
# 4. every TAR_EVERY seconds while it runs, and once when it ends, archives that folder
#    and log as $OUT/<name>.tgz (written under a temporary name, then renamed: a call
#    killed mid-archive keeps the previous archive);
# 5. prints the log's last 20 lines and one closing line, and exits with the command's
#    status (2, with one line, when it cannot start).
# Variables: OUT (required: the folder whose files the call returns), SLOT_S (the call's
# time limit, timeout_s; default 600), MARGIN_S (seconds kept for stopping and the last
# archive; default 30), PY (default python3: the GPU machine's CUDA torch), SITE (default
# /tmp/site), SLOT_DIR (default /tmp/gpu-slot), TAR_EVERY (default 10).
set -uo pipefail
absolute() { [[ $1 = /* ]] && echo "$1" || echo "$PWD/$1"; }  # before the cd below
OUT=${OUT:+$(absolute "$OUT")}
SITE=$(absolute "${SITE:-/tmp/site}")
SLOT_DIR=$(absolute "${SLOT_DIR:-/tmp/gpu-slot}")
cd "$(dirname "$0")/.."
PY=${PY:-python3}
MODE=${1:-}
shift || true
refuse() { echo "gpu-slot: $*" >&2; exit 2; }

case $MODE in
  -h|--help) sed -n '2,/^set -uo/{/^set -uo/d; s/^# \{0,1\}//; p}' scripts/gpu_slot.sh; exit 0;;
  quick|full|kernels)
    NAME=speed-$MODE
    [ $# -eq 0 ] || refuse "$MODE takes no arguments (gpu_speed.sh's variables: --help there)";;
  check)
    NAME=check
    # set here from the slot, so that the record lands in the archived folder in time
    for arg in "$@"; do
      case $arg in --budget-s*|--out-dir*|--work-dir*)
        refuse "check sets --budget-s, --out-dir and --work-dir itself (from SLOT_S and" \
               "SLOT_DIR); leave out $arg";;
      esac
    done;;
  *) refuse "give quick, full, kernels (gpu_speed.sh's modes) or check, not '$MODE'" \
            "(--help: what it runs)";;
esac
[ -n "$OUT" ] || refuse "OUT is not set: name the folder whose files the call returns (a" \
                        "device call sets it)"
for var in SLOT_S MARGIN_S TAR_EVERY; do
  value=${!var:-}
  [[ -z $value || $value =~ ^[0-9]+$ ]] || refuse "$var=$value: give whole seconds"
done
SLOT_S=$((10#${SLOT_S:-600})) MARGIN_S=$((10#${MARGIN_S:-30})) TAR_EVERY=$((10#${TAR_EVERY:-10}))
[ "$TAR_EVERY" -gt 0 ] || refuse "TAR_EVERY=0: give the seconds between archives (e.g. 10)"

export PYTHONPATH=$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export WANDB_MODE=${WANDB_MODE:-disabled}
mkdir -p "$SLOT_DIR/$NAME" "$OUT" || refuse "cannot make $SLOT_DIR/$NAME and $OUT"
LOG=$SLOT_DIR/$NAME.log

install_wheels() {  # the carried wheels into SITE, unless hydra imports already
  "$PY" -c "import hydra" 2>/dev/null && return
  local wheels=(wheels/*.whl)
  [ -e "${wheels[0]}" ] || refuse "hydra does not import under $PY and wheels/ holds no" \
    "wheels: run make gpu-wheels where there is network, and carry wheels/ (git ignores it)"
  if ! "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "${wheels[@]}" \
       > "$LOG" 2>&1 || ! "$PY" -c "import hydra" 2>/dev/null; then
    refuse "installing wheels/ into $SITE left hydra not importable under $PY" \
           "($(tail -1 "$LOG")); remake them with make gpu-wheels and carry wheels/"
  fi
}
install_wheels

SPENT=$SECONDS
BUDGET=$((SLOT_S - MARGIN_S - SPENT))
[ "$BUDGET" -gt 0 ] || refuse "SLOT_S=$SLOT_S less MARGIN_S=$MARGIN_S and $SPENT s spent" \
                              "leaves no time; give the call's limit as SLOT_S"
if [ "$NAME" = check ]; then
  COMMAND=("$PY" scripts/gpu_check.py "$@" --budget-s "$BUDGET" --out-dir "$SLOT_DIR/$NAME"
           --work-dir "$SLOT_DIR/$NAME/work")
else
  COMMAND=(env "BUDGET=$BUDGET" "OUT_DIR=$SLOT_DIR/$NAME" "PY=$PY"
           bash scripts/gpu_speed.sh "$MODE")
fi
ARCHIVE=$OUT/$NAME.tgz

archive() {  # the folder and the log as $OUT/<name>.tgz, replaced whole or not at all
  local partial=$OUT/.$NAME.tgz.partial status=0
  tar czf "$partial" -C "$SLOT_DIR" "$NAME" "$NAME.log" 2>/dev/null || status=$?
  # 1: a file changed as it was read (the command writing it): the archive is still a
  # valid one, of what was there; 2: none was made
  if [ "$status" -le 1 ]; then mv -f "$partial" "$ARCHIVE"; else rm -f "$partial"; fi
}

echo "gpu-slot: ${COMMAND[*]} under a $BUDGET s budget (SLOT_S $SLOT_S less MARGIN_S" \
     "$MARGIN_S less $SPENT s spent), archived every $TAR_EVERY s to $ARCHIVE"
"${COMMAND[@]}" > "$LOG" 2>&1 &
RUNNING=$!
# a slot ending with SIGTERM: the command stops (both scripts stop their steps on it), and
# what it made is archived once more
trap 'kill -TERM "$RUNNING" 2>/dev/null' INT TERM
next=$((SECONDS + TAR_EVERY))
while kill -0 "$RUNNING" 2>/dev/null; do
  sleep 1
  if [ "$SECONDS" -ge "$next" ]; then archive; next=$((SECONDS + TAR_EVERY)); fi
done
wait "$RUNNING"
STATUS=$?
archive
tail -n 20 "$LOG"
echo "gpu-slot: $NAME exited $STATUS after $SECONDS s; its folder and log are in $ARCHIVE"
exit "$STATUS"
