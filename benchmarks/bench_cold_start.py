"""Cold start: one process, one 1-megapixel image, from interpreter start to the label file written.

From the repository root::

    python -m benchmarks.bench_cold_start                 # 5 runs each, weights/ (or a random paper U-Net)
    python -m benchmarks.bench_cold_start --repeat 9 --weights runs/unet/weights

Times, as the challenge did (one image per container run, the whole command timed), ``--repeat``
runs of each of::

    python predict.py -i DIR -o OUT -w W                  # ours
    python -m benchmarks.baseline -i DIR -o OUT -w W      # the organisers' pipeline, same weights

where DIR holds one synthetic 1000 x 1000 image.  The runs alternate between the two commands (so a
change in background load hits both alike), after one untimed run of each to warm the file cache.
Prints wall seconds (median, min, max), the median peak resident memory of the process, and the
seconds of the interpreter start and of the imports alone (``python -c 'import ...'``), so the
rest is model load + predict + write.  Measures only; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path
from typing import Sequence

from benchmarks.bench_speed import (
    ChildRun,
    default_weights,
    load_line,
    machine_line,
    run_child,
    synthetic_image_file,
    work_folder,
)

# What each command imports before it can segment (for the breakdown rows).
IMPORTS = {
    "ours": "import numpy, scipy.ndimage, cv2, tifffile, onnxruntime, skimage.segmentation, crossct.cli, "
            "crossct.batch, crossct.predictors",
    "baseline": "import numpy, cv2, tifffile, torch, monai.inferers, skimage.measure, skimage.morphology, "
                "skimage.exposure, crossct.io, crossct.predictors, crossct.nets",
}


def commands(image_dir: Path, out: Path, weights: Path) -> dict[str, list[str]]:
    return {
        "ours": [sys.executable, "predict.py", "-i", str(image_dir), "-o", str(out / "ours"), "-w", str(weights)],
        "baseline": [sys.executable, "-m", "benchmarks.baseline", "-i", str(image_dir), "-o", str(out / "baseline"),
                     "-w", str(weights)],
    }


def _checked(run: ChildRun, name: str, expected: Path | None) -> ChildRun:
    if run.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {run.returncode}):\n{run.stderr[-2000:]}")
    if expected is not None and not expected.is_file():
        raise RuntimeError(f"{name} exited 0 but wrote no {expected}:\n{run.stderr[-2000:]}")
    return run


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeat", type=int, default=5, help="timed runs per command")
    p.add_argument("--megapixels", type=float, default=1.0, help="image size")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights folder (model.onnx + model.pt + model.json); default: weights/ or a random paper U-Net")
    p.add_argument("--pipelines", nargs="+", choices=["ours", "baseline"], default=["ours", "baseline"])
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed first run of each command")
    p.add_argument("--no-breakdown", action="store_true", help="skip timing the interpreter start and the imports")
    p.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder, removed after")
    args = p.parse_args(argv)

    with work_folder(args.work_dir, "crossct-cold-start-") as work:
        weights, random_weights = default_weights(args.weights, work)
        image = synthetic_image_file(args.megapixels, work)
        image_dir = work / "input"
        image_dir.mkdir(exist_ok=True)
        shutil.copyfile(image, image_dir / image.name)
        label = image.name.split(".")[0] + "_label.tiff"
        cmds = {k: v for k, v in commands(image_dir, work / "out", weights).items() if k in args.pipelines}

        print(f"# bench_cold_start: one process, one {args.megapixels:g}-MP image\n\n{machine_line()}; {load_line()}")
        print(f"weights: {weights}" + ("  (RANDOM weights: post-processing time not representative)"
                                       if random_weights else ""))
        if not args.no_warmup:
            for name, cmd in cmds.items():
                _checked(run_child(cmd), name, None)
        runs: dict[str, list[ChildRun]] = {name: [] for name in cmds}
        for _ in range(args.repeat):
            for name, cmd in cmds.items():
                expected = work / "out" / name / label
                expected.unlink(missing_ok=True)
                runs[name].append(_checked(run_child(cmd), name, expected))

        print("\n| command | runs | median s | min s | max s | median peak RSS MB |\n|---|---|---|---|---|---|")
        for name, rs in runs.items():
            secs = [r.seconds for r in rs]
            print(f"| {name}: {' '.join(Path(a).name if a == sys.executable else a for a in cmds[name][:3])} ... | "
                  f"{len(rs)} | {statistics.median(secs):.2f} | {min(secs):.2f} | {max(secs):.2f} | "
                  f"{statistics.median(r.max_rss_mb for r in rs):.0f} |")
        if not args.no_breakdown:
            bare = [_checked(run_child([sys.executable, "-c", "pass"]), "python", None).seconds
                    for _ in range(args.repeat)]
            print(f"| interpreter start (python -c pass) | {len(bare)} | {statistics.median(bare):.2f} | "
                  f"{min(bare):.2f} | {max(bare):.2f} | |")
            for name in cmds:
                rs = [_checked(run_child([sys.executable, "-c", IMPORTS[name]]), f"{name} imports", None)
                      for _ in range(args.repeat)]
                secs = [r.seconds for r in rs]
                print(f"| {name} imports only | {len(rs)} | {statistics.median(secs):.2f} | {min(secs):.2f} | "
                      f"{max(secs):.2f} | {statistics.median(r.max_rss_mb for r in rs):.0f} |")
        print(f"\n{load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
