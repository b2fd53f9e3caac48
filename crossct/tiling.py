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

__all__ = ["tile_starts", "tile_grid", "blending_window", "sliding_window", "PredictBatch"]

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
) -> np.ndarray:
    """Run ``predict_batch`` over tiles of ``image`` and blend the results.

    Parameters
    ----------
    image : (C, H, W) float32, any H and W >= 1 (padded with zeros up to one tile when smaller).
    predict_batch : maps (B, C, t, t) float32 to (B, K, t, t) float32.
    config : tile size, overlap, blending window and batch size.
    out_channels : K, when known in advance (otherwise taken from the first batch).

    Returns
    -------
    (K, H, W) float32: the weighted mean of every tile's output at each pixel.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    _, height, width = image.shape
    tile = config.tile_size
    ph, pw = max(height, tile), max(width, tile)
    if (ph, pw) != (height, width):
        padded = np.zeros((image.shape[0], ph, pw), dtype=np.float32)
        padded[:, :height, :width] = image
        image = padded
    window = blending_window(tile, config.blending, config.sigma_scale)
    grid = tile_grid(ph, pw, tile, config.stride)

    accum: np.ndarray | None = None
    weight = np.zeros((ph, pw), np.float32)
    for batch in _batches(grid, config.batch_size):
        tiles = np.stack([image[:, y : y + tile, x : x + tile] for y, x in batch]).astype(np.float32, copy=False)
        outputs = np.asarray(predict_batch(tiles))
        if outputs.shape[0] != len(batch) or outputs.shape[2:] != (tile, tile):
            raise ValueError(
                f"predictor returned shape {outputs.shape} for a batch of shape {tiles.shape}; "
                f"expected ({len(batch)}, K, {tile}, {tile})"
            )
        if accum is None:
            k = out_channels or outputs.shape[1]
            accum = np.zeros((k, ph, pw), np.float32)
        for (y, x), out in zip(batch, outputs):
            accum[:, y : y + tile, x : x + tile] += out * window
            weight[y : y + tile, x : x + tile] += window
    assert accum is not None  # the grid always has at least one tile
    accum /= weight
    return accum[:, :height, :width]
