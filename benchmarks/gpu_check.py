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

    import numpy as np
    import torch

    from crossct.pipeline import segment
    from crossct.predictors import load_predictor
    from crossct.train.data import data_records, read_record_image, read_record_label
    from crossct.train.loops import round_robin
    from evaluate import f1_score

    device = "cuda" if torch.cuda.is_available() else "cpu"
    paths = {"ONNX Runtime, CPU": load_predictor(args.weights, backend="onnx", device="cpu"),
             f"PyTorch, {device}": load_predictor(args.weights, backend="torch", device=device)}
    records = round_robin(data_records(args.data, "val"), args.images)
    items = [(r, read_record_image(r), read_record_label(r)[0]) for r in records]
    results: dict[str, list] = {}
    seconds: dict[str, list[float]] = {}
    for name, predictor in paths.items():
        segment(items[0][1], predictor)  # warm-up (CUDA context, kernel selection)
        results[name], seconds[name] = [], []
        for _, image, _ in items:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            results[name].append(segment(image, predictor))
            seconds[name].append((time.perf_counter() - t0) / (image.shape[0] * image.shape[1] / 1e6))
    (cpu_name, cpu), (gpu_name, gpu) = results.items()
    gpu_label = torch.cuda.get_device_name(0) if device == "cuda" else "no GPU: PyTorch on the CPU"
    lines = [f"Inference paths on {len(items)} val images ({gpu_label}; weights `{args.weights}`)", "",
             "| image | source | identical | F1 GPU vs CPU | F1 CPU vs truth | F1 GPU vs truth |", "|---|---|---|---|---|---|"]
    same = 0
    for (record, _, truth), a, b in zip(items, cpu, gpu):
        identical = a.shape == b.shape and np.array_equal(a, b)
        same += identical
        lines.append(f"| {record.name} | {record.source} | {'yes' if identical else 'no'} | "
                     f"{1.0 if identical else f1_score(a, b)['f1']:.4f} | {f1_score(truth, a)['f1']:.4f} | "
                     f"{f1_score(truth, b)['f1']:.4f} |")
    lines += ["", f"identical label images: {same} of {len(items)}", "",
              "| path | median s per megapixel | mean F1 vs truth |", "|---|---|---|"]
    for name in paths:
        f1 = statistics.fmean(f1_score(t, r)["f1"] for (_, _, t), r in zip(items, results[name]))
        lines.append(f"| {name} | {statistics.median(seconds[name]):.3f} | {f1:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
