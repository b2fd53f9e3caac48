"""Resident memory of ``predict.py`` over a folder of many small images: it should stay flat.

From the repository root::

    python -m benchmarks.bench_memory_flat                # 1,000 images
    python -m benchmarks.bench_memory_flat --n 100        # a quick look

Writes ``--n`` synthetic images (sizes cycling through ``--shapes``, so buffers of several sizes
are allocated and freed) and runs ``python predict.py -i DIR -o OUT -w W -q`` on them in one
process, sampling its resident memory (``VmRSS`` from ``/proc/PID/status``) and the number of label
files written every ``--interval`` seconds.  Prints the RSS once 10 % of the images are done and
while the last image is in flight (the highest sample at each count of images done), the peak, and
the slope of that RSS against images done over the last 90 % (least squares), in KiB per image: a
flat pipeline has a slope near 0.  ``--pipeline baseline`` runs the organisers'
pipeline the same way.  Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Sequence

from benchmarks.bench_speed import default_weights, load_line, machine_line, rss_mb, run_child, work_folder


def _shape(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} must look like 256x320") from None
    return h, w


def write_images(folder: Path, n: int, shapes: list[tuple[int, int]]) -> None:
    """``n`` synthetic PNGs ``img_00000.png``... (kept between runs of the same folder)."""
    import cv2

    from crossct.synthetic import synthetic_cells

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"img_{i:05d}.png"
        if not path.is_file():
            image, _ = synthetic_cells(*shapes[i % len(shapes)], seed=i)
            cv2.imwrite(str(path), image)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y against x (0 for fewer than 2 distinct x)."""
    if len({x for x, _ in points}) < 2:
        return 0.0
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="number of images")
    p.add_argument("--shapes", type=_shape, nargs="+", default=[_shape(s) for s in ("256x256", "384x320", "200x300", "512x512")],
                   help="image sizes, cycled through")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights folder (model.json + model.onnx/.pt); default: weights/ or a random paper U-Net")
    p.add_argument("--pipeline", choices=["ours", "baseline"], default="ours")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    p.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder, removed after")
    args = p.parse_args(argv)
    if args.n < 10:
        p.error("--n must be at least 10")

    with work_folder(args.work_dir, "crossct-memory-flat-") as work:
        weights, random_weights = default_weights(args.weights, work)
        images = work / f"images_{args.n}"
        write_images(images, args.n, args.shapes)
        out = work / f"out_{args.pipeline}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        if args.pipeline == "ours":
            cmd = [sys.executable, "predict.py", "-i", str(images), "-o", str(out), "-w", str(weights), "-q"]
        else:
            cmd = [sys.executable, "-m", "benchmarks.baseline", "-i", str(images), "-o", str(out), "-w", str(weights)]

        def sample(pid: int) -> tuple[float | None, int]:
            done = sum(1 for e in os.scandir(out) if e.name.endswith("_label.tiff") and not e.name.startswith("."))
            return rss_mb(pid), done

        print(f"# bench_memory_flat: {args.pipeline} on {args.n} images "
              f"({', '.join(f'{h}x{w}' for h, w in args.shapes)})\n\n{machine_line()}; {load_line()}")
        print(f"weights: {weights}" + ("  (random weights)" if random_weights else ""))
        run = run_child(cmd, sample_every=args.interval, sampler=sample)
        if run.returncode != 0:
            print(f"error: {args.pipeline} failed (exit {run.returncode}):\n{run.stderr[-2000:]}", file=sys.stderr)
            return 1
        # The highest RSS seen while d images were done (image d + 1 in flight), for d < n: samples
        # after the last label is written would catch the interpreter tearing down.
        peak_at: dict[int, float] = {}
        for _, (rss, done) in run.samples:
            if rss is not None and done < args.n:
                peak_at[done] = max(rss, peak_at.get(done, 0.0))
        tenth = max(1, args.n // 10)
        points = sorted((d, r) for d, r in peak_at.items() if d >= tenth)
        if len(points) < 2:
            print("error: too few samples (the run was shorter than the sampling interval); "
                  "use more images or a smaller --interval", file=sys.stderr)
            return 1
        (first_done, rss_tenth), (last_done, rss_end) = points[0], points[-1]
        kib_per_image = slope(points) * 1024
        print(f"\n| images | seconds | s / image | RSS at {first_done} done MB | RSS at {last_done} done MB "
              f"| peak RSS MB | slope KiB / image | growth over 1,000 images MB |\n|---|---|---|---|---|---|---|---|")
        print(f"| {args.n} | {run.seconds:.1f} | {run.seconds / args.n:.3f} | {rss_tenth:.0f} | {rss_end:.0f} | "
              f"{run.max_rss_mb:.0f} | {kib_per_image:+.1f} | {kib_per_image * 1000 / 1024:+.1f} |")
        # The shape of the curve: a warm-up step (allocator and caches settling over the first
        # images) then flat, or a steady climb (a leak).  Slope over the second half alone, too.
        late = [(d, r) for d, r in points if d >= args.n // 2]
        late_kib = slope(late) * 1024 if len(late) >= 2 else float("nan")
        marks = sorted({min(last_done, max(first_done, args.n * k // 10)) for k in range(1, 11)})
        seen = [max((r for d, r in points if d <= m), default=float("nan")) for m in marks]
        print("\nHighest RSS so far, by images done:\n")
        print("| images done | " + " | ".join(str(m) for m in marks) + " |\n|---|" + "---|" * len(marks))
        print("| RSS MB | " + " | ".join(f"{r:.0f}" for r in seen) + " |")
        print(f"\nslope over the second half: {late_kib:+.1f} KiB / image ({late_kib * 1000 / 1024:+.1f} MB per 1,000 images)")
        print(f"\n{len(run.samples)} samples every {args.interval} s; {load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
