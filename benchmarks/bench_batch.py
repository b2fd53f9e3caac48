"""Batch mode as users run it: a folder of 1-megapixel images, seconds per image once loaded.

From the repository root::

    python -m benchmarks.bench_batch              # 12 images of 1 MP
    python -m benchmarks.bench_batch --n 24 --megapixels 4

Writes ``--n`` synthetic gray images (different seeds) and, each in a fresh process, loads the
model, warms it up on the first image (untimed), then times the whole folder:

- ``ours``: :func:`crossct.batch.run_batch`, what ``predict.py`` runs (post-processing and writing
  of one image overlap the next image's network);
- ``ours, one after another``: read, :func:`crossct.pipeline.segment`, write, image by image;
- ``baseline``: the organisers' pipeline (``benchmarks.baseline``), read, segment, write.

Prints seconds per image, the ratio to the baseline and each process's peak resident memory.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from benchmarks.bench_speed import (default_weights, load_line, machine_line, run_child, synthetic_image_file,
                                    work_folder)

MODES = {"ours": "ours (predict.py's batch loop)", "serial": "ours, one after another", "baseline": "baseline"}


def _worker(args: argparse.Namespace) -> dict:
    from crossct.io import list_images, output_name, read_image, write_labels

    images = list_images(args.input)
    out = Path(args.out)
    if args.mode == "baseline":
        import tifffile

        from benchmarks.baseline import baseline_segment, load_baseline_model

        module, _ = load_baseline_model(args.weights)

        def one(path: Path) -> None:
            tifffile.imwrite(out / output_name(path), baseline_segment(read_image(path), module), compression="zlib")

        one(images[0])  # warm-up
        start = time.perf_counter()
        for path in images:
            one(path)
        return {"seconds": time.perf_counter() - start, "images": len(images)}

    from crossct.batch import WorkItem, run_batch
    from crossct.pipeline import segment
    from crossct.predictors import load_predictor

    predictor = load_predictor(args.weights, device="cpu")
    write_labels(out / "warmup.tiff", segment(read_image(images[0]), predictor))
    work = [WorkItem(path, out / output_name(path)) for path in images]
    start = time.perf_counter()
    if args.mode == "ours":
        summary = run_batch(work, predictor)
        assert summary.done == len(work), summary.failed
    else:
        for item in work:
            write_labels(item.output, segment(read_image(item.image), predictor))
    return {"seconds": time.perf_counter() - start, "images": len(images)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=12, help="images in the folder")
    p.add_argument("--megapixels", type=float, default=1.0)
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument("--repeat", type=int, default=2, help="runs of each mode (alternating; the best is shown)")
    p.add_argument("--weights", type=Path, default=None, help="weights folder (default: weights/)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the images here (default: a temporary folder)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    with work_folder(args.work_dir, "crossct-bench-batch-") as work:
        return _run(args, work)


def _run(args: argparse.Namespace, work: Path) -> int:
    weights, random_weights = default_weights(args.weights, work)
    folder = work / f"batch_{args.n}x{args.megapixels:g}mp"
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(args.n):
        synthetic_image_file(args.megapixels, folder, seed=seed)
    print(f"# bench_batch: a folder of {args.n} images of {args.megapixels:g} MP\n\n{machine_line()}; {load_line()}")
    print(f"weights: {weights}" + ("  ** RANDOM weights: post-processing time is not representative **"
                                   if random_weights else "") + "\n")
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.repeat):
        for mode in args.modes:
            out = work / f"out_{mode}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            child = run_child([sys.executable, "-m", "benchmarks.bench_batch", "--worker", "--mode", mode,
                               "--input", str(folder), "--out", str(out), "--weights", str(weights)])
            report = child.json()
            per_image = report["seconds"] / report["images"]
            if mode not in best or per_image < best[mode][0]:
                best[mode] = (per_image, child.max_rss_mb)
    print("| pipeline | images | s per image (best of %d) | / baseline | peak RSS MB |" % args.repeat)
    print("|---|---|---|---|---|")
    for mode in args.modes:
        per_image, rss = best[mode]
        ratio = f"{per_image / best['baseline'][0]:.2f}x" if "baseline" in best else "-"
        print(f"| {MODES[mode]} | {args.n} | {per_image:.3f} | {ratio} | {rss:.0f} |")
    print(f"\n{load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
