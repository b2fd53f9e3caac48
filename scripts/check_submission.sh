#!/usr/bin/env bash
# Check a challenge submission the way the organisers run it (NeurIPS 2022 CellSeg,
# baseline/cellseg_time_eval.py): load TEAM.tar.gz, then for each image, one at a time, copy it into a
# fresh ./inputs/, run their exact command line and expect ./outputs/<stem>_label.tiff:
#
#   docker container run --gpus="device=0" -m 28g --name TEAM --rm -v $PWD/inputs/:/workspace/inputs/
#       -v $PWD/outputs/:/workspace/outputs/ TEAM:latest /bin/bash -c "sh predict.sh"
#
#   scripts/check_submission.sh TEAM.tar.gz [IMAGES_DIR]     # load the tarball, then check TEAM:latest
#   scripts/check_submission.sh --loaded TEAM [IMAGES_DIR]   # TEAM:latest is already loaded
#
# --gpus="device=0" is dropped (and the log says so) when this machine shows no NVIDIA GPU
# (nvidia-smi -L); CROSSCT_GPUS=1 or 0 forces it on or off. Nothing else of the command is changed.
# IMAGES_DIR defaults to the demo's example images, written by the image itself
# (python -m crossct.demo --images-only). Their script makes ./inputs and ./outputs itself (mode 755);
# run as root, this checks twice: as root, and as a non-root organiser (CROSSCT_CHECK_USER, default
# 1000:1000, owning both folders); run as another user, once as that user. Each run must write a label
# file for its image, owned by the owner of ./outputs, with the image's height and width.
# CROSSCT_CHECK_RESULTS=DIR keeps the label files (DIR/<organiser>/); else they are deleted.
# Prints the time of each command (container start-up included, as they time it) and
# "submission: N passed, M failed"; exits 1 on any failure.
set -uo pipefail

usage() { echo "usage: $0 TEAM.tar.gz [IMAGES_DIR] | $0 --loaded TEAM [IMAGES_DIR]" >&2; exit 2; }
LOAD=1
if [ "${1:-}" = --loaded ]; then LOAD=0; shift; fi
[ $# -ge 1 ] && [ $# -le 2 ] || usage
if [ "$LOAD" = 1 ]; then
    TARBALL=$(realpath "$1")
    [ -f "$TARBALL" ] || { echo "submission: $1: no such file" >&2; exit 2; }
    # Their team name: the file name up to its first dot, lower-cased.
    TEAM=$(basename "$TARBALL"); TEAM=${TEAM%%.*}; TEAM=${TEAM,,}
else
    TEAM=$1
fi
IMAGES=${2:+$(realpath "$2")}
# Their command uses it as an image name (lower case; '_', '__' or dashes between letters and digits)
# and as a container name (two characters at least: Docker refuses "--name x").
if ! [[ "$TEAM" =~ ^[a-z0-9]+((_|__|-+)[a-z0-9]+)*$ ]] || [ "${#TEAM}" -lt 2 ]; then
    echo "submission: team name '$TEAM' must be 2 or more lower-case letters and digits, joined by '-' or '_'" \
         "(it is their image and container name)" >&2
    exit 2
fi

PASSED=0; FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/crossct-submission.XXXXXX")
finish() {
    local rc=$?
    docker rm -f "$TEAM" >/dev/null 2>&1   # only if a run was interrupted; --rm removes it otherwise
    rm -rf "$WORK"
    echo "submission: $PASSED passed, $FAILED failed"
    if [ "$FAILED" != 0 ] && [ "$rc" = 0 ]; then rc=1; fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# ---- the image, from the tarball as they would have it
if [ "$LOAD" = 1 ]; then
    t=$(now)
    # What they load must be what is checked, not an image of that name left on this machine.
    docker image rm --no-prune "$TEAM:latest" >/dev/null 2>&1   # --no-prune: the build cache stays
    if docker image load -i "$TARBALL" >"$WORK/load.log" 2>&1 && docker image inspect "$TEAM:latest" >/dev/null 2>&1; then
        pass "docker image load $(basename "$TARBALL") ($(du -h "$TARBALL" | cut -f1)) -> $TEAM:latest in $(since "$t") s"
    else
        cat "$WORK/load.log"; fail "docker image load $TARBALL does not give $TEAM:latest"; exit 1
    fi
fi
docker image inspect -f "$TEAM:latest: {{.Size}} bytes, labels {{json .Config.Labels}}" "$TEAM:latest" \
    || { fail "no image $TEAM:latest"; exit 1; }

# ---- --gpus only where there is a GPU
GPUS='--gpus="device=0" '
case "${CROSSCT_GPUS:-auto}" in
    1) ;;
    0) GPUS="" ;;
    *) if ! nvidia-smi -L >/dev/null 2>&1; then GPUS=""; fi ;;
