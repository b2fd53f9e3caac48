"""``crossct-predict --zarr STORE``: one OME-Zarr image, segmented block-parallel on Dask.

Reads the image at ``--level`` (:mod:`crossct.zarr_io`), runs :func:`crossct.dask_blocks.segment_dask`
on the cluster at ``--scheduler`` (or on a local cluster of ``--workers`` processes) and writes
the labels into the store as ``labels/crossct``.  Exit codes as ``crossct-predict``'s: 0 written,
1 the segmentation failed (the store is left as it was), 2 nothing could be done (no Dask/Zarr
installed, an unusable store or level, no weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from contextlib import ExitStack
from pathlib import Path

__all__ = ["predict_zarr"]

logger = logging.getLogger("crossct.predict")

EXIT_OK, EXIT_FAILED, EXIT_FATAL = 0, 1, 2


def predict_zarr(args: argparse.Namespace) -> int:
    try:
        from distributed import Client, LocalCluster

        from .dask_blocks import PredictorLoader, segment_dask
        from .zarr_io import DEFAULT_LABELS_NAME, read_ome_zarr, write_ome_zarr_labels
    except ImportError as exc:
        logger.error("--zarr needs the optional extra: pip install 'crossct[zarr]' (%s)", exc)
        return EXIT_FATAL
    from .predictors import WeightsError, available_cpus, resolve_weights

    if args.workers < 1:
        logger.error("--workers %d must be >= 1", args.workers)
        return EXIT_FATAL
    try:
        source = read_ome_zarr(args.zarr, args.level)
    except ValueError as exc:
        logger.error("%s", exc)
        return EXIT_FATAL
    # An absolute path: workers may start in another folder (they must see the same files).
    loader = PredictorLoader(str(resolve_weights(args.weights).resolve()), backend=args.backend, device=args.device)
    try:
        spec = loader.spec()
    except (WeightsError, ValueError, OSError) as exc:
        logger.error("%s", exc)
        return EXIT_FATAL
    if args.postprocess:
        spec = spec.replace(postprocess=dataclasses.replace(spec.postprocess, method=args.postprocess))

    if not args.verbose:  # the cluster's start/stop chatter
        logging.getLogger("distributed").setLevel(logging.WARNING)
    height, width, _ = source.image.shape
    start = time.perf_counter()
    with ExitStack() as stack:
        if args.scheduler:
            where = f"scheduler {args.scheduler}"
            stack.enter_context(Client(args.scheduler))
        else:
            threads = max(1, available_cpus() // args.workers)
            where = f"local cluster, {args.workers} worker(s) x {threads} thread(s)"
            cluster = stack.enter_context(LocalCluster(n_workers=args.workers, threads_per_worker=threads,
                                                       dashboard_address=None))
            stack.enter_context(Client(cluster))
        logger.info("%s level %d: %d x %d pixels on %s", source.store, args.level, height, width, where)
        try:
            cells = write_ome_zarr_labels(source, segment_dask(source.image, loader, spec))
        except Exception as exc:  # noqa: BLE001 - a worker's error, whatever it is, fails this store only
            logger.error("FAILED %s: %s: %s", source.store, type(exc).__name__, exc)
            return EXIT_FAILED
    elapsed = time.perf_counter() - start
    print(f"crossct: {source.store} level {args.level} ({height} x {width}) segmented, {cells} cells, "
          f"{elapsed:.1f} s ({where}); labels in {Path(source.store) / 'labels' / DEFAULT_LABELS_NAME}",
          file=sys.stderr)
    return EXIT_OK
