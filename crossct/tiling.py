"""Sliding-window inference: tile grid, tapered blending window, accumulation.

Kept apart from running the network (``predict_batch`` is any callable) and from blending, so
each can be tested with a known function: a "network" returning its input + 1 must come back
stitched exactly, whatever the image size.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
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
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency} must be >= 1")
    _, height, width = image.shape
    tile = config.tile_size
    ph, pw = max(height, tile), max(width, tile)
    if (ph, pw) != (height, width):
        padded = np.zeros((image.shape[0], ph, pw), dtype=np.float32)
        padded[:, :height, :width] = image
        image = padded
    window = blending_window(tile, config.blending, config.sigma_scale)
    batches = list(_batches(tile_grid(ph, pw, tile, config.stride), config.batch_size))

    def run(batch: list[tuple[int, int]]) -> np.ndarray:
        tiles = np.stack([image[:, y : y + tile, x : x + tile] for y, x in batch]).astype(np.float32, copy=False)
        outputs = np.asarray(predict_batch(tiles))
        if outputs.shape[0] != len(batch) or outputs.shape[2:] != (tile, tile):
            raise ValueError(
                f"predictor returned shape {outputs.shape} for a batch of shape {tiles.shape}; "
                f"expected ({len(batch)}, K, {tile}, {tile})"
            )
        return outputs

    accum: np.ndarray | None = None
    weight = np.zeros((ph, pw), np.float32)
    for batch, outputs in zip(batches, _in_order(run, batches, concurrency)):
        if accum is None:
            accum = np.zeros((out_channels or outputs.shape[1], ph, pw), np.float32)
        if not outputs.flags.writeable:
            outputs = outputs.copy()
        outputs *= window  # in place: no temporary per tile
        for (y, x), out in zip(batch, outputs):
            accum[:, y : y + tile, x : x + tile] += out
            weight[y : y + tile, x : x + tile] += window
    assert accum is not None  # the grid always has at least one tile
    accum /= weight
    return accum[:, :height, :width]


def _in_order(fn: Callable[[list], np.ndarray], items: list, concurrency: int) -> Iterator[np.ndarray]:
    """``map(fn, items)``, with up to ``concurrency`` calls running in worker threads.

    At most ``concurrency + 1`` results wait to be consumed, so memory stays bounded however many
    tiles the image has.  On a CPU each call runs the network on one core (ONNX Runtime releases
    the GIL), which beats one call spread over all cores: 10.1 against 11.2 ms per tile on 2 cores
    (benchmarks/README.md).  On a GPU, 2 calls let the host blend one batch while the device runs
    the next.
    """
    if concurrency == 1 or len(items) == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="crossct-tiles") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > concurrency:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an error or an abandoned generator: drop what has not started
            for future in pending:
                future.cancel()
