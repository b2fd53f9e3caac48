"""Seconds to score a 4000 x 4000 image with 20,000 cells by the challenge's F1.

From the repository root::

    python -m benchmarks.bench_f1 [--size 4000] [--cells 20000] [--repeat 3]

Builds a ground truth of ``--cells`` cells (seeds on a jittered grid grown by 10 pixels, so most
cells touch their neighbours, as in dense tissue) and three predictions: the ground truth itself,
the ground truth shifted by 3 pixels, and the shifted one with labels scattered over 2**40 (the
path for label values too large for a lookup table). Prints the best of ``--repeat`` timings of
:func:`evaluate.f1_score` for each. Measures only; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import time


def build(size: int, cells: int, seed: int = 0):
    """(size, size) uint32 ground truth with ``cells`` labels."""
    import numpy as np
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(seed)
    n = int(np.ceil(np.sqrt(cells)))
    pitch = size / n
    centres = (np.arange(n) + 0.5) * pitch
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    points = np.stack([yy.ravel(), xx.ravel()], 1)[:cells] + rng.uniform(-pitch / 4, pitch / 4, (cells, 2))
    points = np.clip(points.astype(int), 0, size - 1)
    seeds = np.zeros((size, size), np.uint32)
    seeds[points[:, 0], points[:, 1]] = np.arange(1, cells + 1, dtype=np.uint32)
    return expand_labels(seeds, distance=max(1, int(pitch * 0.36)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", type=int, default=4000, help="image side in pixels")
    parser.add_argument("--cells", type=int, default=20_000, help="number of cells")
    parser.add_argument("--repeat", type=int, default=3, help="timings per case (best is shown)")
    args = parser.parse_args(argv)

    import numpy as np

    from evaluate import f1_score

    start = time.perf_counter()
    gt = build(args.size, args.cells)
    print(f"built a {args.size}x{args.size} ground truth with {int(gt.max())} cells in {time.perf_counter() - start:.1f} s")
    shifted = np.roll(gt, 3, axis=1)
    rng = np.random.default_rng(1)
    big = np.concatenate([[0], rng.choice(2**40, size=int(gt.max()), replace=False) + 1]).astype(np.uint64)
    cases = [("identical", gt), ("shifted 3 px", shifted), ("shifted, labels up to 2**40", big[shifted])]

    print(f"\n| prediction | seconds (best of {args.repeat}) | TP | FP | FN | F1 |")
    print("|---|---|---|---|---|---|")
    for name, pred in cases:
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = f1_score(gt, pred)
            best = min(best, time.perf_counter() - t0)
        print(f"| {name} | {best:.2f} | {result['tp']} | {result['fp']} | {result['fn']} | {result['f1']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
