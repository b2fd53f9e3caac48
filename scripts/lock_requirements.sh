#!/usr/bin/env bash
# Resolve every wheel an image variant installs and write them, pinned with their sha256, to its lock:
#
#   scripts/lock_requirements.sh cpu      # requirements.txt                         -> requirements.lock
#   scripts/lock_requirements.sh gpu      # requirements-gpu.txt + NVIDIA runtime    -> requirements-gpu.lock
#
# The lock is what the image installs (pip --require-hashes), so a rebuild months later ships the same
# bytes, the NVIDIA CUDA/cuDNN runtime wheels included. Run it only to move to newer versions, then
# rebuild and re-run the container test. Resolution is for the image, not this host: CPython 3.11,
# manylinux x86-64 up to glibc 2.36 (Debian bookworm), binary wheels only. setuptools, the build
# backend of pyproject.toml, is locked too so the crossct package itself installs offline.
#
# gpu: onnxruntime-gpu's [cuda,cudnn] extras (cudart, cuBLAS, cuFFT, cuRAND, NVRTC, nvJitLink, cuDNN)
# minus cuFFT: ONNX Runtime loads it only for FFT operators, which the U-Net does not have, its
# preload_dlls() treats it as optional, and it is 240 MB of the image. Nothing else depends on it
# (pip's resolver, which the image's install runs, would refuse the lock otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${1:-}
case "$VARIANT" in
    cpu) REQS=(-r requirements.txt); LOCK=requirements.lock; DROP='^$' ;;
    gpu) REQS=(-r requirements-gpu.txt "onnxruntime-gpu[cuda,cudnn]"); LOCK=requirements-gpu.lock; DROP='^nvidia-cufft' ;;
    *) echo "usage: $0 cpu|gpu" >&2; exit 2 ;;
esac
# Shared with scripts/wheelhouse.sh: the platforms pip on the image accepts and these packages ship.
# shellcheck source=scripts/image_platform.sh
. scripts/image_platform.sh

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "lock: resolving the $VARIANT requirements for the image (pip download)" >&2
python3 -m pip download --quiet --dest "$TMP" "${IMAGE_PIP_TARGET[@]}" "${REQS[@]}" "setuptools>=77" 2>&1 \
    | grep -v "is ignored: it is neither" >&2 || true
compgen -G "$TMP/*.whl" >/dev/null || { echo "lock: pip download produced no wheels" >&2; exit 1; }

python3 - "$TMP" "$LOCK" "$VARIANT" "$DROP" <<'EOF'
import hashlib
import re
import sys
from pathlib import Path

wheels, lock, variant, drop = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], re.compile(sys.argv[4])
rows = []
for whl in sorted(wheels.glob("*.whl")):
    # Wheel names: {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl, "_" for "-" in names.
    name, version = whl.name.split("-")[:2]
    name = re.sub(r"[-_.]+", "-", name).lower()
    if drop.search(name):
        continue
    digest = hashlib.sha256(whl.read_bytes()).hexdigest()
    rows.append(f"{name}=={version} \\\n    --hash=sha256:{digest}\n")
source = "requirements.txt" if variant == "cpu" else "requirements-gpu.txt + onnxruntime-gpu[cuda,cudnn] - nvidia-cufft"
lock.write_text(
    f"# Every wheel of the {variant} image, pinned with its sha256 (from {source}).\n"
    f"# Regenerate with: scripts/lock_requirements.sh {variant}\n" + "".join(rows)
)
print(f"lock: {len(rows)} wheels pinned in {lock}", file=sys.stderr)
EOF
