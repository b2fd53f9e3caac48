"""Whole-slide images in bounded memory: segment overlapping blocks and stitch their labels.

The image is cut into ``block_size`` cores, each processed with ``block_margin`` pixels of context
on every side (normalised with the whole image's percentiles, tiled, blended and post-processed
on its own).  A cell is kept by the one block whose core holds its centroid, with its full extent
(margin included), so a cell across a block border is neither cut nor duplicated as long as it is
smaller than the margin.  Peak memory is the image, the uint32 label map and one block's outputs.
"""

from __future__ import annotations

import numpy as np

from .config import ModelSpec
from .normalize import channel_bounds, normalize_image
from .pipeline import Timings, tiling_for
from .postprocess import postprocess
from .predictors import Predictor
from .tiling import sliding_window

__all__ = ["needs_blocks", "block_grid", "segment_blocks"]


def needs_blocks(shape: tuple[int, ...], spec: ModelSpec) -> bool:
    limit = spec.tiling.block_size + 2 * spec.tiling.block_margin
    return shape[0] > limit or shape[1] > limit


def block_grid(length: int, block: int) -> list[tuple[int, int]]:
    """Core intervals [start, stop) of one axis, as even as possible, none longer than ``block``."""
    n = max(1, -(-length // block))
    edges = np.linspace(0, length, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _centroids(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs]
    counts = np.bincount(ids, minlength=n + 1).astype(np.float64)
    counts[counts == 0] = 1
    cy = np.bincount(ids, weights=ys, minlength=n + 1) / counts
    cx = np.bincount(ids, weights=xs, minlength=n + 1) / counts
    return cy, cx


def segment_blocks(image: np.ndarray, predictor: Predictor, spec: ModelSpec | None = None,
                   timings: Timings | None = None) -> np.ndarray:
    """Segment a large (H, W, C) image block by block; returns (H, W) uint32 labels 0..N."""
    import time

    spec = spec or predictor.spec
    timings = timings if timings is not None else Timings()
    if image.ndim == 2:
        image = image[:, :, None]
    height, width = image.shape[:2]
    block, margin = spec.tiling.block_size, spec.tiling.block_margin
    t0 = time.perf_counter()
    bounds = channel_bounds(image, spec.normalize)
    timings.normalize += time.perf_counter() - t0
    tiling = tiling_for(predictor, spec.tiling)
    labels = np.zeros((height, width), np.uint32)
    next_id = 1
    for y0, y1 in block_grid(height, block):
        for x0, x1 in block_grid(width, block):
            ey0, ey1 = max(0, y0 - margin), min(height, y1 + margin)
            ex0, ex1 = max(0, x0 - margin), min(width, x1 + margin)
            t0 = time.perf_counter()
            x = normalize_image(image[ey0:ey1, ex0:ex1], spec.normalize, bounds=bounds, channels_first=True)
            t1 = time.perf_counter()
            outputs = sliding_window(x, predictor.predict, tiling, out_channels=len(spec.output_channels),
                                     concurrency=getattr(predictor, "concurrent_calls", 1))
            del x
            t2 = time.perf_counter()
            local = postprocess(outputs, spec.postprocess)
            del outputs
            n = int(local.max())
            if n:
                cy, cx = _centroids(local, n)
                cy, cx = cy + ey0, cx + ex0
                keep = (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
                keep[0] = False
                new_ids = np.zeros(n + 1, np.uint32)
                kept = np.flatnonzero(keep)
                new_ids[kept] = np.arange(next_id, next_id + kept.size, dtype=np.uint32)
                next_id += kept.size
                region = labels[ey0:ey1, ex0:ex1]
                mapped = new_ids[local]
                # Pixels another block already gave a cell stay with it (first come, first kept).
                np.copyto(region, mapped, where=(mapped > 0) & (region == 0))
            timings.normalize += t1 - t0
            timings.model += t2 - t1
            timings.postprocess += time.perf_counter() - t2
    # Relabel 1..N in case a kept cell lost all its pixels to an earlier one.
    present = np.zeros(next_id, bool)
    present[labels.ravel()] = True  # no sort: np.unique on 10^8 pixels takes seconds
    present[0] = False
    if not present[1:].all():
        lut = np.zeros(next_id, np.uint32)
        lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.uint32)
        labels = lut[labels]
    return labels
