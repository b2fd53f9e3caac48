"""segment(image, predictor): the inference chain, in order.

read -> normalise -> tile + run network -> blend -> post-process -> labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .config import ModelSpec, TilingConfig
from .normalize import normalize_image
from .postprocess import postprocess
from .predictors import Predictor
from .tiling import sliding_window

__all__ = ["segment", "segment_stages", "predict_outputs", "tiling_for", "Timings"]


@dataclass
class Timings:
    """Seconds spent in each step of one :func:`segment` call."""

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
    outputs = sliding_window(x, predictor.predict, tiling, out_channels=len(spec.output_channels),
                             concurrency=getattr(predictor, "concurrent_calls", 1))
    timings.normalize += t1 - t0
    timings.model += time.perf_counter() - t1
    return outputs


def segment(image: np.ndarray, predictor: Predictor, spec: ModelSpec | None = None,
            timings: Timings | None = None) -> np.ndarray:
    """Segment one image.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array as returned by :func:`crossct.io.read_image`.
    predictor : an ONNX or PyTorch predictor.
    spec : overrides ``predictor.spec`` (e.g. other post-processing thresholds).
    timings : filled with the seconds spent per step, when given.

    Returns
    -------
    (H, W) int32 instance labels, 0 background, 1..N cells (uint32 for images segmented block by
    block, see :mod:`crossct.blocks`).
    """
    return segment_stages(image, predictor, spec, timings)()


def segment_stages(image: np.ndarray, predictor: Predictor, spec: ModelSpec | None = None,
                   timings: Timings | None = None) -> Callable[[], np.ndarray]:
    """:func:`segment` in two stages: runs normalisation + network now and returns the rest
    (post-processing) as a function, so a batch can post-process one image on another thread
    while the next goes through the network.  Images segmented block by block are done in the
    first stage (their post-processing is interleaved with the network already)."""
    spec = spec or predictor.spec
    timings = timings if timings is not None else Timings()
    if image.ndim == 2:
        image = image[:, :, None]
    from .blocks import needs_blocks, segment_blocks

    if needs_blocks(image.shape, spec):
        labels = segment_blocks(image, predictor, spec, timings)
        return lambda: labels
    outputs = predict_outputs(image, predictor, spec, timings)

    def finish() -> np.ndarray:
        t0 = time.perf_counter()
        labels = postprocess(outputs, spec.postprocess)
        timings.postprocess += time.perf_counter() - t0
        return labels

    return finish
