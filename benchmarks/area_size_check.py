"""Which images the area-weighted large-cell limit rescales, and what it does to their F1.

    python -m benchmarks.area_size_check --weights WEIGHTS [--limit PX] [--split SPLIT] [--data DIR]

``size.max_area_diameter`` (see :class:`crossct.config.SizeConfig`) changes only the images whose
half-scale probe finds the median cell in range but half the area of the cells clear of the edge
in cells wider than the limit.  Tuning sees the val images alone; this probes every labelled image
(train and val by default, about a minute for the 830 on two cores), lists those the limit
rescales, and scores each with the limit and without it: the train images say whether a limit
that helps on val breaks a kind of image val has too few of.  ``--limit`` overrides the weights'
own value (which may be 0, off).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from benchmarks.classical_val import default_data_dir


def check(weights: str, data, split: str | None, limit: float | None,
          references: list[float] | None = None) -> list[dict]:
    """One row per image the limit rescales: split, source, name, area diameter, F1 without and with
    (``f1_with``; with ``references``, ``f1_at`` too: F1 with the cells brought to each of those
    sizes, ``size.area_reference_diameter``)."""
    from crossct import pipeline
    from crossct.predictors import load_predictor
    from crossct.train.records import data_records, read_record_image, read_record_label
    from evaluate import f1_score

    predictor = load_predictor(weights)
    spec = predictor.spec
    if limit is not None:
        spec = spec.replace(size=dataclasses.replace(spec.size, auto=True, max_area_diameter=limit))
    if not spec.size.auto or spec.size.max_area_diameter <= 0:
        raise ValueError(f"{weights}: no area-weighted limit to check (automatic size off or max_area_diameter 0); "
                         "pass --limit PX")
    without = spec.replace(size=dataclasses.replace(spec.size, max_area_diameter=0.0))
    rows = []
    for record in data_records(data, split=split):
        image = read_record_image(record)
        if image.ndim == 2:
            image = image[:, :, None]
        measure, diameter = pipeline.large_cell_measure(image, predictor, spec, pipeline.Timings())
        if measure is not pipeline.inner_area_weighted_diameter:
            continue
        label = read_record_label(record)[0]
        row = {"split": record.split, "source": record.source, "name": record.name, "diameter": diameter,
               "f1_without": f1_score(label, pipeline.segment(image, predictor, without))["f1"],
               "f1_with": f1_score(label, pipeline.segment(image, predictor, spec))["f1"]}
        if references:
            row["f1_at"] = {ref: f1_score(label, pipeline.segment(image, predictor, spec.replace(
                size=dataclasses.replace(spec.size, area_reference_diameter=ref))))["f1"] for ref in references}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="weights")
    p.add_argument("--data", default=None, help="data folder with manifest.csv (default: $CROSSCT_DATA or ../shared/data)")
    p.add_argument("--split", default=None, help="one split only (default: every labelled image)")
    p.add_argument("--limit", type=float, default=None, help="area-weighted limit in px (default: the weights' own)")
    p.add_argument("--area-reference", type=float, nargs="+", default=[], metavar="PX",
                   help="also score each image with its large cells brought to these sizes (size.area_reference_diameter)")
    args = p.parse_args(argv)
    data = args.data or default_data_dir()
    refs = args.area_reference
    rows = check(args.weights, data, args.split, args.limit, refs)
    print("| split | source | image | area-weighted diameter (px) | F1 without | F1 with |"
          + "".join(f" to {ref:g} px |" for ref in refs))
    print("|---|---|---|---|---|---|" + "---|" * len(refs))
    for r in rows:
        print(f"| {r['split']} | {r['source']} | {r['name']} | {r['diameter']:.0f} | {r['f1_without']:.3f} | {r['f1_with']:.3f} |"
              + "".join(f" {r['f1_at'][ref]:.3f} |" for ref in refs))
    for label, key in (("the weights' settings", None), *((f"to {ref:g} px", ref) for ref in refs)):
        f1 = [r["f1_with"] if key is None else r["f1_at"][key] for r in rows]
        better = sum(a > r["f1_without"] for a, r in zip(f1, rows))
        worse = sum(a < r["f1_without"] for a, r in zip(f1, rows))
        print(f"\n{len(rows)} image(s) rescaled by the limit, {label}: {better} better, {worse} worse, "
              f"mean F1 {sum(f1) / max(len(f1), 1):.3f} (without the limit {sum(r['f1_without'] for r in rows) / max(len(rows), 1):.3f}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
