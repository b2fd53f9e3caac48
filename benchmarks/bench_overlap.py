"""Tile overlap as a speed lever: tiles, model time and val F1 per overlap, same weights.

From the repository root::

    python -m benchmarks.bench_overlap                       # overlaps 0.25 (shipped) 0.125 0.0625
    python -m benchmarks.bench_overlap --overlaps 0.25 0.5

Less overlap means fewer tiles through the network (the tile count is a step function of the
image side: a 1000-pixel side needs 5 tiles of 256 at overlap 0.25 and still 5 at 0.125), but a
cell near a tile edge sees less context.  Per overlap: the tiles of a 1, 4 and 16 MP image, the
model time (normalised 4-MP synthetic image through tiling + network + blending, best of
``--repeat``) and the F1 at IoU 0.5 of the full pipeline on the val split, per source.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

from benchmarks.bench_speed import load_line, machine_line, side_for
from benchmarks.classical_val import default_data_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--overlaps", type=float, nargs="+", default=[0.25, 0.125, 0.0625])
    p.add_argument("--weights", type=Path, default=Path("weights"))
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--split", default="val")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    from crossct.io import read_image
    from crossct.normalize import normalize_image
    from crossct.pipeline import segment, tiling_for
    from crossct.predictors import load_predictor
    from crossct.synthetic import synthetic_cells
    from crossct.tiling import sliding_window, tile_grid
    from crossct.train.records import read_manifest
    from evaluate import f1_score, read_labels

    predictor = load_predictor(args.weights, device="cpu")
    records = read_manifest(args.data / "manifest.csv", split=args.split)
    images = {r.name: read_image(r.image) for r in records}
    truths = {r.name: read_labels(r.label) for r in records}
    sources = sorted({r.source for r in records})
    side4 = side_for(4)
    image4 = normalize_image(synthetic_cells(side4, side4, seed=0)[0], predictor.spec.normalize, channels_first=True)
    print(f"# bench_overlap: tile overlap against tiles, model time and val F1\n\n{machine_line()}; {load_line()}\n")
    print("| overlap | stride px | tiles 1 MP | tiles 4 MP | tiles 16 MP | model s 4 MP | "
          + " | ".join(sources) + " | all images | mean over sources |")
    print("|---|---|---|---|---|---|" + "---|" * (len(sources) + 2))
    for overlap in args.overlaps:
        spec = dataclasses.replace(predictor.spec, tiling=dataclasses.replace(predictor.spec.tiling, overlap=overlap))
        tiling = tiling_for(predictor, spec.tiling)
        tiles = [len(tile_grid(side_for(mp), side_for(mp), tiling.tile_size, tiling.stride)) for mp in (1, 4, 16)]
        seconds = []
        for _ in range(args.repeat + 1):  # the first run warms up
            t = time.perf_counter()
            sliding_window(image4, predictor.predict, tiling, out_channels=5, concurrency=predictor.concurrent_calls)
            seconds.append(time.perf_counter() - t)
        by_source: dict[str, list[float]] = {s: [] for s in sources}
        for r in records:
            by_source[r.source].append(float(f1_score(truths[r.name], segment(images[r.name], predictor, spec))["f1"]))
        per = [statistics.fmean(by_source[s]) for s in sources]
        overall = statistics.fmean(f for v in by_source.values() for f in v)
        print(f"| {overlap:g} | {tiling.stride} | {tiles[0]} | {tiles[1]} | {tiles[2]} | {min(seconds[1:]):.3f} | "
              + " | ".join(f"{v:.4f}" for v in per) + f" | {overall:.4f} | {statistics.fmean(per):.4f} |", flush=True)
    print(f"\n{load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
