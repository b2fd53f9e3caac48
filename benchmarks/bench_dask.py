"""Whole slides from OME-Zarr: the single-process block path against Dask with 1 and 2 workers.

From the repository root (needs the ``zarr`` extra)::

    python -m benchmarks.bench_dask                                 # 100 and 400 MP, 1 and 2 workers
    python -m benchmarks.bench_dask --sizes 100 --workers 2 --work-dir /tmp/slides   # keep the stores

For every size a square synthetic gray slide (:func:`crossct.synthetic.synthetic_cells`) is written
once as an OME-Zarr store (NGFF 0.4, 1024 x 1024 chunks).  Each row runs in a fresh process:

- ``block path``: the image is read whole from the store into memory, segmented by
  :func:`crossct.pipeline.segment` (the in-memory block path) and its labels written to a Zarr array;
  ``peak MB`` is that process's ``ru_maxrss``.
- ``dask, N worker(s)``: a ``LocalCluster`` of N worker processes (the CPUs shared out as threads);
  :func:`crossct.dask_blocks.segment_dask` on the store's lazily read image, written as the store's
  ``labels/crossct`` pyramid by :func:`crossct.zarr_io.write_ome_zarr_labels` (one pass);
  ``peak MB`` per worker is each worker's ``VmHWM``, and the client process (which holds the
  scheduler) is shown beside it.  The labels are compared with the block path's pixel by pixel.

Both load the network and run it on a 768 x 768 crop before the clock starts (each worker its
own), so ``seconds`` is read + segment + write, without start-up; ``start s`` is the cluster's start.
Measures only; asserts nothing about time.  The load average at the start and end is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks.bench_speed import default_weights, load_line, machine_line, run_child, side_for, work_folder
from crossct.predictors import available_cpus

__all__ = ["main"]

CHUNK = 1024


def this_module(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.bench_dask", *args]


def _peak_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- workers (run in children)


def _worker_make_store(args: argparse.Namespace) -> dict[str, Any]:
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    from crossct.synthetic import synthetic_cells

    side = side_for(args.megapixels)
    t0 = time.perf_counter()
    image, truth = synthetic_cells(side, side, seed=0)
    cells = int(truth.max())
    del truth
    group = zarr.open_group(args.store, mode="w", zarr_format=2)
    write_image(image[None], group, axes="cyx", fmt=FormatV04(), scale_factors=(2, 4),
                storage_options={"chunks": (1, CHUNK, CHUNK)})
    return {"side": side, "cells": cells, "seconds": time.perf_counter() - t0}


def _worker_blocks(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import zarr

    from crossct.pipeline import segment
    from crossct.predictors import load_predictor
    from crossct.zarr_io import read_ome_zarr

    predictor = load_predictor(args.weights, backend="onnx", device="cpu")
    warm = np.random.default_rng(0).integers(0, 255, (768, 768), dtype=np.uint8)
    segment(warm, predictor)
    t0 = time.perf_counter()
    image = read_ome_zarr(args.store).image.compute()
    t1 = time.perf_counter()
    labels = segment(image, predictor)
    t2 = time.perf_counter()
    out = zarr.create_array(args.out, shape=labels.shape, chunks=(CHUNK, CHUNK), dtype=labels.dtype, overwrite=True)
    out[:] = labels
    t3 = time.perf_counter()
    return {"read": t1 - t0, "segment": t2 - t1, "write": t3 - t2, "seconds": t3 - t0, "cells": int(labels.max())}


def _worker_dask(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    import dask.array as da
    import numpy as np
    from distributed import Client, LocalCluster

    from crossct.dask_blocks import PredictorLoader, segment_dask, worker_predictor
    from crossct.pipeline import segment
    from crossct.zarr_io import read_ome_zarr, write_ome_zarr_labels

    logging.getLogger("distributed").setLevel(logging.WARNING)
    loader = PredictorLoader(str(Path(args.weights).resolve()), backend="onnx", device="cpu")
    threads = max(1, available_cpus() // args.workers)
    t0 = time.perf_counter()
    with LocalCluster(n_workers=args.workers, threads_per_worker=threads, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        started = time.perf_counter() - t0

        def warm_up() -> None:
            image = np.random.default_rng(0).integers(0, 255, (768, 768), dtype=np.uint8)
            segment(image, worker_predictor(loader))

        client.run(warm_up)
        source = read_ome_zarr(args.store)
        t1 = time.perf_counter()
        cells = write_ome_zarr_labels(source, segment_dask(source.image, loader))
        seconds = time.perf_counter() - t1
        worker_peaks = sorted(client.run(_peak_mb).values())
    ours = da.from_zarr(str(Path(args.store) / "labels" / "crossct" / "s0"))[0]
    reference = da.from_zarr(args.reference)
    differing = int((ours != reference).sum().compute(scheduler="threads"))
    return {"start": started, "seconds": seconds, "cells": cells, "worker_peaks": worker_peaks,
            "client_peak": _peak_mb(), "threads": threads, "differing_pixels": differing}


WORKERS = {"make-store": _worker_make_store, "blocks": _worker_blocks, "dask": _worker_dask}


# --------------------------------------------------------------------------- driver


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=float, nargs="+", default=[100, 400], help="slide sizes in megapixels")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask worker processes per run")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights folder with model.onnx + model.json; default: weights/ or a random paper U-Net")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where the stores go (default: a temporary folder, removed after); kept stores are reused")
    p.add_argument("--timeout", type=float, default=None, help="seconds after which one child is killed")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--megapixels", type=float, help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--reference", help=argparse.SUPPRESS)
    p.add_argument("--n-workers", dest="workers_one", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        if args.workers_one is not None:
            args.workers = args.workers_one
        print(json.dumps(WORKERS[args.worker](args)), flush=True)
        return 0
    with work_folder(args.work_dir, "crossct-bench-dask-") as work:
        return _run(args, work)


def _run(args: argparse.Namespace, work: Path) -> int:
    weights, random_weights = default_weights(args.weights, work)
    print(f"# Whole slides: block path vs Dask\n\n{machine_line()}; {load_line()} at the start")
    if random_weights:
        print("\n**random weights**: network time is right, cells and post-processing time are not")
    print("\n| slide | run | seconds | start s | peak MB (per worker) | client MB | cells | labels vs block path |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        side = side_for(size)
        store = work / f"slide_{side}.zarr"
        if not (store / ".zattrs").is_file():
            made = run_child(this_module("--worker", "make-store", "--megapixels", str(size), "--store", str(store)),
                             timeout=args.timeout).json()
            print(f"<!-- {side} x {side}: {made['cells']} synthetic cells, store written in {made['seconds']:.0f} s -->",
                  flush=True)
        reference = work / f"labels_{side}.zarr"
        common = ["--weights", str(weights), "--store", str(store)]
        run = run_child(this_module("--worker", "blocks", *common, "--out", str(reference)), timeout=args.timeout)
        report = run.json()
        print(f"| {side} x {side} | block path, 1 process | {report['seconds']:.1f} (read {report['read']:.1f}, "
              f"segment {report['segment']:.1f}, write {report['write']:.1f}) | - | {run.max_rss_mb:.0f} | - | "
              f"{report['cells']} | (reference) |", flush=True)
        for n in args.workers:
            report = run_child(this_module("--worker", "dask", *common, "--n-workers", str(n),
                                           "--reference", str(reference)), timeout=args.timeout).json()
            same = "identical" if report["differing_pixels"] == 0 else f"{report['differing_pixels']} pixels differ"
            peaks = ", ".join(f"{p:.0f}" for p in report["worker_peaks"])
            print(f"| {side} x {side} | dask, {n} worker(s) x {report['threads']} thread(s) | {report['seconds']:.1f} | "
                  f"{report['start']:.1f} | {peaks} | {report['client_peak']:.0f} | {report['cells']} | {same} |",
                  flush=True)
    print(f"\n{load_line()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
