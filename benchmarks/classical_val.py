"""F1 of the classical baseline (Otsu + distance-transform watershed) on a split of the data.

One command, from the repository root (or with the project installed)::

    python -m benchmarks.classical_val                      # val split of ../shared/data
    python -m benchmarks.classical_val --data /path/to/data --split val --save-pred /tmp/classical

Segments every image of the split with :func:`crossct.classical.segment_classical` (after
:func:`crossct.io.read_image` and :func:`crossct.normalize.normalize_image`), scores it with
:func:`evaluate.f1_score` (challenge rules), and prints a markdown table of mean and median F1 per
source and overall, plus the mean over sources (each source weighing equally).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """``$CROSSCT_DATA``, else ``../shared/data`` relative to the repository root."""
    env = os.environ.get("CROSSCT_DATA")
    return Path(env) if env else (REPO / ".." / "shared" / "data").resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="data folder holding manifest.csv")
    parser.add_argument("--split", default="val", help="manifest split to score")
    parser.add_argument("--source", action="append", help="only these sources (repeatable)")
    parser.add_argument("--save-pred", type=Path, help="also write <name>_label.tiff predictions here")
    args = parser.parse_args(argv)

    from crossct.classical import segment_classical
    from crossct.io import read_image, write_labels
    from crossct.normalize import normalize_image
    from evaluate import f1_score, read_labels

    manifest = args.data / "manifest.csv"
    if not manifest.is_file():
        print(f"error: {manifest} not found (set --data or CROSSCT_DATA)", file=sys.stderr)
        return 2
    with open(manifest, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == args.split and (not args.source or r["source"] in args.source)]
    if not rows:
        print(f"error: no rows with split={args.split!r} in {manifest}", file=sys.stderr)
        return 2
    if args.save_pred:
        args.save_pred.mkdir(parents=True, exist_ok=True)

    scores: dict[str, list[float]] = {}
    start = time.perf_counter()
    for i, row in enumerate(rows, 1):
        name = Path(row["image"]).name.split(".")[0]
        image = normalize_image(read_image(args.data / row["image"]))
        labels = segment_classical(image)
        if args.save_pred:
            write_labels(args.save_pred / f"{name}_label.tiff", labels)
        result = f1_score(read_labels(args.data / row["label"]), labels)
        scores.setdefault(row["source"], []).append(result["f1"])
        print(f"[{i}/{len(rows)}] {row['source']}/{name}: F1 {result['f1']:.4f} "
              f"(TP {result['tp']}, FP {result['fp']}, FN {result['fn']})", file=sys.stderr)

    every = [f for fs in scores.values() for f in fs]
    print(f"Classical baseline (Otsu + distance-transform watershed), split `{args.split}` of {args.data}, "
          f"F1 at IoU 0.5 (challenge rules), {time.perf_counter() - start:.0f} s\n")
    print("| source | images | mean F1 | median F1 |")
    print("|---|---|---|---|")
    for source in sorted(scores):
        fs = scores[source]
        print(f"| {source} | {len(fs)} | {statistics.fmean(fs):.4f} | {statistics.median(fs):.4f} |")
    print(f"| **all images** | {len(every)} | {statistics.fmean(every):.4f} | {statistics.median(every):.4f} |")
    per_source = [statistics.fmean(fs) for fs in scores.values()]
    print(f"| **mean over sources** | {len(per_source)} sources | {statistics.fmean(per_source):.4f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
