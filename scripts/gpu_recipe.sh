#!/usr/bin/env bash
# The whole training protocol on one GPU inside a time budget, then a short check of the GPU
# inference path; everything worth keeping is gathered into OUT (at most 8 files, each < 16 MiB,
# so it can come back from a rented GPU host).
#
#   scripts/gpu_recipe.sh PACK_DIR OUT [MINUTES]
#
# PACK_DIR holds the training pack (python -m crossct.train pack --data DATA --out PACK_DIR/crossct-data.pack)
# and, for hosts without them, the wheels of MONAI and edt (Python 3.12, x86-64): `make gpu-pack`.
# MINUTES (default 10) is the budget of `crossct.train full`; the inference check adds about a minute,
# and the control stage (CROSSCT_FULL_FLAGS="--control ...") as many U-Net steps as cross-teaching ran.
# Extra settings for every stage: CROSSCT_FULL_FLAGS (e.g. "--val-max-images 40").
set -euo pipefail
pack_dir=${1:?usage: scripts/gpu_recipe.sh PACK_DIR OUT [MINUTES]}
out=${2:?usage: scripts/gpu_recipe.sh PACK_DIR OUT [MINUTES]}
minutes=${3:-10}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
mkdir -p "$out"
run=${CROSSCT_RUN_DIR:-/tmp/crossct-full}

# Training's two packages that GPU hosts' images tend to lack, from the wheels beside the pack.
missing=()
for module in monai edt; do
    python3 -c "import $module" 2>/dev/null || missing+=("$pack_dir/$module"-*.whl)
done
if [ ${#missing[@]} -gt 0 ]; then
    python3 -m pip install -q --no-deps --no-index --target /tmp/crossct-site "${missing[@]}"
    export PYTHONPATH=/tmp/crossct-site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (CPU)'}")
EOF
# GPU utilisation while training, sampled every 2 s (nvidia-smi where the host has it).
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 2 > "$run.gpu-util.csv" 2>/dev/null &
    smi=$!
    trap 'kill $smi 2>/dev/null || true' EXIT
fi
# shellcheck disable=SC2086
python3 -m crossct.train full --time-budget "$minutes" --run-dir "$run" --data "$pack_dir/crossct-data.pack" \
    --batch-size 0 --num-workers -1 ${CROSSCT_FULL_FLAGS:-} $( [ -f "$run/protocol.json" ] && echo --resume ) \
    2>&1 | tee "$run.log"
if [ -n "${smi:-}" ]; then kill "$smi" 2>/dev/null || true; fi

# The GPU inference path against the CPU one on the pack's val images: labels and time per image.
python3 -m benchmarks.gpu_check --weights "$run/weights" --data "$pack_dir/crossct-data.pack" \
    --out "$run/gpu_check.md" 2>&1 | tee -a "$run.log" || true

# The CNNs in float32 (best checkpoint of each stage, re-exported and re-tuned wherever they land),
# the Transformers in float16, the winner's settings and the report.
cp "$run/cnn/best_unet.pt" "$out/unet_supervised.pt"
cp "$run/crossct/best_cnn.pt" "$out/unet_crossct.pt"
if [ -f "$run/control/best_unet.pt" ]; then cp "$run/control/best_unet.pt" "$out/unet_control.pt"; fi
cp "$run/weights/model.json" "$run/report.md" "$out/"
cp "$run"/transformer/best_swin*.fp16.pt "$out/swin_supervised.fp16.pt"
cp "$run/crossct/best_transformer.fp16.pt" "$out/swin_crossct.fp16.pt"
# Logs, settings and the inference check in one archive.
tar -czf "$out/logs.tar.gz" -C "$(dirname "$run")" \
    "$(basename "$run").log" $( [ -f "$run.gpu-util.csv" ] && basename "$run.gpu-util.csv" ) \
    "$(basename "$run")/protocol.json" "$(basename "$run")/gpu_check.md" \
    $(cd "$(dirname "$run")" && ls "$(basename "$run")"/*/{config.json,time_report.json,train_log.csv,val_log.csv} 2>/dev/null)
ls -la "$out"
