"""Validation F1 against training time, from a run's val_log.csv, as a markdown table.

    python -m benchmarks.learning_curve RUN_DIR [RUN_DIR ...]

Minutes are wall-clock training minutes (validation included) summed over resumed sessions.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders holding val_log.csv")
    args = p.parse_args(argv)
    print("| run | role | step | minutes | watershed mean F1 | watershed mean over sources | threshold mean F1 | threshold mean over sources |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        log = run / "val_log.csv"
        if not log.is_file():
            print(f"error: {log} not found", file=sys.stderr)
            return 2
        with open(log, newline="") as fh:
            for row in csv.DictReader(fh):
                print(f"| {run.name} | {row['role']} | {row['step']} | {float(row['minutes']):.0f} | "
                      f"{float(row['watershed_mean']):.4f} | {float(row['watershed_source_mean']):.4f} | "
                      f"{float(row['threshold_mean']):.4f} | {float(row['threshold_source_mean']):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
