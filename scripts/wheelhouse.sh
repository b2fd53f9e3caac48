#!/usr/bin/env bash
# Download every wheel the inference image needs, so that "docker build" needs no network at all.
#
#   scripts/wheelhouse.sh [cpu|gpu] [DIR]      # default: cpu, DIR = wheelhouse/<variant> (gitignored)
#
# The wheels are exactly those of the variant's lock, checked against its sha256s: requirements.lock
# (cpu: onnxruntime) or requirements-gpu.lock (gpu: onnxruntime-gpu and the NVIDIA runtime wheels it
# loads - cudart, cuBLAS, cuRAND, NVRTC, nvJitLink, cuDNN; no CUDA toolkit). scripts/lock_requirements.sh
# writes the locks. Wheels are for the image, not for this host (scripts/image_platform.sh).
# CROSSCT_LOCK=FILE replaces the variant's lock. A complete DIR is re-checked without network; wheels
# in DIR that the lock no longer names are removed. SHA256SUMS in DIR lists the wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${1:-cpu}
DIR=${2:-wheelhouse/$VARIANT}
case "$VARIANT" in
    cpu) LOCK=${CROSSCT_LOCK:-requirements.lock} ;;
    gpu) LOCK=${CROSSCT_LOCK:-requirements-gpu.lock} ;;
    *) echo "usage: $0 [cpu|gpu] [DIR]  (variant '$VARIANT' is neither)" >&2; exit 2 ;;
esac
[ -f "$LOCK" ] || { echo "wheelhouse: no lock $LOCK (scripts/lock_requirements.sh $VARIANT)" >&2; exit 2; }
# shellcheck source=scripts/image_platform.sh
. scripts/image_platform.sh

mkdir -p "$DIR"
download() {
    python3 -m pip download --quiet --dest "$DIR" --no-deps --require-hashes "${IMAGE_PIP_TARGET[@]}" -r "$LOCK" "$@"
}
# A complete wheelhouse resolves from itself: no network needed to re-run.
if download --no-index --find-links "$DIR" >/dev/null 2>&1; then
    echo "wheelhouse: $DIR already has every wheel of $LOCK" >&2
else
    echo "wheelhouse: downloading the wheels of $LOCK into $DIR" >&2
    download
fi
# Only the locked wheels stay: an older version lying beside a newer one would be sent to every build.
python3 - "$DIR" "$LOCK" <<'EOF'
import re
import sys
from pathlib import Path

folder, lock = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
pinned = {(norm(n), v) for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, re.M)}
for whl in folder.glob("*.whl"):
    name, version = whl.name.split("-")[:2]
    if (norm(name), version) not in pinned:
        print(f"wheelhouse: removing {whl.name} (not in the lock)", file=sys.stderr)
        whl.unlink()
EOF
(cd "$DIR" && sha256sum -- *.whl > SHA256SUMS)
echo "wheelhouse: $(find "$DIR" -maxdepth 1 -name "*.whl" | wc -l) wheels, $(du -sh "$DIR" | cut -f1) in $DIR" >&2
