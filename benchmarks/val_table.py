"""The model card's F1 table: several methods on one split, per source and overall, in one command.

From the repository root::

    python -m benchmarks.val_table \\
        --row "U-Net supervised, organisers' threshold|runs/unet/weights|threshold" \\
        --row "U-Net supervised, our watershed|runs/unet/weights|watershed" \\
        --row "CrossCT U-Net, our watershed|weights|watershed"

The classical scikit-image pipeline (Otsu + distance-transform watershed) is always the first
row.  Each ``--row`` is ``LABEL|WEIGHTS|POST[|OPTIONS]``: a weights folder (or a crossct .pt
checkpoint), ``threshold`` (the organisers' interior > 0.5) or ``watershed`` (the thresholds
stored with the weights), and optionally test-time options overriding the weights' own,
comma-separated: ``tta`` / ``notta`` (flip averaging), ``auto`` / ``noauto`` (cell-size
rescaling).  Plain rows share one network pass per image and model; rows with options run the
whole pipeline (:func:`crossct.pipeline.segment`).  ``--subset NAME=SOURCE,SOURCE`` adds the
mean over that subset's images and over its sources as two more columns (e.g. the val images of
the sources an older table was measured on).  Prints two markdown tables (mean and median F1 at
IoU 0.5, challenge rules) and writes the per-image scores as CSV with ``--csv``.
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


OPTIONS = {"tta", "notta", "auto", "noauto"}


def _parse_row(text: str) -> tuple[str, str, str, frozenset[str]]:
    parts = text.split("|")
    options = frozenset(o.strip() for o in parts[3].split(",") if o.strip()) if len(parts) == 4 else frozenset()
    if len(parts) not in (3, 4) or parts[2] not in ("threshold", "watershed") or not options <= OPTIONS:
        raise argparse.ArgumentTypeError(f"--row {text!r}: expected 'LABEL|WEIGHTS|threshold' or '...|watershed', "
                                         f"then optionally '|' and options from {sorted(OPTIONS)}")
    return parts[0], parts[1], parts[2], options


def _parse_subset(text: str) -> tuple[str, frozenset[str]]:
    name, sep, sources = text.partition("=")
    if not sep or not sources.strip():
        raise argparse.ArgumentTypeError(f"--subset {text!r}: expected NAME=SOURCE,SOURCE,...")
    return name.strip(), frozenset(s.strip() for s in sources.split(",") if s.strip())


def with_options(spec, options: frozenset[str]):
    """``spec`` with a row's test-time options applied."""
    if "tta" in options or "notta" in options:
        spec = spec.replace(test_time=dataclasses.replace(spec.test_time, flips="tta" in options))
    if "auto" in options or "noauto" in options:
        spec = spec.replace(size=dataclasses.replace(spec.size, auto="auto" in options, diameter=0.0))
    return spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=default_data_dir(), help="data folder holding manifest.csv, or a training pack")
    p.add_argument("--split", default="val")
    p.add_argument("--row", type=_parse_row, action="append", default=[], help="LABEL|WEIGHTS|POST[|OPTIONS] (repeatable)")
    p.add_argument("--subset", type=_parse_subset, action="append", default=[],
                   help="NAME=SOURCE,SOURCE: two more columns, over that subset (repeatable)")
    p.add_argument("--no-classical", action="store_true", help="leave out the classical pipeline's row")
    p.add_argument("--csv", type=Path, help="write per-image F1 of every row here")
    args = p.parse_args(argv)

    from crossct.classical import segment_classical
    from crossct.config import PostprocessConfig
    from crossct.normalize import normalize_image
    from crossct.pipeline import predict_outputs, segment
    from crossct.postprocess import postprocess
    from crossct.predictors import load_predictor
    from crossct.train.records import data_records, read_record_image, read_record_label
    from evaluate import f1_score

    records = data_records(args.data, split=args.split)
    if not records:
        print(f"error: no {args.split!r} rows in {args.data}", file=sys.stderr)
        return 2
    labels = {r.name: read_record_label(r)[0] for r in records}
    images = {r.name: read_record_image(r) for r in records}
    rows: list[tuple[str, dict[str, float], float]] = []

    if not args.no_classical:
        t0 = time.perf_counter()
        rows.append(("Classical (Otsu + distance-transform watershed)",
                     {r.name: f1_score(labels[r.name], segment_classical(normalize_image(images[r.name])))["f1"]
                      for r in records}, time.perf_counter() - t0))

    models: dict[str, object] = {}
    outputs: dict[str, dict[str, object]] = {}
    for label, weights, post, options in args.row:
        if weights not in models:
            models[weights] = load_predictor(weights)
        predictor = models[weights]
        spec = predictor.spec
        config = (PostprocessConfig(method="threshold", min_size=spec.postprocess.min_size) if post == "threshold"
                  else dataclasses.replace(spec.postprocess, method="watershed"))
        spec = with_options(spec.replace(postprocess=config), options)
        t0 = time.perf_counter()
        if spec.test_time.flips or spec.size.auto or spec.size.diameter:
            scores = {r.name: f1_score(labels[r.name], segment(images[r.name], predictor, spec))["f1"] for r in records}
        else:
            if weights not in outputs:
                outputs[weights] = {r.name: predict_outputs(images[r.name], predictor) for r in records}
            scores = {r.name: f1_score(labels[r.name], postprocess(outputs[weights][r.name], config))["f1"]
                      for r in records}
        print(f"{label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        rows.append((label, scores, time.perf_counter() - t0))

    sources = sorted({r.source for r in records})
    by_source = {s: [r.name for r in records if r.source == s] for s in sources}
    counts = " / ".join(f"{s} {len(by_source[s])}" for s in sources)
    subsets = [(name, sorted(set(chosen) & set(sources))) for name, chosen in args.subset]
    print(f"F1 at IoU 0.5 (challenge rules) on split `{args.split}` of {args.data.name} ({len(records)} images: {counts})\n")
    extra = "".join(f" {name}: images ({sum(len(by_source[s]) for s in subset)}) | {name}: over sources |"
                    for name, subset in subsets)
    for title, stat in (("mean", statistics.fmean), ("median", statistics.median)):
        print(f"**{title} F1**\n")
        print("| method | " + " | ".join(sources) + " | all images | mean over sources |" + extra)
        print("|---|" + "---|" * (len(sources) + 2 + 2 * len(subsets)))
        for label, scores, _ in rows:
            per = {s: stat([scores[n] for n in by_source[s]]) for s in sources}
            cells = [per[s] for s in sources]
            cells += [stat(list(scores.values())), statistics.fmean(per.values())]
            for _, subset in subsets:
                cells += [stat([scores[n] for s in subset for n in by_source[s]]), statistics.fmean(per[s] for s in subset)]
            print(f"| {label} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")
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
