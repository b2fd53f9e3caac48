#!/usr/bin/env bash
# Download every wheel the inference image needs, so that "docker build" needs no network at all.
#
#   scripts/wheelhouse.sh [cpu|gpu] [DIR]      # default: cpu, DIR = wheelhouse/<variant> (gitignored)
#
# cpu: requirements.txt (onnxruntime). gpu: requirements-gpu.txt plus onnxruntime-gpu's [cuda,cudnn]
# extras, i.e. the NVIDIA runtime wheels (cudart, cuBLAS, cuFFT, cuRAND, NVRTC, cuDNN) that
# onnxruntime.preload_dlls() loads; no CUDA toolkit. Wheels are for the image, not for this host:
# CPython 3.11, manylinux x86_64 (glibc <= 2.36, Debian bookworm), binary only. Also setuptools, the
# build backend of pyproject.toml, so the crossct package itself installs offline.
# CROSSCT_REQUIREMENTS=FILE replaces the variant's requirements file. A complete DIR is re-checked
# without network. SHA256SUMS in DIR lists the wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${1:-cpu}
DIR=${2:-wheelhouse/$VARIANT}
case "$VARIANT" in
    cpu) REQS=(-r "${CROSSCT_REQUIREMENTS:-requirements.txt}") ;;
    gpu) REQS=(-r "${CROSSCT_REQUIREMENTS:-requirements-gpu.txt}" "onnxruntime-gpu[cuda,cudnn]") ;;
    *) echo "usage: $0 [cpu|gpu] [DIR]  (variant '$VARIANT' is neither)" >&2; exit 2 ;;
esac

# manylinux_2_28 .. manylinux2014: what pip on a glibc 2.36 image accepts and what these packages ship.
PLATFORMS=()
for tag in manylinux_2_36_x86_64 manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
           manylinux_2_17_x86_64 manylinux2014_x86_64; do
    PLATFORMS+=(--platform "$tag")
done

mkdir -p "$DIR"
download() {
    python3 -m pip download --quiet --dest "$DIR" --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 "${PLATFORMS[@]}" \
        "$@" "${REQS[@]}" "setuptools>=77"
}
# A complete wheelhouse resolves from itself: no network needed to re-run.
if download --no-index --find-links "$DIR" >/dev/null 2>&1; then
    echo "wheelhouse: $DIR already has every $VARIANT requirement" >&2
else
    echo "wheelhouse: downloading the $VARIANT requirements into $DIR" >&2
    download
fi
(cd "$DIR" && sha256sum -- *.whl > SHA256SUMS)
echo "wheelhouse: $(find "$DIR" -maxdepth 1 -name "*.whl" | wc -l) wheels, $(du -sh "$DIR" | cut -f1) in $DIR" >&2
