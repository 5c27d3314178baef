#!/usr/bin/env bash
# Our protocol for the paper's claims (the paper's own is not known to us) as an explicit
# list of runs, one block per table row:
#   scripts/reproduce.sh [paper|quick|smoke]      (make reproduce PROFILE=... [JOBS=N], make smoke)
# With no profile it runs paper, as make reproduce does (the README names them as one
# command; found in review: this script ran quick).
# Every run has a fixed folder outputs/<profile>/<row>/seed<k>; an interrupted one resumes
# from its last epoch. Every finished run's record (never its checkpoint) is published to
# results/<profile>/runs/<row>/seed<k>.json, and a run whose record is there is skipped:
# records accumulate (commit them), so a protocol cut off on one machine continues on the
# next where it stopped. The tables and plots are built from those records.
# RESULTS_DIR=<new folder> OUTPUTS=<new folder> trains every run again, leaving the
# committed results alone (a finished run in OUTPUTS is published as it is).
#
# JOBS=N runs N runs at once (default: 4 per GPU; 1 on a CPU, one a core for smoke), spread
# over the visible GPUs, each logging to outputs/<profile>/logs/<row>-seed<k>.log and using
# its share of the CPU cores (OMP_NUM_THREADS, when not set). The speed benchmark always
# runs alone. SENSITIVITY_CACHE sets the sensitivity tables' cache folder,
# SENSITIVITY_WORKERS how many of its fine-tunes run at once (default: 4 on a GPU, 1 on CPU).
set -euo pipefail
# Relative paths in these variables are the caller's, not the repository root's (the runs
# start there): made absolute before moving.
for var in OUTPUTS RESULTS_DIR SENSITIVITY_CACHE CIFAR10_ROOT PY; do
  value=${!var:-}
  if [[ -n $value && $value != /* && ( $var != PY || $value == */* ) ]]; then
    export "$var=$PWD/$value"
  fi
done
cd "$(dirname "$0")/.."
# this checkout's package, for the checks below and for every run: a PY without it
# installed (the GPU machine's own python3) passed the checks and failed every run, and
# one whose editable install is another checkout ran that checkout's code
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PROFILE=${1:-paper}
if [ $# -gt 1 ]; then  # (found in review: `reproduce.sh quick trainer.epochs=2`, or make's
                       # ARGS=, ran the whole protocol without them, silently)
  shift
  echo "scripts/reproduce.sh takes one argument, the profile; not: $*. Give Hydra overrides" \
       "as OVERRIDES=\"key=value ...\" (and JOBS=, SEEDS=, ... as variables)" >&2
  exit 2
fi
PY=${PY:-.venv/bin/python}
if ! command -v "$PY" > /dev/null; then
  echo "PY=$PY: no such python here; run \`make reproduce PROFILE=$PROFILE\` (it builds .venv)" \
       "or set PY=<a python with the requirements>" >&2
  exit 2
fi
refuse_jobs() { echo "JOBS=$JOBS: use a number of runs >= 1" >&2; exit 2; }
if [ -n "${JOBS:-}" ]; then  # (checked before anything slow; empty: the default, below)
  case $JOBS in ''|*[!0-9]*) refuse_jobs;; esac
  # in base 10: bash reads 08 as a bad octal number, and 00 as 0
  [ $((10#$JOBS)) -ge 1 ] || refuse_jobs
fi
# (found in review: SEEDS="0,1", a sweep's commas, or SENSITIVITY_WORKERS=0 passed, and
# every training run, or the estimate and the search, failed only after the others ran)
# (and, from the final read, SEEDS=" ", which trained no run without a word, or a seed
# given twice, whose runs would share one folder)
seeds_seen=" "
for seed in ${SEEDS:-}; do
  case $seed in ''|*[!0-9]*)
    echo "SEEDS=$SEEDS: give seeds as whole numbers >= 0 separated by spaces, e.g." \
         "SEEDS=\"0 1 2\"" >&2
    exit 2;;
  esac
  case $seeds_seen in *" $((10#$seed)) "*)
    echo "SEEDS=$SEEDS: seed $seed is given twice; give each seed once" >&2
    exit 2;;
  esac
  seeds_seen="$seeds_seen$((10#$seed)) "
done
if [ -n "${SEEDS+set}" ] && [ "$seeds_seen" = " " ] && [ -n "$SEEDS" ]; then
  echo "SEEDS=\"$SEEDS\": no seed given; give seeds separated by spaces, e.g. SEEDS=\"0 1 2\"" >&2
  exit 2
fi
if [ -n "${SENSITIVITY_WORKERS:-}" ]; then
  workers=0
  case $SENSITIVITY_WORKERS in *[!0-9]*) ;; *) workers=$((10#$SENSITIVITY_WORKERS));; esac
  if [ "$workers" -lt 1 ]; then
    echo "SENSITIVITY_WORKERS=$SENSITIVITY_WORKERS: use a number of fine-tunes at once >= 1" >&2
    exit 2
  fi
  SENSITIVITY_WORKERS=$workers  # (in base 10, as JOBS)
fi
OUT=${OUTPUTS:-outputs}/$PROFILE
RESULTS=${RESULTS_DIR:-results}/$PROFILE
case $PROFILE in
  paper) SEEDS="${SEEDS:-0 1 2}"; BENCH=();;
  quick) SEEDS="${SEEDS:-0 1 2}"; BENCH=(--quick);;
  # generated data, tiny models: checks the whole path in minutes; its results stay in outputs/
  smoke) SEEDS="${SEEDS:-0}"; BENCH=(--quick --batch-size 8 --fractions 0.25 0.5); RESULTS=$OUT/results;;
  *) echo "unknown profile '$PROFILE': use paper, quick or smoke" >&2; exit 2;;
