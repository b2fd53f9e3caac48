"""Whole-slide images in bounded memory: stream the network, post-process overlapping blocks, stitch.

The network runs over the whole image's tile grid, one row of tiles at a time, along the
image's longer axis; a canvas a few blocks' heights tall holds the blended outputs until they
are post-processed, so every tile runs once (as on a small image) and the outputs are those of
:func:`crossct.tiling.sliding_window` on the whole image.  Post-processing goes block by block:
``block_size`` cores with ``block_margin`` pixels of context on every side.  A cell is kept by the
one block whose core holds its centroid, with its full extent (margin included), so a cell across
a block border is neither cut nor duplicated as long as it is smaller than the margin.  Peak
memory: the image, the uint32 label map, the canvas (5 channels x (block + 2 margins + a tile) x
the shorter side) and one block's post-processing.
"""

from __future__ import annotations

import time

import numpy as np

from .config import ModelSpec, TilingConfig
from .normalize import channel_bounds, normalize_image
from .pipeline import Timings, tiling_for
from .postprocess import postprocess
from .parallel import ordered_map
from .predictors import Predictor, available_cpus
from .tiling import PredictBatch, TileBlender, pad_to_tile, tile_starts

__all__ = ["needs_blocks", "block_grid", "segment_blocks"]

# Blocks post-processed at once: each holds its outputs and the watershed's working arrays
# (about 0.3 GB for a 2560 x 2560 block with margins), so a many-core machine is capped.
MAX_POST_WORKERS = 4


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


def _transposed(predict: PredictBatch) -> PredictBatch:
    """The network seen from a transposed image: tiles go in, and outputs come out, transposed back."""

    def run(batch: np.ndarray) -> np.ndarray:
        return predict(np.ascontiguousarray(batch.transpose(0, 1, 3, 2))).transpose(0, 1, 3, 2)

    return run


class _OutputStream:
    """Blended network outputs of an (L, S, C) image, produced tile row by tile row along L.

    :meth:`rows` makes rows [a, b) final (every tile touching them has run); requests must not
    go back (``a`` never decreases), so rows above ``a`` are dropped from the canvas.
    """

    def __init__(self, image: np.ndarray, bounds: list[tuple[float, float] | None], spec: ModelSpec,
                 predict: PredictBatch, tiling: TilingConfig, span: int, concurrency: int, timings: Timings) -> None:
        self.image, self.bounds, self.spec = image, bounds, spec
        self.predict, self.concurrency, self.timings = predict, concurrency, timings
        self.tile = tiling.tile_size
        length, side = image.shape[:2]
        self.starts = tile_starts(length, self.tile, tiling.stride)
        self.columns = [(0, x) for x in tile_starts(side, self.tile, tiling.stride)]
        self.next_row = 0  # index into self.starts of the next tile row to run
        self.base = 0  # image row of canvas row 0
        self.blender = TileBlender((span + self.tile, max(side, self.tile)), tiling, len(spec.output_channels))

    def rows(self, a: int, b: int) -> None:
        if a < self.base:
            raise ValueError(f"rows {a}..{b} requested after the canvas moved on to row {self.base}")
        self.blender.shift(a - self.base)
        self.base = a
        while self.next_row < len(self.starts) and self.starts[self.next_row] < b:
            y = self.starts[self.next_row]
            t0 = time.perf_counter()
            strip = normalize_image(self.image[y : y + self.tile], self.spec.normalize, bounds=self.bounds,
                                    channels_first=True)
            strip = pad_to_tile(strip, self.tile)
            t1 = time.perf_counter()
            self.blender.add(strip, self.columns, self.predict, self.concurrency, row_offset=y - self.base)
            self.timings.normalize += t1 - t0
            self.timings.model += time.perf_counter() - t1
            self.next_row += 1

    def outputs(self, a: int, b: int, c: int, d: int) -> np.ndarray:
        """(K, b - a, d - c) blended outputs of rows [a, b) (made final by :meth:`rows`), columns [c, d)."""
        return self.blender.result(slice(a - self.base, b - self.base), slice(c, d))


