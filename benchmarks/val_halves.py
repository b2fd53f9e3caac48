"""How much of a difference between two models on val is noise: the same comparison on two halves.

    python -m benchmarks.val_halves VAL.csv --baseline "ROW A" [--compare "ROW B" ...]

``VAL.csv`` is ``python -m benchmarks.val_table --csv``'s per-image F1.  The images of every source
are split in two halves (alternately, in the CSV's order: the manifest's), and each row's F1 over
all images and its mean over sources is computed on the whole split and on each half.  A
difference between two rows that changes sign, or size by as much as itself, from one half to the
other is within the split's noise.  Sources with one val image fall in the first half only (their
mean over sources in the second half leaves them out, and says so).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def read_scores(path: Path) -> dict[str, list[tuple[str, str, float]]]:
    """Row label -> [(source, image name, F1)] in the file's order."""
    rows: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    with open(path, newline="") as fh:
        for line in csv.DictReader(fh):
            rows[line["method"]].append((line["source"], line["name"], float(line["f1"])))
    if not rows:
        raise ValueError(f"{path}: no per-image scores (write them with python -m benchmarks.val_table --csv)")
    return rows


def halves(scores: list[tuple[str, str, float]]) -> tuple[list, list]:
    """Every source's images alternately into two halves (first, third, ... image in the first)."""
    seen: dict[str, int] = defaultdict(int)
    first, second = [], []
    for source, name, f1 in scores:
        (first if seen[source] % 2 == 0 else second).append((source, name, f1))
        seen[source] += 1
    return first, second


def summary(scores: list[tuple[str, str, float]]) -> tuple[float, float, int]:
    """(mean F1 over images, mean over sources of the per-source mean, number of sources)."""
    per: dict[str, list[float]] = defaultdict(list)
    for source, _, f1 in scores:
        per[source].append(f1)
    return (statistics.fmean(f for _, _, f in scores), statistics.fmean(statistics.fmean(v) for v in per.values()),
            len(per))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("csv", type=Path, help="per-image F1 (python -m benchmarks.val_table --csv)")
    p.add_argument("--baseline", required=True, help="the row the others are compared with")
    p.add_argument("--compare", action="append", default=[], help="rows to compare (default: every other row)")
    args = p.parse_args(argv)
    try:
        rows = read_scores(args.csv)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    missing = [r for r in [args.baseline, *args.compare] if r not in rows]
    if missing:
        print(f"error: no rows {missing} in {args.csv}; it has {sorted(rows)}", file=sys.stderr)
        return 2
    compare = args.compare or [r for r in rows if r != args.baseline]
    parts = {"whole split": lambda s: s, "first half": lambda s: halves(s)[0], "second half": lambda s: halves(s)[1]}
    print(f"Difference from `{args.baseline}` (F1 at IoU 0.5; all images / mean over sources)\n")
    print("| row | " + " | ".join(f"{name} (images, sources)" for name in parts) + " |")
    print("|---|" + "---|" * len(parts))
    for row in compare:
        cells = []
        for name, part in parts.items():
            base, other = summary(part(rows[args.baseline])), summary(part(rows[row]))
            cells.append(f"{other[0] - base[0]:+.4f} / {other[1] - base[1]:+.4f} ({len(part(rows[row]))}, {other[2]})")
        print(f"| {row} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