esac
RECORDS=$RESULTS/runs
CACHE=${SENSITIVITY_CACHE:-cache/sensitivity}
# OVERRIDES="key=value ...": Hydra overrides for every run, the sensitivity estimate and the
# search, split into words as a shell splits them (quote a value with spaces). Where the
# records are kept (results/<profile>/runs) they may only change how runs execute
# (EXECUTION below, e.g. OVERRIDES="trainer.cuda_graphs=true" on a GPU): runs made with and
# without them are alike (to rounding), so a recorded run is still skipped. Any other key makes a variant
# of the protocol, which needs folders of its own (RESULTS_DIR=..., OUTPUTS=...); its
# overrides are kept in protocol-overrides.txt there, and every later invocation on that
# folder must give the same ones, so that all of its records were made alike. Keys this
# script sets per run (a row, its seed, its folders) are refused.
# keys that change only how runs execute (alike to rounding), and keys set per run below
# (every key that resume accepts changed, same_run.RESUMABLE_CHANGES, that is not set
# per run: tests/test_reproduce.py holds the two lists together)
EXECUTION=(trainer.cuda_graphs trainer.compile trainer.compile_mode trainer.device
           trainer.threads trainer.checkpoint trainer.checkpoint_every_s trainer.resume
           trainer.collective_timeout_s
           data.root data.download sensitivity.recompute logger 'logger.*' 'hydra.*')
# (not data.verify_md5, which resume accepts: false keys the sensitivity table by the data's
# folder, so a session that changed it set aside the published estimate, the search and
# the selected runs as made from a table of another key, and made them again)
PER_RUN=(experiment selection basis.size seed profile model publish hydra.run.dir
         trainer.progress sensitivity.cache_dir sensitivity.restore_from sensitivity.workers
         sensitivity.search_subset_size)
split='import shlex, sys; sys.stdout.write("".join(w + "\0" for w in shlex.split(sys.argv[1])))'
if ! "$PY" -c "$split" "${OVERRIDES:-}" > /dev/null 2>&1; then
  echo "OVERRIDES=${OVERRIDES:-}: unbalanced quotes; quote as a shell would, e.g." \
       "OVERRIDES=\"name='a b' trainer.threads=1\"" >&2
  exit 2
