"""The PyTorch CUDA inference path against the ONNX Runtime CPU path: same labels, time per image.

From the repository root (on a GPU host; on a CPU-only machine it compares PyTorch on the CPU, a
check of this script)::

    python -m benchmarks.gpu_check --weights RUN/weights --data PACK_OR_DATA [--images 20] [--out gpu_check.md]

For the first ``--images`` val images: labels from both paths (identical, or the F1 of one
against the other: 1.0 is the same cells), F1 of each against the ground truth, and the median
seconds per megapixel of each path after a warm-up.  ``bench_gpu`` measures the ONNX Runtime
CUDA path where onnxruntime-gpu is installed; this needs only torch.  Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from benchmarks.classical_val import default_data_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", default="weights")
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = p.parse_args(argv)

    import torch

    from benchmarks.bench_gpu import compare_labels
    from crossct.pipeline import segment
    from crossct.predictors import load_predictor
    from crossct.train.loops import round_robin
    from crossct.train.records import data_records, read_record_image, read_record_label

    device = "cuda" if torch.cuda.is_available() else "cpu"
    paths = {"ONNX Runtime, CPU": load_predictor(args.weights, backend="onnx", device="cpu"),
             f"PyTorch, {device}": load_predictor(args.weights, backend="torch", device=device)}
    records = round_robin(data_records(args.data, "val"), args.images)
    items = [(r.name, read_record_image(r), read_record_label(r)[0]) for r in records]
    rows = compare_labels(items, *paths.values())  # also the warm-up of both paths (CUDA context, kernels)
    seconds: dict[str, list[float]] = {}
    for name, predictor in paths.items():
        seconds[name] = []
        for _, image, _ in items:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            segment(image, predictor)  # labels come back to the host: the GPU is done
            seconds[name].append((time.perf_counter() - t0) / (image.shape[0] * image.shape[1] / 1e6))
    gpu_label = torch.cuda.get_device_name(0) if device == "cuda" else "no GPU: PyTorch on the CPU"
    lines = [f"Inference paths on {len(items)} val images ({gpu_label}; weights `{args.weights}`)", "",
             "| image | source | identical | F1 GPU vs CPU | F1 CPU vs truth | F1 GPU vs truth |", "|---|---|---|---|---|---|"]
    for record, row in zip(records, rows):
        lines.append(f"| {row['image']} | {record.source} | {'yes' if row['identical'] else 'no'} | "
                     f"{row['f1_vs_ref']:.4f} | {row['f1_gt'][0]:.4f} | {row['f1_gt'][1]:.4f} |")
    lines += ["", f"identical label images: {sum(r['identical'] for r in rows)} of {len(rows)}", "",
              "| path | median s per megapixel | mean F1 vs truth |", "|---|---|---|"]
    for i, name in enumerate(paths):
        f1 = statistics.fmean(r["f1_gt"][i] for r in rows)
        lines.append(f"| {name} | {statistics.median(seconds[name]):.3f} | {f1:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
