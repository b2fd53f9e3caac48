"""F1 of real images rescaled 0.25x-4x: how far the segmentation holds across cell sizes.

From the repository root::

    python -m benchmarks.bench_rescale [--weights weights] [--names NAME ...] [--scales 0.25 0.5 ...]

Each chosen val image (default: one per kind of cell size, see ``DEFAULT_NAMES``) is resized by
every scale (area averaging down, linear up; its labels by nearest neighbour) and segmented with
the weights' own settings, then with the automatic cell-size rescaling off and on; F1 against the
rescaled labels (IoU 0.5, challenge rules).  Prints one markdown table: a row per image and mode,
a column per scale, and the largest drop from the native-scale F1 between 0.5x and 2x.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

DEFAULT_SCALES = (0.25, 0.5, 0.71, 1.0, 1.41, 2.0, 4.0)
# Val images of each cell size (median diameter): DSB nuclei (21 px), whole cells of the Cellpose set
# (28 px), phase-contrast cells (42 px), large nuclei (114 px).
DEFAULT_NAMES = ("dsb_07fb37aafa662660", "scellseg_cytomembrane_290", "usiigaci_train_set43", "coelho_gnf_36")


def main(argv: list[str] | None = None) -> int:
    from benchmarks.classical_val import default_data_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=default_data_dir(), help="data folder with manifest.csv, or a pack")
    p.add_argument("--weights", default="weights")
    p.add_argument("--names", nargs="+", default=None, help="val image names (default: one per cell size, those present)")
    p.add_argument("--scales", nargs="+", type=float, default=list(DEFAULT_SCALES))
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="override the weights' flips")
    args = p.parse_args(argv)

    from crossct.pipeline import segment
    from crossct.predictors import load_predictor
    from crossct.size import median_diameter, resize_image, resize_labels
    from crossct.train.records import data_records, read_record_image, read_record_label
    from evaluate import f1_score

    records = {r.name: r for r in data_records(args.data, "val")}
    names = args.names or [n for n in DEFAULT_NAMES if n in records]
    if not names:
        print("error: none of the images asked for is in the val split", file=sys.stderr)
        return 2
    predictor = load_predictor(args.weights)
    spec = predictor.spec
    if args.tta is not None:
        spec = spec.replace(test_time=dataclasses.replace(spec.test_time, flips=args.tta))
    modes = {"own scale": dataclasses.replace(spec.size, auto=False, diameter=0.0),
             "automatic size": dataclasses.replace(spec.size, auto=True, diameter=0.0)}
    header = " | ".join(f"{s:g}x" for s in args.scales)
    print(f"F1 at IoU 0.5 of val images rescaled, weights `{args.weights}` (flips {'on' if spec.test_time.flips else 'off'}; "
          f"automatic size: reference {spec.size.reference_diameter:g} px, kept within "
          f"{spec.size.min_diameter:g}-{spec.size.max_diameter:g} px)\n")
    print(f"| image (median cell diameter) | mode | {header} | largest drop 0.5x-2x |")
    print("|---|---|" + "---|" * (len(args.scales) + 1))
    for name in names:
        record = records[name]
        image, labels = read_record_image(record), read_record_label(record)[0]
        diameter = median_diameter(labels)
        for mode, size in modes.items():
            scores, t0 = {}, time.perf_counter()
            for scale in args.scales:
                scaled = resize_image(image, scale) if scale != 1 else image
                truth = resize_labels(labels, scaled.shape[:2]) if scale != 1 else labels
                scores[scale] = f1_score(truth, segment(scaled, predictor, spec.replace(size=size)))["f1"]
            native = scores.get(1.0)
            inner = [scores[s] for s in args.scales if 0.5 <= s <= 2.0]
            drop = f"{native - min(inner):.3f}" if native is not None and inner else "n/a"
            cells = " | ".join(f"{scores[s]:.3f}" for s in args.scales)
            print(f"| {name} ({diameter:.0f} px) | {mode} | {cells} | {drop} |")
            print(f"{name} {mode}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