fi
mapfile -d '' -t EXTRA < <("$PY" -c "$split" "${OVERRIDES:-}")
matches() {  # matches <key> <patterns...>: whether the key is one of them
  local key=$1 pattern; shift
  for pattern in "$@"; do [[ $key == $pattern ]] && return 0; done
  return 1
}
VARIANT=()
for override in ${EXTRA[@]+"${EXTRA[@]}"}; do
  key=${override%%=*}
  key=${key#"${key%%[!+~]*}"}  # without Hydra's +, ++ or ~ prefix
  if matches "$key" "${PER_RUN[@]}"; then
    echo "OVERRIDES: $key is set per run by this script (the row, its seed or its folders);" \
         "drop it from OVERRIDES (train one run with scripts/train.py instead)" >&2
    exit 2
  fi
  matches "$key" "${EXECUTION[@]}" || VARIANT+=("$override")
done
# sorted bytewise (LC_ALL=C), and the folder's list sorted again on reading: a list written
# under another locale's collation (en_US puts data=... before data.root=...) is the same
WANTED=$(printf '%s\n' ${VARIANT[@]+"${VARIANT[@]}"} | LC_ALL=C sort)
MADE_WITH=$RESULTS/protocol-overrides.txt
# the protocol's own folder however RESULTS_DIR names it (./results, its absolute path);
# refused before the checks below, which need seconds of CPU to say nothing it depends on
OWN=$(realpath -m "results/$PROFILE")
if [ -n "$WANTED" ] && [ "$(realpath -m "$RESULTS")" = "$OWN" ]; then
  echo "OVERRIDES: ${WANTED//$'\n'/ } change what the runs compute, and $RECORDS holds" \
       "the protocol's own records: give this variant folders of its own" \
       "(RESULTS_DIR=<folder> OUTPUTS=<folder>). Here OVERRIDES may only change how runs" \
       "execute: ${EXECUTION[*]}" >&2
  exit 2
fi
# One python start (each imports torch: seconds) checks the packages the runs need, that
# no git merge left the results folder's files unresolved (conflicted records would be set
# aside and made again), then the overrides (every run would fail on a bad one, each
# saying why in its own log), counts
# the GPUs the runs can use, and says whether the runs' dataset is missing (refused before
# the first run that reads it, not when every run is recorded; and then what its runs make
# without it: the estimate from a cached table, a run finished in its folder unless
# trainer.resume=false); each refusal is one line. It also gives the sensitivity keys of the
# protocol's tables, for setting records aside below.
CHECK='
import json, sys
try:
    import hydra, matplotlib, omegaconf, pandas, torch, tqdm
    from basisconv.records import unmerged_problem
    from basisconv.reproduce import check_overrides, made_without_data, protocol_keys
except ImportError as err:
    sys.exit(f"PY={sys.argv[1]} lacks a package the runs need ({err}); install requirements.txt"
             " (without torch on a GPU machine), or put carried wheels on PYTHONPATH")
if problem := unmerged_problem(sys.argv[2]):
    sys.exit(f"error: {problem}")
missing = check_overrides(sys.argv[4], sys.argv[5:])
print(torch.cuda.device_count())
print(json.dumps(protocol_keys(sys.argv[4], *sys.argv[5:])))
print(missing or "")
if missing:
    print(json.dumps(made_without_data(sys.argv[4], sys.argv[3], sys.argv[5:])))'
CHECKED=$("$PY" -c "$CHECK" "$PY" "$RESULTS" "$CACHE" "$PROFILE" ${EXTRA[@]+"${EXTRA[@]}"}) \
  || exit 2
{ read -r GPUS; IFS= read -r KEYS; IFS= read -r NO_DATA || true
  IFS= read -r WITHOUT_DATA || true; } <<< "$CHECKED"
# tied to its overrides once it holds a record (found in review: a start refused for its
# dataset, or one whose runs all failed, kept them, and the next invocation was refused for
# records "made with" overrides that had made none)
if [ -n "$(find "$RECORDS" -name '*.json' -print -quit 2> /dev/null)" ]; then
  TIED=$(LC_ALL=C sort "$MADE_WITH" 2>/dev/null || true)
  if [ "$TIED" != "$WANTED" ]; then
    echo "OVERRIDES: the records in $RECORDS were made with [${TIED//$'\n'/ }], this asks" \
         "for [${WANTED//$'\n'/ }]: give the same overrides, or other folders" \
         "(RESULTS_DIR=<folder> OUTPUTS=<folder>)" >&2
    exit 2
  fi
fi
DEVICE=$([ "$GPUS" -gt 0 ] && echo cuda || echo cpu)
if [ "$PROFILE" = paper ] && [ "$DEVICE" = cpu ] && [ -z "${ALLOW_CPU:-}" ]; then
  echo "the paper profile trains 27 ResNet-18 runs of 30 epochs: days to weeks on a CPU (8-16 min" \
       "an epoch on 2 cores). Run it on a GPU machine, use PROFILE=quick here, or set ALLOW_CPU=1." >&2
  exit 2
fi
# A GPU step of these small models is launch-bound: 4 runs share one GPU well (measured on
# an H200: 2.4x the throughput of one). On a CPU one run already uses every core, except
# the smoke profile's tiny runs, bound by each process's start-up: one run a core (on 2
# cores its protocol took 93 s so, 156 s one run at a time).
CORES=$(nproc 2> /dev/null || getconf _NPROCESSORS_ONLN)
if [ "$GPUS" -gt 0 ]; then DEFAULT_JOBS=$((4 * GPUS))
elif [ "$PROFILE" = smoke ]; then DEFAULT_JOBS=$CORES
else DEFAULT_JOBS=1; fi
JOBS=$((10#${JOBS:-$DEFAULT_JOBS}))
# Runs at once share the cores: each gets its share of torch's CPU threads (as torchrun
# gives each process one), unless OMP_NUM_THREADS says otherwise. Threads that outnumber
# the cores make every run wait on the others': the smoke protocol with JOBS=2 on 2 cores
# took 249 s with torch's default of 2 threads a run, 93 s with 1.
RUN_THREADS=${OMP_NUM_THREADS:-$((CORES / JOBS > 0 ? CORES / JOBS : 1))}
# the sensitivity estimate's and the search's fine-tunes at once (sensitivity.workers)
WORKERS=${SENSITIVITY_WORKERS:-$([ "$GPUS" -gt 0 ] && echo 4 || echo 1)}
IFS=, read -r -a GPU_IDS <<< "${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((GPUS > 0 ? GPUS - 1 : 0)))}"
LOGS=$OUT/logs
STARTED=0
LAST_JOB=
# One invocation at a time on a run folder and a results folder (found in review: two at
# once shared the failure marks and logs, so a failed run was reported as done with exit
# status 0, and timed the speed benchmark beside each other). The lock is held until this
# script and every run it started have ended (they inherit it).
# A refusal leaves nothing it made (found in review: every refused start left an empty
# .reproduce.lock behind, and the folders made for it): MADE lists what this invocation
# made, in the order it made it, and unmake removes it, the last first (a folder only once
# empty). A lock file is removed only by its holder, and taken only if it is still the file
# of its name once locked: one removed between another invocation's opening and locking
# it is not held by that one. A start that runs leaves its lock files (git-ignored, and
# said in docs/reproducing.md): its runs hold the lock too, and removed, the file of that
# name would be a new one, which the next invocation could lock while a run still held the old.
# A folder that cannot hold its lock (not writable, a read-only file system, a file in its
# path, a disk too full for the folder or the empty file; a full disk usually still gives
# the lock, and its first refused write says so) is said so, in the system's words, by the
# python that makes the folder and the lock file (found in review: the shell's failed mkdir
# and open were refused as "another scripts/reproduce.sh is running", which sent the user
# waiting); the shell then opens the file it made, which fails only if another invocation
# removed it meanwhile.
MADE=()
MAKE_LOCK='import os, sys
folder, lock = sys.argv[1:]
try:
    os.makedirs(folder, exist_ok=True)
    open(lock, "a").close()
except OSError as err:
    sys.exit(f"error: cannot lock {folder} for this protocol ({err.strerror}: {err.filename});"
             " give it folders it can write (OUTPUTS=<folder> RESULTS_DIR=<folder>), or fix"
             " the permissions")'
lock_folder() {  # lock_folder <fd> <folder>: take <folder>/.reproduce.lock, or fail (a
                 # folder that cannot hold it ends the script, saying why)
  local lock=$2/.reproduce.lock made=() folder=$2 new_lock=
  # (a symlink whose target is gone is not there to -e, but is the user's, never made here:
  # found in review, a refusal's unmake deleted OUTPUTS linked to a disk not mounted)
  while [ ! -e "$folder" ] && [ ! -L "$folder" ]; do  # the folders makedirs makes, the
    made=("$folder" ${made[@]+"${made[@]}"}); folder=$(dirname "$folder")  # outermost first
  done
  [ -e "$lock" ] || [ -L "$lock" ] || new_lock=$lock
  if ! "$PY" -c "$MAKE_LOCK" "$2" "$lock"; then  # (the folders it made, not the lock file)
    MADE+=(${made[@]+"${made[@]}"}); unmake; exit 2
  fi
  made+=(${new_lock:+"$new_lock"})
  { eval "exec $1>>\"\$lock\""; } 2> /dev/null || return 1
  "$PY" -c 'import fcntl, os, sys
fcntl.flock(int(sys.argv[1]), fcntl.LOCK_EX | fcntl.LOCK_NB)
sys.exit(not os.path.samestat(os.fstat(int(sys.argv[1])), os.stat(sys.argv[2])))' \
    "$1" "$lock" 2> /dev/null || return 1
  MADE+=(${made[@]+"${made[@]}"})
}
unmake() {  # unmake: remove what MADE lists, the last made first
  local i
  for ((i = ${#MADE[@]} - 1; i >= 0; i--)); do
    if [ -d "${MADE[i]}" ]; then rmdir "${MADE[i]}" 2> /dev/null || true
    else rm -f "${MADE[i]}"; fi
  done
  MADE=()
}
# (one folder for both, OUTPUTS=RESULTS_DIR, is locked once: a second lock on the same file
# failed against the first, and every invocation was refused as another's; found in review)
if ! lock_folder 8 "$OUT" || { [ "$(realpath -m "$RESULTS")" != "$(realpath -m "$OUT")" ] \
                               && ! lock_folder 9 "$RESULTS"; }; then
  unmake
  echo "another scripts/reproduce.sh is running on $OUT or $RESULTS; wait for it to end," \
       "or give this one other folders (OUTPUTS=<folder> RESULTS_DIR=<folder>)" >&2
  exit 2
fi
trap unmake EXIT  # until the session log's trap below: a refusal between them
# A start whose runs would not find their dataset (NO_DATA, from the checks) is refused
# here if one of them would read it (a run finished in its folder is published as it is,
# and the estimate from the table cached for its key, without it), before anything
# changes: no record set aside, no failure mark removed, no overrides list written (found
# in review: a refusal after them left them so). Nothing
# computed, so no session logged (else a start without its dataset added one to the
# protocol's wall-clock in index.json).
# Then a file in a run's place that is not its finished record (cut off, another row's or
# profile's, one the analysis cannot read, or made from a sensitivity table of a key this
# code no longer gives) would make the run be skipped for good: set aside, said, and the
# run made again
# (with the run folders: a run set aside for its sensitivity table is trained again, not
# published again from its folder)
# (with the keys the checks gave: this process loads neither Hydra nor torch)
"$PY" -c 'import json, sys; from basisconv.records import runs_to_make, set_aside_stale_records
records, outputs, profile, keys, no_data, without_data, *seeds = sys.argv[1:]
keys = json.loads(keys)
if no_data and runs_to_make(records, profile, keys, seeds, outputs, **json.loads(without_data)):
    print(f"error: {no_data}", file=sys.stderr)
    sys.exit(2)
set_aside_stale_records(records, profile, keys, outputs=outputs)' \
  "$RECORDS" "$OUT" "$PROFILE" "$KEYS" "$NO_DATA" "$WITHOUT_DATA" $SEEDS
# every refusal is above: only an invocation that runs ties the folder to its overrides
# (none: a file an earlier start left, refused before it made a record, is not this one's)
# (by the package's atomic write, as every record: one cut off by a kill or a full disk held
# part of the list, and refused every later invocation; renamed without an fsync, a power
# cut could leave it empty beside records flushed after it; a python start without torch)
# (a write the system refuses, a full disk, is its WriteError's one line, not a trace)
if [ -n "$WANTED" ]; then
  [ -e "$MADE_WITH" ] || MADE+=("$MADE_WITH")
  "$PY" -c 'import sys; from basisconv.records import write_text_atomic as w
try: w(sys.argv[1], sys.argv[2] + "\n")
except OSError as err: sys.exit(f"error: {err}")' "$MADE_WITH" "$WANTED"
else
  rm -f "$MADE_WITH"
fi
rm -f "$LOGS"/*.failed  # failure marks belong to one invocation
# Each invocation that gets this far is logged in $RESULTS/sessions/ however it ends,
# short of SIGKILL (when, how long, on what, what it published): the protocol's wall-clock
# is the sum over the sessions, on whichever machines they ran, and the analysis adds it
# up (index.json). One that ends well having computed nothing is not.
START=$(date +%s.%N)
log_session() {  # log_session <exit code>: its writer ignores a Ctrl-C or SIGTERM to the
                 # group (the script's own traps still end it after): one that came as the
                 # log was written lost the whole session from the protocol's wall-clock
  local code=$1
  ( trap '' INT TERM; exec "$PY" -c \
    'import sys; from basisconv.records import log_session
if log_session(*sys.argv[1:]) is None:
    print(f"== nothing computed: this session is not logged in {sys.argv[1]}/sessions/")' \
    "$RESULTS" "$RECORDS" "$PROFILE" "$START" "$code" "$JOBS" "${OVERRIDES:-}" ) \
    || [ $? = 1 ] || echo "this session could not be logged in $RESULTS/sessions/" >&2
    # (status 1: python said why itself, in one line, or a trace for a bug)
}
trap 'log_session $?' EXIT

stop() {  # stop <status>: on Ctrl-C or SIGTERM, stop the runs in the background too (a
          # background command does not get the terminal's Ctrl-C); each keeps its last
          # checkpoint and says in its log where it stopped
  trap - INT TERM
  local pids
  pids=$(jobs -p)
  if [ -n "$pids" ]; then
    echo "stopping the runs in progress; the same command continues them" >&2
    for pid in $pids; do
      if [ "$pid" = "$FOREGROUND" ]; then kill -TERM "$pid" 2>/dev/null || true  # the command
      else pkill -TERM -P "$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; fi
    done
    wait
  fi
  exit "$1"
}
trap 'stop 130' INT
trap 'stop 143' TERM
# From here on, no command substitution $(...) in this shell but in stop, which has reset
# the traps (found in review: bash 5.2 may run a trap while it parses one, and then fails to
# parse the trap itself: a SIGTERM or Ctrl-C as it built a run's command line said "trap:
# ... unexpected EOF while looking for matching `)'", stopped nothing and ended with status
# 2, or hung). Values come back through variables instead (hydra_path sets one), and lists
# of jobs through mapfile as the last command of a pipeline, which then runs in this shell:
shopt -s lastpipe

FOREGROUND=
in_foreground() {  # in_foreground <command...>: run it and wait for it. In the background
                   # and waited for: bash runs a trap only once a foreground command has
                   # ended, so a SIGTERM to this script would wait for the whole run
  "$@" &
  FOREGROUND=$!
  local code=0
  wait "$FOREGROUND" || code=$?
  FOREGROUND=
  return "$code"
}

run() {  # run <name> <command...>: now (JOBS=1), or in the background once a slot is free;
         # a run that fails is marked, named at the end, and the others go on
  local name=$1; shift
  if [ "$JOBS" -le 1 ]; then  # (found in review: its first failure ended the protocol)
    mkdir -p "$LOGS"
    local code=0
    in_foreground "$@" || code=$?
    if [ "$code" -ne 0 ]; then
      echo "$code" > "$LOGS/$name.failed"; echo "== $name: FAILED (its output is above)"
    fi
    return 0
  fi
  local running=()
  while jobs -rp | mapfile -t running; [ "${#running[@]}" -ge "$JOBS" ]; do
    wait -n || true
  done
  mkdir -p "$LOGS"
  echo "did not finish" > "$LOGS/$name.failed"  # until it succeeds: a run that dies unsaid fails
  local gpu=${GPU_IDS[$((STARTED % ${#GPU_IDS[@]}))]} where=""
  STARTED=$((STARTED + 1))
  [ "$GPUS" -gt 0 ] && where=", GPU $gpu"
  echo "== $name: started (log $LOGS/$name.log$where)"
  ( if [ "$GPUS" -gt 0 ]; then export CUDA_VISIBLE_DEVICES=$gpu; fi
    export OMP_NUM_THREADS=$RUN_THREADS
    # in the background and waited for: run in the foreground, a command stopped while it
    # started (before its handler of SIGTERM) had this shell say a bare "Terminated" too
    # (bash still says "Killed" of one killed otherwise, e.g. out of memory)
    "$@" > "$LOGS/$name.log" 2>&1 &
    if wait "$!"; then rm -f "$LOGS/$name.failed"; echo "== $name: done"
    else
      code=$?; echo "$code" > "$LOGS/$name.failed"
      case $code in  # a run stopped by Ctrl-C or SIGTERM (this script's stop) says so
        130|143) echo "== $name: stopped (see $LOGS/$name.log)";;
        *) echo "== $name: FAILED (see $LOGS/$name.log)";;
      esac
    fi ) &
  LAST_JOB=$!
}

barrier() {  # wait for every started run; stop with the failed ones named
  wait
  local failed=() mark
  for mark in "$LOGS"/*.failed; do
    [ -e "$mark" ] || continue
    mark=${mark##*/}; failed+=("${mark%.failed}")
  done
  if [ "${#failed[@]}" -gt 0 ]; then
    local where="logs in $LOGS"
    [ "$JOBS" -le 1 ] && where="their output is above, and each run's log in its folder"
    echo "failed runs ($where): ${failed[*]}" >&2
    exit 1
  fi
}

hydra_path() {  # hydra_path <variable> <path>: set the variable to the path as a Hydra
               # override's value; quoted where Hydra would not take it bare (found in
               # review: in a folder such as "runs (v2)" every run failed on a parse error
               # that said to quote a value this script writes). Set, not printed: no
               # command substitution once the traps are set (see there)
  if [[ $2 =~ ^[A-Za-z0-9/_.:@+-]*$ ]]; then printf -v "$1" '%s' "$2"
  else local quote="'"; printf -v "$1" "'%s'" "${2//$quote/\\$quote}"; fi
}
hydra_path CACHE_VALUE "$CACHE"  # (as every run's command line names them)
hydra_path SENSITIVITY_VALUE "$RECORDS/sensitivity.json"

published() {  # published <record> <what>: whether the record is there (then say so)
  if [ -f "$1" ]; then echo "== $2: record in $RECORDS, skipped"; fi
  [ -f "$1" ]
}

train() {  # train <row folder> <overrides...>: one run per seed
  local row=$1 dir record; shift
  for seed in $SEEDS; do
    published "$RECORDS/$row/seed$seed.json" "$row seed $seed" && continue
    [ "$JOBS" -le 1 ] && echo "== $row seed $seed"
    hydra_path dir "$OUT/$row/seed$seed"; hydra_path record "$RECORDS/$row/seed$seed.json"
    run "$row-seed$seed" "$PY" scripts/train.py profile="$PROFILE" seed="$seed" "$@" \
      ${EXTRA[@]+"${EXTRA[@]}"} hydra.run.dir="$dir" \
      trainer.progress=false publish="$record" \
      sensitivity.cache_dir="$CACHE_VALUE" \
      sensitivity.restore_from="$SENSITIVITY_VALUE"
  done
}

# 1. sensitivity analysis (one table, reused by every seed of step 4; first, so that it
#    runs beside the runs that do not need it)
hydra_path RUN_DIR "$OUT/sensitivity"
published "$RECORDS/sensitivity.json" "sensitivity" \
  || run sensitivity "$PY" scripts/sensitivity.py profile="$PROFILE" ${EXTRA[@]+"${EXTRA[@]}"} \
       hydra.run.dir="$RUN_DIR" \
       sensitivity.cache_dir="$CACHE_VALUE" \
       sensitivity.workers="$WORKERS" \
       publish="$SENSITIVITY_VALUE"
SENSITIVITY_JOB=$LAST_JOB
# 2. dense baseline; basis convolutions everywhere (the naive deployment) and the
#    basis-size sweep
train baseline experiment=baseline
for size in 0.5 0.125 0.25 0.75; do
  train "basis-all-$size" experiment=basis_all basis.size="$size"
done
# 3. does the fast method find what exhaustive search finds? (ResNet-8: 7 layers)
hydra_path RUN_DIR "$OUT/exhaustive-search-resnet8"
hydra_path RECORD "$RECORDS/exhaustive-search-resnet8.json"
published "$RECORDS/exhaustive-search-resnet8.json" "exhaustive search" \
  || run exhaustive-search-resnet8 "$PY" scripts/exhaustive_search.py profile="$PROFILE" \
       model=resnet8 sensitivity.search_subset_size=3 \
       sensitivity.cache_dir="$CACHE_VALUE" \
       ${EXTRA[@]+"${EXTRA[@]}"} \
       sensitivity.workers="$WORKERS" \
       hydra.run.dir="$RUN_DIR" \
       publish="$RECORD"
# 4. sensitivity-selected layers, and the baselines on the same FLOP budget
if [ -n "$SENSITIVITY_JOB" ]; then wait "$SENSITIVITY_JOB" || true; fi
if [ -f "$LOGS/sensitivity.failed" ]; then barrier; fi
for policy in sensitivity_budget random first_k last_k; do
  train "selected-$policy-0.5" experiment=basis_selected selection="$policy" basis.size=0.5
done
barrier
# 5. layer and model speed of basis vs dense convolutions (ResNet-18 shapes), alone; skipped
#    when a whole-model record of this device reads with its table (the record is written
#    last: a benchmark stopped before it is measured again)
SPEED_DONE='
import sys
from pathlib import Path
from basisconv.analysis.speed import model_speed
sources = model_speed([sys.argv[1]])["source"].map(lambda s: Path(s).name)
sys.exit(0 if sources.str.startswith(f"model-speed-{sys.argv[2]}-").any() else 1)'
if "$PY" -c "$SPEED_DONE" "$RESULTS" "$DEVICE" 2> /dev/null; then
  echo "== speed benchmark: results in $RESULTS exist, skipped"
else
  echo "== speed benchmark"
  in_foreground "$PY" scripts/benchmark_layers.py --device "$DEVICE" "${BENCH[@]}" \
    --out-dir "$RESULTS"
fi
# 6. tables and plots, from every published record (this machine's and earlier ones'),
#    after this session is logged, so that index.json sums it too
trap - EXIT
log_session 0
hydra_path RUNS_VALUE "$RECORDS"; hydra_path RESULTS_VALUE "$RESULTS"
"$PY" scripts/analyze.py profile="$PROFILE" runs_dir="$RUNS_VALUE" out_dir="$RESULTS_VALUE"
