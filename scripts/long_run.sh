#!/usr/bin/env bash
# The cross-teaching comparison as a run that lives for days on a CPU, one work period at a time.
#
#   scripts/long_run.sh RUN_ROOT START_CNN PARTNER [MINUTES]
#
# Two arms from the same U-Net checkpoint (START_CNN), the same seed, schedule and number of steps:
#   RUN_ROOT/control  the U-Net trained supervised (labelled images only)
#   RUN_ROOT/crossct  the U-Net cross-taught with the Transformer PARTNER (labelled + unlabelled)
# Each call works for at most MINUTES (default 170) of wall time, then stops cleanly with last.pt
# written; the next call resumes exactly where it stopped (finished arms are skipped).  Settings:
# CROSSCT_LONG_STEPS (10000), CROSSCT_LONG_SEED (0), CROSSCT_DATA (../shared/data), and
# CROSSCT_LONG_FLAGS: more training flags, e.g. "--threads 1" while other work shares the cores (two
# processes each running one thread per core slow each other several times over); they come last, so
# they override the settings above (on a GPU host, e.g. "--batch-size 32 --no-cpu-amp --num-workers -1"
# with CROSSCT_LONG_UNLABELLED_BATCH=32, the cross-teaching arm's unlabelled batch, default 8).
# CROSSCT_LONG_ARMS ("control crossct"): which arms this call works on, in order; an arm that another
# call is running (its lock RUN_ROOT/NAME.lock is held) is skipped, so two calls may run the two arms
# side by side, one core each (CROSSCT_LONG_FLAGS="--threads 1").
# CROSSCT_LONG_KEEP: a folder (e.g. in the work tree, to commit) that outlives the machine: each arm is
# copied there whole after its period (checkpoints, logs, settings), and an arm missing from RUN_ROOT
# is restored from there first, so a run whose machine was replaced resumes where it was kept.
# `python -m crossct.train status RUN_ROOT/*` tells where each arm stands.
set -euo pipefail
root=${1:?usage: scripts/long_run.sh RUN_ROOT START_CNN PARTNER [MINUTES]}
start=${2:?usage: scripts/long_run.sh RUN_ROOT START_CNN PARTNER [MINUTES]}
partner=${3:?usage: scripts/long_run.sh RUN_ROOT START_CNN PARTNER [MINUTES]}
minutes=${4:-170}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
deadline=$(( $(date +%s) + ${minutes%.*} * 60 ))
common=(--data "${CROSSCT_DATA:-../shared/data}" --steps "${CROSSCT_LONG_STEPS:-10000}" --seed "${CROSSCT_LONG_SEED:-0}"
        --lr 5e-4 --warmup-steps 25 --batch-size 8 --cpu-amp --val-every 2000 --checkpoint-minutes 5)

keep=${CROSSCT_LONG_KEEP:-}

restore() {  # restore NAME: the kept copy of an arm whose run folder is gone
    local name=$1
    if [ -n "$keep" ] && [ -f "$keep/$name/config.json" ] && [ ! -f "$root/$name/config.json" ]; then
        mkdir -p "$root/$name" && cp -p "$keep/$name"/* "$root/$name/"
        if [ -f "$root/$name/arm.log" ]; then mv "$root/$name/arm.log" "$root/$name.log"; fi
        echo "$name: restored from $keep/$name"
    fi
}

save() {  # save NAME: copy the arm's folder and log into the keep folder, replacing the old copy only when complete
    local name=$1 tmp
    if [ -z "$keep" ] || [ ! -f "$root/$name/config.json" ]; then return 0; fi
    mkdir -p "$keep" && tmp=$(mktemp -d "$keep/.$name.XXXXXX")
    find "$root/$name" -maxdepth 1 -type f ! -name '.*' -exec cp -p {} "$tmp/" \;
    if [ -f "$root/$name.log" ]; then cp -p "$root/$name.log" "$tmp/arm.log"; fi
    rm -rf "$keep/$name" && mv "$tmp" "$keep/$name"
    echo "$name: kept in $keep/$name"
}

arm() {  # arm NAME MODE ARGS...: run or resume one arm within what is left of the minutes
    local name=$1 mode=$2; shift 2
    local dir="$root/$name" left=$(( (deadline - $(date +%s)) / 60 ))
    if [ -f "$dir/time_report.json" ] && python3 -c "import json,sys; r=json.load(open('$dir/time_report.json')); c=json.load(open('$dir/config.json')); sys.exit(r['final_step'] < c['steps'])"; then
        echo "$name: done"; save "$name"; return 0
    fi
    if [ "$left" -lt 2 ]; then echo "$name: no time left in this period"; return 0; fi
    mkdir -p "$root"
    exec {lock}>"$root/$name.lock"
    if ! flock -n "$lock"; then echo "$name: running in another call"; exec {lock}>&-; return 0; fi
    local resume=(); [ -f "$dir/last.pt" ] && resume=(--resume)
    python3 -m crossct.train "$mode" --run-dir "$dir" "${common[@]}" "$@" ${CROSSCT_LONG_FLAGS:-} "${resume[@]}" \
        --stop-after-minutes "$left" 2>&1 | tee -a "$root/$name.log"
    save "$name"
    exec {lock}>&-
}
for name in ${CROSSCT_LONG_ARMS:-control crossct}; do
    restore "$name"
    case $name in
        control) arm control supervised --model unet --init "$start" ;;
        crossct) arm crossct cross-teach --cnn "$start" --transformer "$partner" --unlabelled-batch-size "${CROSSCT_LONG_UNLABELLED_BATCH:-8}" ;;
        *) echo "CROSSCT_LONG_ARMS: unknown arm '$name' (control, crossct)" >&2; exit 2 ;;
    esac
done
