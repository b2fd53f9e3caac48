"""Command line: ``python -m evaluate f1 ...`` and ``python -m evaluate timing ...``.

Examples
--------
Score a folder of predictions against a folder of ground truth::

    python -m evaluate f1 --gt GT_DIR --pred PRED_DIR --csv scores.csv

Score the validation split of a manifest, per source::

    python -m evaluate f1 --manifest ../shared/data/manifest.csv --split val --pred PRED_DIR --group-by source

Time a command, one image per run::

    python -m evaluate timing -i IMAGES -o OUT -- python predict.py -i {in} -o {out}
    python -m evaluate timing -i IMAGES -o OUT -- docker run --rm -v {in}:/workspace/inputs -v {out}:/workspace/outputs crossct

Arguments are parsed before NumPy / SciPy are imported, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from crossct.helpformat import DefaultsHelpFormatter

__all__ = ["build_parser", "main", "cases_from_folder", "cases_from_manifest"]

logger = logging.getLogger("evaluate")

EXIT_OK, EXIT_IMAGE_ERRORS, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m evaluate`` (sub-commands ``f1`` and ``timing``)."""
    fmt = DefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m evaluate",
        description="NeurIPS 2022 CellSeg evaluation: F1 at IoU 0.5 and running time with tolerance.",
        formatter_class=fmt,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{f1,timing}")

    f1 = sub.add_parser(
        "f1",
        help="F1 of predicted label images against ground truth",
        description=(
            "Walks the ground truth (a folder, or the rows of a manifest): an image without a prediction is "
            "scored F1 = 0 and listed (no prediction at all is an error, exit code 2); an unreadable file or a shape mismatch is an error for that image "
            "(F1 = 0, listed, exit code 1). Cells touching the 2-pixel frame are ignored; images of 25 Mpx or "
            "more are scored in 2000x2000 tiles."
        ),
        formatter_class=fmt,
    )
    src = f1.add_argument_group("ground truth (give --gt, --manifest, or both)")
    src.add_argument("--gt", type=Path, help="folder of ground-truth label images")
    src.add_argument(
        "--manifest",
        type=Path,
        help="CSV with columns image,label[,split,<group>] (paths relative to its folder); with --gt it only "
        "supplies --split and --group-by, joined on the image name up to its first dot",
    )
    src.add_argument("--split", help="keep only manifest rows with this value in the 'split' column")
    src.add_argument("--gt-suffix", default="_label.tiff", help="ground-truth file name = <name> + this")
    f1.add_argument("--pred", type=Path, required=True, help="folder of predicted label images")
    f1.add_argument("--pred-suffix", default="_label.tiff", help="prediction file name = <name> + this")
    f1.add_argument("--group-by", help="manifest column to report mean / median F1 per value of (e.g. source)")
    f1.add_argument("--csv", type=Path, help="write one row per image here")
    f1.add_argument("--threshold", type=float, default=0.5, help="IoU threshold of a true positive")
    f1.add_argument(
        "--no-boundary-removal",
        dest="remove_boundary",
        action="store_false",
        help="keep cells touching the 2-pixel image frame (the challenge removed them)",
    )
    f1.add_argument("--per-image", action="store_true", help="print every image's scores, not only failures")
    f1.add_argument("--strict", action="store_true", help="also exit with code 1 when a prediction is missing")

    timing = sub.add_parser(
        "timing",
        help="time a segmentation command, one image per run (challenge protocol)",
        description=(
            "Runs COMMAND once per image with a fresh input folder holding only that image, times the whole run, "
            "checks that OUT_DIR/<stem>_label.tiff appeared, and writes a CSV with H, W, real time, tolerance and "
            "rank time = max(0, time - tolerance), plus totals. In COMMAND, {in} and {out} are replaced by the "
            "input and output folders. Exit code 1 when any run failed or wrote no label file."
        ),
        formatter_class=fmt,
    )
    timing.add_argument("-i", "--images", type=Path, required=True, help="folder of images")
    timing.add_argument("-o", "--out", type=Path, required=True, help="output folder given to the command as {out}")
    timing.add_argument("--csv", type=Path, help="timing CSV (default: OUT/timing.csv)")
    timing.add_argument("--timeout", type=float, help="seconds before a run is killed (default: no limit)")
    timing.add_argument("--work-dir", type=Path, help="where the per-image input folders are made (default: temp dir)")
    timing.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the command to time")
    return parser


# --------------------------------------------------------------------------------------------
# f1
# --------------------------------------------------------------------------------------------


def _stem(path: str | Path) -> str:
    return Path(path).name.split(".")[0]


