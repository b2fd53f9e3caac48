"""Sliding-window inference: tile grid, tapered blending window, accumulation.

Kept apart from running the network (``predict_batch`` is any callable) and from blending, so
each can be tested with a known function: a "network" returning its input + 1 must come back
stitched exactly, whatever the image size.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Iterator

import numpy as np

from .config import TilingConfig
from .parallel import ordered_map

__all__ = ["tile_starts", "tile_grid", "tile_total", "announce_tiles", "blending_window", "sliding_window",
           "pad_to_tile", "weighted_tile_outputs", "transposed_predict", "TileBlender", "PredictBatch"]

# (B, C, t, t) float32 -> (B, K, t, t) float32
PredictBatch = Callable[[np.ndarray], np.ndarray]


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles along one axis of ``length`` (>= tile), first at 0, last flush with the end.

    The fewest tiles whose step is at most ``stride``, spread evenly: every overlap is at least
    ``tile - stride`` and no tile is wasted on a sliver at the end (1000 px at tile 256, stride 192:
    5 tiles either way, but evenly 186 px apart rather than 192, 192, 192, 168).
    """
    if length <= tile:
        return [0]
    n = -(-(length - tile) // stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_grid(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """(y, x) of every tile covering an image of (at least tile x tile) size."""
    return [(y, x) for y in tile_starts(height, tile, stride) for x in tile_starts(width, tile, stride)]


def tile_total(height: int, width: int, config: TilingConfig) -> int:
    """How many tiles :func:`sliding_window` runs over an image of ``height`` x ``width`` (padded to a tile)."""
    tile, stride = config.tile_size, config.stride
    return len(tile_starts(max(height, tile), tile, stride)) * len(tile_starts(max(width, tile), tile, stride))


def announce_tiles(predictor, tiles: int) -> None:
    """Tell ``predictor`` that a pass of ``tiles`` network tiles starts, if it keeps count
    (``expect_tiles``: progress bars; the automatic cell size and flips make passes that no
    count from the image's size alone foresees)."""
    expect = getattr(predictor, "expect_tiles", None)
    if callable(expect):
        expect(tiles)


@lru_cache(maxsize=8)
def blending_window(tile: int, mode: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """(tile, tile) float32 weights: a Gaussian centred on the tile, or constant ones.

    The Gaussian is clipped from below so every pixel keeps a positive weight (tile corners at
    image corners are covered by one tile only).  Read-only: shared between calls.
    """
    if mode == "constant":
        window = np.ones((tile, tile), np.float32)
    elif mode == "gaussian":
        sigma = max(sigma_scale * tile, 1e-3)
        r = np.arange(tile, dtype=np.float64) - (tile - 1) / 2
        g = np.exp(-0.5 * (r / sigma) ** 2)
        window = np.outer(g, g)
        window = np.maximum(window / window.max(), 1e-3).astype(np.float32)
    else:
        raise ValueError(f"blending mode {mode!r} is not one of ['gaussian', 'constant']")
    window.setflags(write=False)
    return window


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def sliding_window(
    image: np.ndarray,
    predict_batch: PredictBatch,
    config: TilingConfig = TilingConfig(),
    out_channels: int | None = None,
    concurrency: int = 1,
) -> np.ndarray:
    """Run ``predict_batch`` over tiles of ``image`` and blend the results.

    Parameters
    ----------
    image : (C, H, W) float32, any H and W >= 1 (padded with zeros up to one tile when smaller).
    predict_batch : maps (B, C, t, t) float32 to (B, K, t, t) float32.
    config : tile size, overlap, blending window and batch size.
    out_channels : K, when known in advance (otherwise taken from the first batch).
    concurrency : how many ``predict_batch`` calls may run at once, from worker threads (the
        predictor's ``concurrent_calls``).  Results are blended on the calling thread in grid
        order whatever the order they finish in, so the output does not depend on it.

    Returns
    -------
    (K, H, W) float32: the weighted mean of every tile's output at each pixel.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    _, height, width = image.shape
    tile = config.tile_size
    image = pad_to_tile(image, tile)
    blender = TileBlender(image.shape[1:], config, out_channels)
    blender.add(image, tile_grid(image.shape[1], image.shape[2], tile, config.stride), predict_batch, concurrency)
    return blender.result()[:, :height, :width]


def pad_to_tile(image: np.ndarray, tile: int) -> np.ndarray:
    """(C, H, W) zero-padded at the bottom and right to at least (tile, tile); as is when large enough."""
    _, height, width = image.shape
    if height >= tile and width >= tile:
        return image
    padded = np.zeros((image.shape[0], max(height, tile), max(width, tile)), dtype=np.float32)
    padded[:, :height, :width] = image
    return padded


def weighted_tile_outputs(image: np.ndarray, tiles: list[tuple[int, int]], predict_batch: PredictBatch,
                          config: TilingConfig, concurrency: int = 1) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
    """Run the network on ``image[:, y:y+t, x:x+t]`` for each (y, x) of ``tiles``; yields the outputs
    already multiplied by the blending window: (the batch's tiles, (B, K, t, t) float32), in ``tiles`` order.

    Batches hold ``config.batch_size`` consecutive tiles, so the same tile list always makes the
    same network calls (a predictor's floating-point results may depend on the batch a tile is in).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency} must be >= 1")
    tile = config.tile_size
    window = blending_window(tile, config.blending, config.sigma_scale)

    def run(batch: list[tuple[int, int]]) -> np.ndarray:
        tiles_ = np.stack([image[:, y : y + tile, x : x + tile] for y, x in batch]).astype(np.float32, copy=False)
        outputs = np.asarray(predict_batch(tiles_))
        if outputs.shape[0] != len(batch) or outputs.shape[2:] != (tile, tile):
            raise ValueError(
                f"predictor returned shape {outputs.shape} for a batch of shape {tiles_.shape}; "
                f"expected ({len(batch)}, K, {tile}, {tile})"
            )
        return outputs

    batches = list(_batches(tiles, config.batch_size))
    for batch, outputs in zip(batches, ordered_map(run, batches, concurrency)):
        if not outputs.flags.writeable:
            outputs = outputs.copy()
        outputs *= window  # in place: no temporary per tile
        yield batch, outputs


def transposed_predict(predict: PredictBatch) -> PredictBatch:
    """The network seen from a transposed image: tiles go in, and outputs come out, transposed back."""

    def run(batch: np.ndarray) -> np.ndarray:
        return predict(np.ascontiguousarray(batch.transpose(0, 1, 3, 2))).transpose(0, 1, 3, 2)

    return run


class TileBlender:
    """Weighted sums of tile outputs over a (rows, cols) canvas; :meth:`result` divides them out.

    :func:`sliding_window` uses one canvas for the whole image; :mod:`crossct.blocks` streams a
    whole slide through a canvas of a few tile rows, :meth:`shift`-ing finished rows out;
    :mod:`crossct.dask_blocks` blends each block's tiles on a canvas of its own.  Each pixel's sum
    is accumulated in tile order every way, so all give the same bits.
    """

    def __init__(self, shape: tuple[int, int], config: TilingConfig, out_channels: int | None = None) -> None:
        self.config = config
        self.tile = config.tile_size
        self.window = blending_window(self.tile, config.blending, config.sigma_scale)
        self.accum: np.ndarray | None = None if out_channels is None else np.zeros((out_channels, *shape), np.float32)
        self.weight = np.zeros(shape, np.float32)

    def add(self, image: np.ndarray, tiles: list[tuple[int, int]], predict_batch: PredictBatch,
            concurrency: int = 1, row_offset: int = 0) -> None:
        """Run the network on ``image[:, y:y+t, x:x+t]`` for each (y, x) of ``tiles`` and blend the
        outputs in at canvas row ``y + row_offset``, column ``x``."""
        for batch, weighted in weighted_tile_outputs(image, tiles, predict_batch, self.config, concurrency):
            self.accumulate(batch, weighted, row_offset)

    def accumulate(self, tiles: list[tuple[int, int]], weighted: np.ndarray, row_offset: int = 0,
                   col_offset: int = 0) -> None:
        """Add window-weighted outputs ((B, K, t, t), from :func:`weighted_tile_outputs`) of ``tiles`` at canvas
        row ``y + row_offset``, column ``x + col_offset``, one tile after another in ``tiles`` order."""
        tile, window = self.tile, self.window
        if self.accum is None:
            self.accum = np.zeros((weighted.shape[1], *self.weight.shape), np.float32)
        for (y, x), out in zip(tiles, weighted):
            y, x = y + row_offset, x + col_offset
            self.accum[:, y : y + tile, x : x + tile] += out
            self.weight[y : y + tile, x : x + tile] += window

    def result(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """(K, rows, cols) float32: the blended outputs of a finished part of the canvas (a new array).

        Without arguments, the whole canvas is divided in place and returned: the blender is spent.
        """
        assert self.accum is not None, "no tile has been added"
        if rows == slice(None) and cols == slice(None):
            self.accum /= self.weight  # the whole canvas is done with: divide in place
            return self.accum
        return self.accum[:, rows, cols] / self.weight[rows, cols]

    def shift(self, rows: int) -> None:
        """Drop the first ``rows`` canvas rows: the rest move up, fresh zero rows come in at the bottom."""
        if rows <= 0:
            return
        assert self.accum is not None
        for array in (self.accum, self.weight):
            keep = array.shape[-2] - rows
            if keep > 0:
                array[..., :keep, :] = array[..., rows:, :]
            array[..., max(keep, 0):, :] = 0
