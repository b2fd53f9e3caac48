"""Tune the post-processing thresholds of a model on validation images with the challenge F1.

``python -m crossct.train.tune WEIGHTS [--data DIR] [--write]``

The network runs once per image; the blended outputs are kept and only the post-processing is
repeated, by coordinate descent over each setting in turn (two passes), maximising the same
score that picks checkpoints during training.  ``--write`` stores the result in the weights'
``model.json`` (checksums untouched: they cover the model files, not the thresholds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from ..helpformat import DefaultsHelpFormatter


__all__ = ["tune_postprocess", "score_outputs", "main", "SEARCH_SPACE"]

logger = logging.getLogger(__name__)

SEARCH_SPACE: dict[str, list[Any]] = {
    "seed_threshold": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    "mask_threshold": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "smooth_sigma": [0.0, 1.0, 2.0, 3.0],
    "min_seed_size": [1, 3, 8, 16],
    "min_size": [8, 16, 32],
    "min_relative_size": [0.0, 0.1, 0.15, 0.2, 0.25, 0.3],
}


def score_outputs(cached: list[dict[str, Any]], post) -> dict[str, Any]:
    """F1 summary (as in training validation) of post-processing ``post`` applied to cached outputs."""
    from evaluate import f1_score

    from ..parallel import ordered_map
    from ..postprocess import postprocess
    from ..predictors import available_cpus
    from .loops import summarize

    def f1(item: dict[str, Any]) -> float:
        return float(f1_score(item["label"], postprocess(item["outputs"], post))["f1"])

    per_source: dict[str, list[float]] = {}
    # The watershed and OpenCV release the GIL: one image per core.
    for item, score in zip(cached, ordered_map(f1, cached, min(8, available_cpus()))):
        per_source.setdefault(item["source"], []).append(score)
    return summarize(per_source)


def tune_postprocess(cached: list[dict[str, Any]], start, passes: int = 2,
                     space: dict[str, list[Any]] | None = None):
    """Coordinate descent over ``space`` from ``start`` (a PostprocessConfig, method watershed).

    Returns (best config, its summary, trace of (setting, value, objective)).
    """
    from .loops import balanced_f1

    space = space or SEARCH_SPACE
    best = dataclasses.replace(start, method="watershed")
    best_summary = score_outputs(cached, best)
    best_score = balanced_f1(best_summary)
    trace = [("start", None, best_score)]
    for _ in range(passes):
        improved = False
        for name, values in space.items():
            for value in values:
                if getattr(best, name) == value:
                    continue
                candidate = dataclasses.replace(best, **{name: value})
                summary = score_outputs(cached, candidate)
                score = balanced_f1(summary)
                trace.append((name, value, score))
                if score > best_score + 1e-6:
                    best, best_summary, best_score, improved = candidate, summary, score, True
        if not improved:
            break
    return best, best_summary, trace


SIZE_GRID: dict[str, list[Any]] = {
    "reference_diameter": [24.0, 30.0, 36.0],
    "window": [(16.0, 60.0), (20.0, 60.0), (20.0, 45.0), (28.0, 45.0), (12.0, 80.0)],
    # Tried on the best window above only, each one more pass over the val images; largest first,
    # so that of equal scores the limit that rescales the fewest images is kept.
    "max_area_diameter": [160.0, 120.0, 100.0],
}


def tune_size(predictor, items: list[dict[str, Any]], spec) -> tuple[Any, dict[str, Any], list]:
    """Automatic cell size on or off, and its reference and range, by the same score as the thresholds.

    Each setting segments every image through the whole pipeline (the scales depend on the cells
    found), so this is a small grid (:data:`SIZE_GRID`), not a descent; the area-weighted limit
    is tried on the best window only.  Returns (the best :class:`~crossct.config.SizeConfig`, its
    summary, trace of (setting, score)).
    """
    import itertools

    from evaluate import f1_score

    from ..pipeline import segment
    from .loops import balanced_f1, summarize

    def score(size) -> dict[str, Any]:
        run = spec.replace(size=size)
        per_source: dict[str, list[float]] = {}
        for item in items:
            f1 = f1_score(item["label"], segment(item["image"], predictor, run))["f1"]
            per_source.setdefault(item["source"], []).append(float(f1))
        return summarize(per_source)

    off = dataclasses.replace(spec.size, auto=False, diameter=0.0, max_area_diameter=0.0)
    best, best_summary = off, score(off)
    trace = [("off", balanced_f1(best_summary))]
    best_window, best_window_score = None, -1.0

    def consider(size, name: str) -> float:
        nonlocal best, best_summary
        summary = score(size)
        trace.append((name, balanced_f1(summary)))
        logger.info("size %s: %.4f", name, trace[-1][1])
        if balanced_f1(summary) > balanced_f1(best_summary) + 1e-6:
            best, best_summary = size, summary
        return balanced_f1(summary)

    for reference, (low, high) in itertools.product(SIZE_GRID["reference_diameter"], SIZE_GRID["window"]):
        if not low <= reference <= high:
            continue
        size = dataclasses.replace(off, auto=True, reference_diameter=reference, min_diameter=low, max_diameter=high)
        value = consider(size, trace_name(size))
        if value > best_window_score + 1e-6:
            best_window, best_window_score = size, value
    # On the best window even where "off" beat it: the limit may be what the window was missing.
    for area in SIZE_GRID["max_area_diameter"]:
        if best_window is not None and area > best_window.max_diameter:
            consider(dataclasses.replace(best_window, max_area_diameter=area),
                     f"{trace_name(best_window)} large by area above {area:g}")
    return best, best_summary, trace


def trace_name(size) -> str:
    return f"auto reference {size.reference_diameter:g} range {size.min_diameter:g}-{size.max_diameter:g}"


def cache_outputs(predictor, records) -> list[dict[str, Any]]:
    """Run the network once per validation image; keep outputs and labels in memory."""
    from ..pipeline import predict_outputs
    from .records import read_record_image, read_record_label

    cached = []
    for r in records:
        cached.append({"outputs": predict_outputs(read_record_image(r), predictor), "label": read_record_label(r)[0],
                       "source": r.source, "name": r.name})
    return cached


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossct.train.tune", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("weights", help="weights folder (model.json + model.onnx/.pt) or a checkpoint")
    p.add_argument("--data", default=None, help="data folder with manifest.csv, or a training pack (default: $CROSSCT_DATA or ../shared/data)")
    p.add_argument("--split", default="val")
    p.add_argument("--write", action="store_true", help="store the tuned thresholds in WEIGHTS/model.json")
    p.add_argument("--size", action="store_true",
                   help="after the thresholds, also choose the automatic cell size (on or off, its reference and "
                        "range, and the area-weighted limit for large cells) on the split; each of its settings "
                        "runs the whole pipeline over every image")
    p.add_argument("--keep-thresholds", action="store_true",
                   help="keep the weights' post-processing thresholds (with --size: tune the cell size alone); "
                        "a greedy re-tune can move a threshold for a gain at the image's own scale that the "
                        "size settings then lose")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="tune for flip test-time augmentation on (or off); --write then stores that choice too "
                        "(default: the weights' setting)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    from ..config import load_spec, save_spec
    from ..predictors import load_predictor
    from ..tta import with_test_time
    from .loops import balanced_f1
    from .records import data_records, default_data_dir

    data = Path(args.data) if args.data else default_data_dir()
    records = data_records(data, split=args.split)
    predictor = load_predictor(args.weights)
    flips = predictor.spec.test_time.flips if args.tta is None else args.tta
    cached = cache_outputs(with_test_time(predictor, flips), records)
    start = predictor.spec.postprocess
    before = score_outputs(cached, start)
    if args.keep_thresholds:
        best, summary = start, before
    else:
        best, summary, trace = tune_postprocess(cached, start)
        logger.info("tried %d settings", len(trace))
    result = {"before": {"postprocess": dataclasses.asdict(start), **before},
              "after": {"postprocess": dataclasses.asdict(best), **summary}}
    size = predictor.spec.size
    if args.size:
        from .records import read_record_image, read_record_label

        items = [{"image": read_record_image(r), "label": read_record_label(r)[0], "source": r.source} for r in records]
        tuned_spec = predictor.spec.replace(postprocess=best,
                                            test_time=dataclasses.replace(predictor.spec.test_time, flips=flips))
        size, size_summary, size_trace = tune_size(predictor, items, tuned_spec)
        result["size"] = {"size": dataclasses.asdict(size), **size_summary, "trace": size_trace}
    print(json.dumps(result, indent=2))
    if args.write:
        spec_path = Path(args.weights) / "model.json"
        spec = load_spec(spec_path)
        tuned = {"split": args.split, "flips": flips, "score_before": round(balanced_f1(before), 4),
                 "score_after": round(balanced_f1(summary), 4)}
        if args.keep_thresholds:  # the thresholds' own record stays, with the new size score
            tuned = {**tuned, **spec.metadata.get("postprocess_tuning", {}), "flips": flips}
        if args.size:
            tuned["size_score"] = round(balanced_f1(result["size"]), 4)
        save_spec(spec.replace(postprocess=best, size=size, test_time=dataclasses.replace(spec.test_time, flips=flips),
                               metadata={**spec.metadata, "postprocess_tuning": tuned}), spec_path)
        print(f"wrote tuned post-processing into {Path(args.weights) / 'model.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