def segment_blocks(image: np.ndarray, predictor: Predictor, spec: ModelSpec | None = None,
                   timings: Timings | None = None) -> np.ndarray:
    """Segment a large (H, W, C) image block by block; returns (H, W) uint32 labels 0..N."""
    spec = spec or predictor.spec
    timings = timings if timings is not None else Timings()
    if image.ndim == 2:
        image = image[:, :, None]
    height, width = image.shape[:2]
    block, margin = spec.tiling.block_size, spec.tiling.block_margin
    t0 = time.perf_counter()
    bounds = channel_bounds(image, spec.normalize)
    timings.normalize += time.perf_counter() - t0
    labels = np.zeros((height, width), np.uint32)
    # Stream along the longer axis, so the canvas spans the shorter one: a 2,600 x 40,000 strip
    # keeps 2,600-pixel canvas rows, not 40,000.  The views below cost no copy.
    transposed = width > height
    view, label_view = (image.transpose(1, 0, 2), labels.T) if transposed else (image, labels)
    predict = _transposed(predictor.predict) if transposed else predictor.predict
    length, side = view.shape[:2]
    stream = _OutputStream(view, bounds, spec, predict, tiling_for(predictor, spec.tiling),
                           span=block + 2 * margin, concurrency=getattr(predictor, "concurrent_calls", 1),
                           timings=timings)
    workers = min(available_cpus(), MAX_POST_WORKERS)
    next_id = 1
    for y0, y1 in block_grid(length, block):
        ey0, ey1 = max(0, y0 - margin), min(length, y1 + margin)
        stream.rows(ey0, ey1)
        cores = [(x0, x1, max(0, x0 - margin), min(side, x1 + margin)) for x0, x1 in block_grid(side, block)]

        def post(core: tuple[int, int, int, int]) -> np.ndarray:
            outputs = stream.outputs(ey0, ey1, core[2], core[3])
            if transposed:  # post-process in the image's own orientation
                outputs = np.ascontiguousarray(outputs.transpose(0, 2, 1))
            local = postprocess(outputs, spec.postprocess)
            return local.T if transposed else local

        t0 = time.perf_counter()
        # The blocks of a band are post-processed side by side (OpenCV, NumPy and scikit-image's
        # watershed release the GIL) and stitched in order, so the labels do not depend on it.
        for (x0, x1, ex0, _), local in zip(cores, ordered_map(post, cores, workers)):
            next_id = _keep_core_cells(local, label_view, (y0, y1, x0, x1), (ey0, ex0), next_id)
        timings.postprocess += time.perf_counter() - t0
    # Relabel 1..N in case a kept cell lost all its pixels to an earlier one.
    present = np.zeros(next_id, bool)
    present[labels.ravel()] = True  # no sort: np.unique on 10^8 pixels takes seconds
    present[0] = False
    if not present[1:].all():
        lut = np.zeros(next_id, np.uint32)
        lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.uint32)
        labels = lut[labels]
    return labels


def _keep_core_cells(local: np.ndarray, labels: np.ndarray, core: tuple[int, int, int, int],
                     origin: tuple[int, int], next_id: int) -> int:
    """Copy into ``labels`` the cells of ``local`` (a block with margins at ``origin``) whose
    centroid lies in the block's ``core`` (y0, y1, x0, x1), numbered from ``next_id``; returns the next free id."""
    n = int(local.max())
    if not n:
        return next_id
    y0, y1, x0, x1 = core
    ey0, ex0 = origin
    cy, cx = _centroids(local, n)
    cy, cx = cy + ey0, cx + ex0
    keep = (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
    keep[0] = False
    new_ids = np.zeros(n + 1, np.uint32)
    kept = np.flatnonzero(keep)
    new_ids[kept] = np.arange(next_id, next_id + kept.size, dtype=np.uint32)
    region = labels[ey0 : ey0 + local.shape[0], ex0 : ex0 + local.shape[1]]
    mapped = new_ids[local]
    # Pixels another block already gave a cell stay with it (first come, first kept).
    np.copyto(region, mapped, where=(mapped > 0) & (region == 0))
    return next_id + kept.size
