"""Flip test-time augmentation as a predictor: every batch of tiles is run with its horizontal,
vertical and double flips, and the outputs, flipped back, are averaged.

As a predictor wrapper it serves every path that calls a network (whole images, blocks of whole
slides, Dask workers) with no change to tiling.  Averaging is sound for all five outputs: class
probabilities and both Scherr distance maps are per-pixel quantities that flip with the image.
The four views of a batch go through the network in one call (4 x the tiles per call).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .tiling import announce_tiles

__all__ = ["FlipAveraging", "with_test_time"]

# (flip rows, flip columns) of each view.
_VIEWS = ((False, False), (False, True), (True, False), (True, True))


def _flip(batch: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    if rows:
        batch = batch[:, :, ::-1]
    if cols:
        batch = batch[:, :, :, ::-1]
    return batch


class FlipAveraging:
    """A predictor whose ``predict`` averages ``inner.predict`` over the 4 flips of each batch."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.description = f"{getattr(inner, 'description', type(inner).__name__)} + flip averaging"

    def __getattr__(self, name: str) -> Any:  # spec, on_gpu, concurrent_calls, ... of the inner predictor
        return getattr(self.inner, name)

    def expect_tiles(self, tiles: int) -> None:
        """A pass of ``tiles`` tiles is ``len(_VIEWS)`` times as many for the inner predictor."""
        announce_tiles(self.inner, tiles * len(_VIEWS))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 -> (B, 5, H, W) float32, the mean over the 4 flipped views."""
        n = batch.shape[0]
        views = np.concatenate([_flip(batch, r, c) for r, c in _VIEWS], axis=0)
        outputs = self.inner.predict(np.ascontiguousarray(views))
        mean = np.zeros((n, *outputs.shape[1:]), np.float32)
        for i, (r, c) in enumerate(_VIEWS):
            mean += _flip(outputs[i * n:(i + 1) * n], r, c)
        mean *= np.float32(1.0 / len(_VIEWS))
        return mean


def with_test_time(predictor: Any, flips: bool) -> Any:
    """``predictor`` wrapped for flip averaging when ``flips`` (never twice)."""
    if flips and not isinstance(predictor, FlipAveraging):
        return FlipAveraging(predictor)
    return predictor
