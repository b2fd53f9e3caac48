"""segment(image, predictor): the inference chain, in order, and the one place that picks the path.

read -> normalise -> tile + run network -> blend -> post-process -> labels.

An image that fits (:func:`crossct.block_plan.needs_blocks` says no) goes down that line in one
piece (:mod:`crossct.whole_image`, then :mod:`crossct.postprocess`); a larger one goes block by
block (:mod:`crossct.blocks`, following :mod:`crossct.block_plan`).  :mod:`crossct.dask_blocks`
runs the same plan on a Dask cluster and defers to :func:`segment` for images that fit.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from . import blocks
from .block_plan import needs_blocks
from .config import ModelSpec
from .postprocess import postprocess
from .predictors import Predictor
from .whole_image import Timings, predict_outputs, tiling_for

__all__ = ["segment", "segment_stages", "predict_outputs", "tiling_for", "Timings"]


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
    if needs_blocks(image.shape, spec):
        labels = blocks.segment_blocks(image, predictor, spec, timings)
        return lambda: labels
    outputs = predict_outputs(image, predictor, spec, timings)

    def finish() -> np.ndarray:
        t0 = time.perf_counter()
        labels = postprocess(outputs, spec.postprocess)
        timings.postprocess += time.perf_counter() - t0
        return labels

    return finish
