"""The model card's F1 table: several methods on one split, per source and overall, in one command.

From the repository root::

    python -m benchmarks.val_table \\
        --row "U-Net supervised, organisers' threshold|runs/unet/weights|threshold" \\
        --row "U-Net supervised, our watershed|runs/unet/weights|watershed" \\
        --row "CrossCT U-Net, our watershed|weights|watershed"

The classical scikit-image pipeline (Otsu + distance-transform watershed) is always the first
row.  Each ``--row`` is ``LABEL|WEIGHTS|POST``: a weights folder (or a crossct .pt checkpoint) and
``threshold`` (the organisers' interior > 0.5) or ``watershed`` (the thresholds stored with the
weights).  The network runs once per image and model; rows sharing a model share its outputs.
Prints two markdown tables (mean and median F1 at IoU 0.5, challenge rules) and writes the
per-image scores as CSV with ``--csv``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import sys
import time
from pathlib import Path

from benchmarks.classical_val import default_data_dir


def _parse_row(text: str) -> tuple[str, str, str]:
    parts = text.split("|")
    if len(parts) != 3 or parts[2] not in ("threshold", "watershed"):
        raise argparse.ArgumentTypeError(f"--row {text!r}: expected 'LABEL|WEIGHTS|threshold' or '...|watershed'")
    return parts[0], parts[1], parts[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=default_data_dir(), help="data folder holding manifest.csv")
    p.add_argument("--split", default="val")
    p.add_argument("--row", type=_parse_row, action="append", default=[], help="LABEL|WEIGHTS|POST (repeatable)")
    p.add_argument("--csv", type=Path, help="write per-image F1 of every row here")
    args = p.parse_args(argv)

    from crossct.classical import segment_classical
    from crossct.config import PostprocessConfig
    from crossct.io import read_image
    from crossct.normalize import normalize_image
    from crossct.pipeline import predict_outputs
    from crossct.postprocess import postprocess
    from crossct.predictors import load_predictor
    from crossct.train.data import read_manifest
    from evaluate import f1_score, read_labels

    records = read_manifest(args.data / "manifest.csv", split=args.split)
    if not records:
        print(f"error: no {args.split!r} rows in {args.data / 'manifest.csv'}", file=sys.stderr)
        return 2
    labels = {r.name: read_labels(r.label) for r in records}
    images = {r.name: read_image(r.image) for r in records}
    rows: list[tuple[str, dict[str, float], float]] = []

    t0 = time.perf_counter()
    rows.append(("Classical (Otsu + distance-transform watershed)",
                 {r.name: f1_score(labels[r.name], segment_classical(normalize_image(images[r.name])))["f1"]
                  for r in records}, time.perf_counter() - t0))

    models: dict[str, object] = {}
    outputs: dict[str, dict[str, object]] = {}
    for label, weights, post in args.row:
        if weights not in models:
            models[weights] = load_predictor(weights)
            t0 = time.perf_counter()
            outputs[weights] = {r.name: predict_outputs(images[r.name], models[weights]) for r in records}
            print(f"{weights}: network on {len(records)} images in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        spec = models[weights].spec
        config = (PostprocessConfig(method="threshold", min_size=spec.postprocess.min_size) if post == "threshold"
                  else dataclasses.replace(spec.postprocess, method="watershed"))
        t0 = time.perf_counter()
        scores = {r.name: f1_score(labels[r.name], postprocess(outputs[weights][r.name], config))["f1"] for r in records}
        rows.append((label, scores, time.perf_counter() - t0))

    sources = sorted({r.source for r in records})
    by_source = {s: [r.name for r in records if r.source == s] for s in sources}
    counts = " / ".join(f"{s} {len(by_source[s])}" for s in sources)
    print(f"F1 at IoU 0.5 (challenge rules) on split `{args.split}` of {args.data.name} ({len(records)} images: {counts})\n")
    for title, stat in (("mean", statistics.fmean), ("median", statistics.median)):
        print(f"**{title} F1**\n")
        print("| method | " + " | ".join(sources) + " | all images | mean over sources |")
        print("|---|" + "---|" * (len(sources) + 2))
        for label, scores, _ in rows:
            per = [stat([scores[n] for n in by_source[s]]) for s in sources]
            overall = stat(list(scores.values()))
            cells = " | ".join(f"{v:.4f}" for v in per)
            print(f"| {label} | {cells} | {overall:.4f} | {statistics.fmean(per):.4f} |")
        print()
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["method", "source", "name", "f1"])
            for label, scores, _ in rows:
                for r in records:
                    writer.writerow([label, r.source, r.name, f"{scores[r.name]:.6f}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
