"""Memory one image takes through the batch, against the estimate the memory budget refuses by.

From the repository root::

    python -m benchmarks.bench_memory_image                       # the default sizes, about 10 min
    python -m benchmarks.bench_memory_image --sizes 2560x2560 --overlay

Each size runs in a fresh process: the model is loaded and warmed up on a 300 x 300 image, a
synthetic image of that size is written as TIFF, the process's peak RSS is reset
(``/proc/self/clear_refs``), and the image goes through ``crossct.batch.run_batch`` exactly as
``predict.py`` runs it (read, segment, write the labels, and the overlay with ``--overlay``).
The table shows the peak RSS above the loaded model (``VmHWM`` - ``VmRSS`` before), the estimate
of ``crossct.budget.needed_bytes`` for the file's header, and their ratio: the estimate must stay
above the measurement (ratio > 1) for ``--max-memory`` to hold.  ``--cpus 1`` pins the child to
one CPU (one post-processing worker for whole slides).

``--bombs`` instead times the refusal of three small files declaring huge images (a 629-byte JPEG
declaring 30000 x 30000 RGB, 200 TIFF pages of 4000 x 4000, a 46000 x 46000 RGB TIFF) with the
default memory limit: header read + estimate, and the growth of the process's peak RSS.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = ["256x256", "512x512", "1024x1024", "2560x2560", "2560x2560x3", "2600x2600", "5000x5000x3",
                 "3000x9000", "8000x8000"]


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(size: str, weights: str, overlay: bool, work: Path) -> dict:
    import gc

    import numpy as np
    import tifffile

    from crossct.batch import WorkItem, run_batch
    from crossct.budget import MemoryBudget, needed_bytes
    from crossct.io import read_header
    from crossct.pipeline import segment
    from crossct.predictors import load_predictor
    from crossct.synthetic import synthetic_cells

    h, w, *c = (int(v) for v in size.split("x"))
    predictor = load_predictor(weights, device="cpu")
    segment(synthetic_cells(300, 300, seed=1)[0], predictor)  # warm-up: sessions and arenas allocated
    tile = synthetic_cells(min(h, 512), min(w, 512), seed=2)[0]
    image = np.tile(tile, (-(-h // tile.shape[0]), -(-w // tile.shape[1])))[:h, :w]
    if c and c[0] > 1:
        image = np.repeat(image[:, :, None], c[0], axis=2)
    path = work / f"image_{size}.tif"
    tifffile.imwrite(path, image)
    del image, tile
    gc.collect()
    estimate = needed_bytes(read_header(path), predictor.spec, overlay=overlay)
    item = WorkItem(path, work / "labels.tiff", work / "overlay.png" if overlay else None)
    base = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    summary = run_batch([item], predictor, budget=MemoryBudget(1 << 50))
    peak = _status_bytes("VmHWM")
    assert summary.done == 1, summary.failed
    return {"base": base, "peak": peak - base, "estimate": estimate}


def _bombs(folder: Path) -> list[Path]:
    """Three small files that declare huge images (see the module docstring)."""
    import struct

    import cv2
    import numpy as np
    import tifffile

    ok, data = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    jpeg = bytearray(data.tobytes())
    struct.pack_into(">HH", jpeg, jpeg.find(b"\xff\xc0") + 5, 30000, 30000)
    (folder / "jpeg_30000.jpg").write_bytes(bytes(jpeg))
    paths = [folder / "jpeg_30000.jpg"]
    for name, array, size, options in [("pages_200.tif", np.zeros((200, 16, 16), np.uint8), 4000, {}),
                                       ("rgb_46000.tif", np.zeros((16, 16, 3), np.uint8), 46000, {"photometric": "rgb"})]:
        path = folder / name
        tifffile.imwrite(path, array, **options)
        data = bytearray(path.read_bytes())
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                for tag in ("ImageLength", "ImageWidth"):
                    t = page.tags[tag]
                    struct.pack_into("<I" if t.dtype in (4, 16) else "<H", data, t.valueoffset, size)
        path.write_bytes(bytes(data))
        paths.append(path)
    return paths


def bombs() -> int:
    import logging
    import resource
    import time

    from crossct.budget import MemoryBudget
    from crossct.config import load_spec
    from crossct.io import ImageReadError, read_header

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # an error per page of the patched files
    spec, budget = load_spec(REPO / "weights" / "model.json"), MemoryBudget()
    print("| file | bytes | refused in ms | peak RSS growth MiB | reason |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="crossct-bombs-") as work:
        for path in _bombs(Path(work)):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            try:
                budget.check(path, read_header(path), spec)
                reason = "ACCEPTED"
            except ImageReadError as exc:
                reason = str(exc).removeprefix(f"{path}: ")[:90] + "..."
            ms = (time.perf_counter() - t0) * 1000
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            print(f"| {path.name} | {path.stat().st_size} | {ms:.1f} | {grown:.1f} | {reason} |")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="HxW or HxWxC, e.g. 2560x2560x3")
    p.add_argument("--weights", default=str(REPO / "weights"), help="weights folder")
    p.add_argument("--overlay", action="store_true", help="also write the overlay")
    p.add_argument("--cpus", type=int, default=None, help="pin each child to this many CPUs")
    p.add_argument("--bombs", action="store_true", help="time the refusal of three decompression bombs instead")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bombs:
        return bombs()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="crossct-memory-image-") as work:
            print(json.dumps(_child(args.child, args.weights, args.overlay, Path(work))))
        return 0

    print(f"weights {args.weights}; overlay {'on' if args.overlay else 'off'}; "
          f"CPUs {args.cpus or len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}\n")
    print("| size | model RSS MiB | peak above model MiB | estimate MiB | estimate / peak | bytes per pixel |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        command = [sys.executable, "-m", "benchmarks.bench_memory_image", "--child", size, "--weights", args.weights]
        if args.overlay:
            command.append("--overlay")
        if args.cpus:
            command = ["taskset", "-c", ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[: args.cpus]), *command]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {size} | failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        h, w = (int(v) for v in size.split("x")[:2])
        print(f"| {size} | {r['base'] / 2**20:.0f} | {r['peak'] / 2**20:.0f} | {r['estimate'] / 2**20:.0f} "
              f"| {r['estimate'] / r['peak']:.2f} | {r['peak'] / (h * w):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
