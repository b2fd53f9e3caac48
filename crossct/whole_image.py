"""One image held whole: normalise -> tile + run network -> blend, to the network's outputs.

The bottom of the inference line: :mod:`crossct.pipeline` post-processes these outputs for an
image that fits, and the whole-slide paths (:mod:`crossct.blocks`, :mod:`crossct.dask_blocks`)
build on the same steps (:class:`Timings`, :func:`tiling_for`) block by block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from .config import ModelSpec, TilingConfig
from .normalize import normalize_image
from .predictors import Predictor
from .tiling import announce_tiles, sliding_window, tile_total

__all__ = ["predict_outputs", "tiling_for", "Timings"]


@dataclass
class Timings:
    """Seconds spent in each step of one :func:`crossct.pipeline.segment` call."""

    normalize: float = 0.0
    model: float = 0.0
    postprocess: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def tiling_for(predictor: Predictor, tiling: TilingConfig) -> TilingConfig:
    """``tiling`` with the batch size for the predictor's device (GPU: ``batch_size``, CPU: ``cpu_batch_size``)."""
    if getattr(predictor, "on_gpu", False) or tiling.batch_size == tiling.cpu_batch_size:
        return tiling
    return replace(tiling, batch_size=tiling.cpu_batch_size)


def predict_outputs(image: np.ndarray, predictor: Predictor, spec: ModelSpec | None = None,
                    timings: Timings | None = None) -> np.ndarray:
    """(H, W, C) raw image -> (5, H, W) float32 blended network outputs."""
    spec = spec or predictor.spec
    timings = timings if timings is not None else Timings()
    t0 = time.perf_counter()
    x = normalize_image(image, spec.normalize, channels_first=True)
    t1 = time.perf_counter()
    tiling = tiling_for(predictor, spec.tiling)
    announce_tiles(predictor, tile_total(x.shape[1], x.shape[2], tiling))
    outputs = sliding_window(x, predictor.predict, tiling, out_channels=len(spec.output_channels),
                             concurrency=getattr(predictor, "concurrent_calls", 1))
    timings.normalize += t1 - t0
    timings.model += time.perf_counter() - t1
    return outputs
