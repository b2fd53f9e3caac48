"""Whole-slide images in bounded memory, in one process: :mod:`crossct.block_plan` followed by
streaming the network over the image, post-processing overlapping blocks and stitching them.

The network runs over the whole image's tile grid, one row of tiles at a time, along the
image's longer axis; a canvas a few blocks' heights tall holds the blended outputs until they
are post-processed, so every tile runs once (as on a small image) and the outputs are those of
:func:`crossct.tiling.sliding_window` on the whole image.  Post-processing goes block by block:
``block_size`` cores with ``block_margin`` pixels of context on every side.  A cell is kept by the
one block whose core holds its centroid, with its full extent (margin included), so a cell across
a block border is neither cut nor duplicated as long as it is smaller than the margin (the plan's
rules, shared with :mod:`crossct.dask_blocks`).  Peak
memory: the image, the uint32 label map, the canvas (5 channels x (block + 2 margins + a tile) x
the shorter side) and one block's post-processing.
"""

from __future__ import annotations

import time

import numpy as np

from .block_plan import BlockPlan, block_grid, cells_kept_by, needs_blocks, paste, survivors  # noqa: F401 (re-exported)
from .config import ModelSpec, TilingConfig
from .normalize import channel_bounds, normalize_image
from .parallel import ordered_map
from .postprocess import postprocess
from .predictors import Predictor, available_cpus
from .tiling import PredictBatch, TileBlender, announce_tiles, pad_to_tile, tile_starts, tile_total, transposed_predict
from .whole_image import Timings, tiling_for

__all__ = ["needs_blocks", "block_grid", "segment_blocks"]

# Blocks post-processed at once: each holds its outputs and the watershed's working arrays
# (about 0.3 GB for a 2560 x 2560 block with margins), so a many-core machine is capped.
MAX_POST_WORKERS = 4


_transposed = transposed_predict  # the name the tests know


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
    """Segment a large (H, W, C) image block by block; returns (H, W) uint32 labels 1..N, 0 background."""
    spec = spec or predictor.spec
    timings = timings if timings is not None else Timings()
    if image.ndim == 2:
        image = image[:, :, None]
    height, width = image.shape[:2]
    plan = BlockPlan(height, width, spec.tiling)
    t0 = time.perf_counter()
    bounds = channel_bounds(image, spec.normalize)
    timings.normalize += time.perf_counter() - t0
    labels = np.zeros((height, width), np.uint32)
    # The views below cost no copy.
    transposed = plan.transposed
    view, label_view = (image.transpose(1, 0, 2), labels.T) if transposed else (image, labels)
    predict = transposed_predict(predictor.predict) if transposed else predictor.predict
    margin = spec.tiling.block_margin
    announce_tiles(predictor, tile_total(height, width, spec.tiling))
    stream = _OutputStream(view, bounds, spec, predict, tiling_for(predictor, spec.tiling),
                           span=spec.tiling.block_size + 2 * margin,
                           concurrency=getattr(predictor, "concurrent_calls", 1), timings=timings)
    workers = min(available_cpus(), MAX_POST_WORKERS)
    next_id = 1
    for band in range(len(plan.bands)):
        ey0, ey1 = plan.band_extent(band)
        stream.rows(ey0, ey1)
        row = [b for b in plan.blocks if b.band == band]

        def post(block) -> np.ndarray:
            _, _, ex0, ex1 = block.extent
            outputs = stream.outputs(ey0, ey1, ex0, ex1)
            if transposed:  # post-process in the image's own orientation
                outputs = np.ascontiguousarray(outputs.transpose(0, 2, 1))
            local = postprocess(outputs, spec.postprocess)
            return local.T if transposed else local

        t0 = time.perf_counter()
        # The blocks of a band are post-processed side by side (OpenCV, NumPy and scikit-image's
        # watershed release the GIL) and stitched in order, so the labels do not depend on it.
        for block, local in zip(row, ordered_map(post, row, workers)):
            y0, y1, x0, x1 = block.extent
            kept, k = cells_kept_by(local, block.core, (y0, x0))
            region = label_view[y0:y1, x0:x1]
            table, n = survivors(kept, k, claimed=region != 0)
            paste(region, kept, table, next_id - 1)
            next_id += n
        timings.postprocess += time.perf_counter() - t0
    return labels