esac
[ -n "$GPUS" ] || echo "no NVIDIA GPU here (nvidia-smi -L): --gpus is dropped, the image runs on the CPU"
# Their command, character for character but for --gpus; $PWD is expanded by the shell, as os.system does.
CMD="docker container run ${GPUS}-m 28g --name $TEAM --rm -v \$PWD/inputs/:/workspace/inputs/ -v \$PWD/outputs/:/workspace/outputs/ $TEAM:latest /bin/bash -c \"sh predict.sh\" "
echo "command: $CMD"

# ---- sample images
if [ -z "$IMAGES" ]; then
    IMAGES=$WORK/samples/inputs
    mkdir -p "$WORK/samples"
    docker run --rm --network none -v "$WORK/samples:/outputs" "$TEAM:latest" \
        python -m crossct.demo --images-only --out /outputs >/dev/null \
        || { fail "sample images: python -m crossct.demo --images-only in $TEAM:latest failed"; exit 1; }
fi
mapfile -t CASES < <(find "$IMAGES" -maxdepth 1 -type f ! -name ".*" -printf "%f\n" | sort)
[ "${#CASES[@]}" -gt 0 ] || { fail "no images in $IMAGES"; exit 1; }
echo "images: ${#CASES[@]} from $IMAGES"

# ---- their loop, as root and as a non-root organiser
if [ "$(id -u)" = 0 ]; then ORGANISERS=("0:0" "${CROSSCT_CHECK_USER:-1000:1000}"); else ORGANISERS=("$(id -u):$(id -g)"); fi
for who in "${ORGANISERS[@]}"; do
    run=$WORK/run_${who/:/_}
    results=${CROSSCT_CHECK_RESULTS:+$CROSSCT_CHECK_RESULTS/${who/:/_}}
    results=${results:-$run/results}
    mkdir -p "$run" "$results"
    (umask 022 && mkdir "$run/inputs" "$run/outputs")   # os.makedirs as in their script: mode 755
    [ "$who" = "$(id -u):$(id -g)" ] || chown "$who" "$run/inputs" "$run/outputs"
    total=0
    for case in "${CASES[@]}"; do
        cp "$IMAGES/$case" "$run/inputs/"
        [ "$who" = "$(id -u):$(id -g)" ] || chown "$who" "$run/inputs/$case"
        t=$(now)
        (cd "$run" && sh -c "$CMD") >"$run/log" 2>&1
        rc=$?
        s=$(since "$t")
        rm -f "$run/inputs/$case"
        label=${case%%.*}_label.tiff
        if [ "$rc" != 0 ] || [ ! -f "$run/outputs/$label" ]; then
            tail -n 20 "$run/log"; fail "organiser $who, $case: exit code $rc, no outputs/$label"; continue
        fi
        owner=$(stat -c %u:%g "$run/outputs/$label")
        mv "$run/outputs/$label" "$results/$label"
        if [ "$owner" != "$who" ]; then fail "organiser $who, $case: $label belongs to $owner, not to the folder's owner"; continue; fi
        total=$(awk -v a="$total" -v b="$s" 'BEGIN { print a + b }')
        pass "organiser $who, $case -> $label (owner $owner) in $s s"
    done
    # Each label: 2-D integers with the image's height and width (read by the image's own Python).
    if msg=$(docker run --rm --network none -v "$IMAGES:/images:ro" -v "$results:/labels:ro" \
            "$TEAM:latest" python -c '
import sys
from pathlib import Path
import numpy as np
from crossct.io import image_shape
import tifffile
bad, cells = [], []
for image in sorted(p for p in Path("/images").iterdir() if not p.name.startswith(".")):
    label = Path("/labels") / (image.name.split(".")[0] + "_label.tiff")
    if not label.exists():
        continue  # reported by the run itself
    lab, shape = tifffile.imread(label), tuple(image_shape(image))
    if lab.shape != shape or not np.issubdtype(lab.dtype, np.integer):
        bad.append(f"{label.name}: {lab.dtype}{lab.shape} for an image of {shape}")
    cells.append(len(np.unique(lab)) - 1)
if not cells:
    sys.exit("no label files to check")
print("; ".join(bad) if bad else f"labels match their images in size (cells per image: {cells})")
sys.exit(1 if bad else 0)
' 2>&1); then pass "organiser $who: $msg"; else fail "organiser $who: $msg"; fi
    echo "organiser $who: ${#CASES[@]} images in $total s (one container per image)"
done
[ "$FAILED" = 0 ]