def _read_manifest(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(f"{path}: manifest lacks column(s) {missing}; it has {columns}")
        return list(reader)


def cases_from_folder(gt_dir: Path, pred_dir: Path, gt_suffix: str, pred_suffix: str) -> list[Any]:
    """One :class:`~evaluate.metrics.Case` per ``*<gt_suffix>`` file in ``gt_dir``, sorted by name."""
    from .metrics import Case

    if not gt_dir.is_dir():
        raise NotADirectoryError(f"{gt_dir}: ground-truth folder not found")
    cases = []
    for path in sorted(gt_dir.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name.endswith(gt_suffix):
            name = path.name[: -len(gt_suffix)]
            cases.append(Case(name, path, pred_dir / f"{name}{pred_suffix}"))
    return cases


def cases_from_manifest(
    manifest: Path, pred_dir: Path, pred_suffix: str, split: str | None = None, group_by: str | None = None
) -> list[Any]:
    """One :class:`~evaluate.metrics.Case` per manifest row (in its order) whose ``split`` matches.

    The name is the image file name up to its first dot; the ground truth is the ``label`` column,
    relative to the manifest's folder.
    """
    from .metrics import Case

    required = ["image", "label"] + (["split"] if split else []) + ([group_by] if group_by else [])
    rows = _read_manifest(manifest, required)
    root = manifest.parent
    cases = []
    for row in rows:
        if split and row["split"] != split:
            continue
        name = _stem(row["image"])
        group = row[group_by] if group_by else None
        cases.append(Case(name, root / row["label"], pred_dir / f"{name}{pred_suffix}", group))
    return cases


def _attach_manifest(cases: list[Any], manifest: Path, split: str | None, group_by: str | None) -> list[Any]:
    """Keep the folder cases in ``split`` and give them their ``group_by`` value from the manifest."""
    import dataclasses

    required = ["image"] + (["split"] if split else []) + ([group_by] if group_by else [])
    by_name = {_stem(r["image"]): r for r in _read_manifest(manifest, required)}
    out = []
    for case in cases:
        row = by_name.get(case.name)
        if row is None:
            logger.warning("%s: not in manifest %s", case.gt_path, manifest)
            if split:
                continue
        elif split and row["split"] != split:
            continue
        out.append(dataclasses.replace(case, group=row[group_by] if (group_by and row) else None))
    return out


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4f}"


def _run_f1(args: argparse.Namespace) -> int:
    from .metrics import score_cases, summarize

    if args.gt is None and args.manifest is None:
        raise ValueError("give the ground truth with --gt GT_DIR or --manifest CSV")
    if (args.split or args.group_by) and args.manifest is None:
        raise ValueError("--split and --group-by need --manifest")
    if args.gt is not None:
        cases = cases_from_folder(args.gt, args.pred, args.gt_suffix, args.pred_suffix)
        if args.manifest is not None:
            cases = _attach_manifest(cases, args.manifest, args.split, args.group_by)
    else:
        cases = cases_from_manifest(args.manifest, args.pred, args.pred_suffix, args.split, args.group_by)
    if not cases:
        raise ValueError("no ground-truth images found" + (f" (suffix {args.gt_suffix!r} in {args.gt})" if args.gt else ""))
    if not any(case.pred_path.is_file() for case in cases):  # a wrong --pred or suffix, not a model scoring 0
        where = f"{args.pred} holds none of them" if args.pred.is_dir() else f"{args.pred} does not exist"
        raise ValueError(f"no prediction found for any of the {len(cases)} ground-truth image(s): {where} "
                         f"(expected e.g. {cases[0].pred_path}; check --pred and --pred-suffix)")

    rows = score_cases(cases, args.threshold, args.remove_boundary)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    shown = rows if args.per_image else [r for r in rows if r["status"] != "ok"]
    if shown:
        print("| image | status | F1 | TP | FP | FN | message |")
        print("|---|---|---|---|---|---|---|")
        for r in shown:
            print(f"| {r['name']} | {r['status']} | {r['f1']:.4f} | {r['tp']} | {r['fp']} | {r['fn']} | {r['message']} |")
        print()
    summary = summarize(rows)
    print(f"F1 at IoU {args.threshold} of {args.pred} (missing and errored images count as F1 = 0)\n")
    print("| group | images | missing | errors | mean F1 | median F1 |")
    print("|---|---|---|---|---|---|")
    for group, s in [*summary["groups"].items(), ("all", summary["overall"])]:
        print(f"| {group} | {s['images']} | {s['missing']} | {s['errors']} | {_fmt(s['mean_f1'])} | {_fmt(s['median_f1'])} |")
    if args.csv:
        print(f"\nper-image scores: {args.csv}")
    overall = summary["overall"]
    if overall["errors"] or (args.strict and overall["missing"]):
        return EXIT_IMAGE_ERRORS
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def _run_timing(args: argparse.Namespace) -> int:
    from .timing import time_command, timing_totals, write_timing_csv

    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ValueError("no command given: python -m evaluate timing -i IMAGES -o OUT -- COMMAND ...")
    rows = time_command(args.images, args.out, command, timeout=args.timeout, work_dir=args.work_dir)
    csv_path = write_timing_csv(rows, args.csv or args.out / "timing.csv")
    print("| image | H | W | real time (s) | tolerance (s) | rank time (s) | status |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['image']} | {r['height']} | {r['width']} | {r['real_time_s']:.2f} | {r['tolerance_s']:.1f} "
            f"| {r['rank_time_s']:.2f} | {r['status']} |"
        )
    t = timing_totals(rows)
    print(f"| TOTAL ({t['images']} images) | | | {t['real_time_s']:.2f} | {t['tolerance_s']:.1f} | {t['rank_time_s']:.2f} | {t['not_ok']} not ok |")
    print(f"\ntiming CSV: {csv_path}")
    return EXIT_IMAGE_ERRORS if t["not_ok"] else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m evaluate`` / ``crossct-evaluate``; returns the exit code."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "f1":
            return _run_f1(args)
        return _run_timing(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
