"""segment(image, predictor): the inference chain, in order, and the one place that picks the path.

read -> normalise -> tile + run network -> blend -> post-process -> labels.

An image that fits (:func:`crossct.block_plan.needs_blocks` says no) goes down that line in one
piece (:mod:`crossct.whole_image`, then :mod:`crossct.postprocess`); a larger one goes block by
block (:mod:`crossct.blocks`, following :mod:`crossct.block_plan`).  :mod:`crossct.dask_blocks`
runs the same plan on a Dask cluster and defers to :func:`segment` for images that fit.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from . import blocks
from .block_plan import needs_blocks
from .config import ModelSpec, SizeConfig
from .postprocess import postprocess, remove_small_and_relabel
from .predictors import Predictor
from .size import area_weighted_diameter, median_diameter, resize_image, resize_labels
from .tta import with_test_time
from .whole_image import Timings, predict_outputs, tiling_for

__all__ = ["segment", "segment_stages", "zoom_factor", "predict_outputs", "tiling_for", "Timings"]

logger = logging.getLogger(__name__)

# Largest image (pixels) that small cells are enlarged to; larger images stay at their own scale.
MAX_ZOOMED_PIXELS = 16_000_000
# Scale of the automatic size's probe: cells up to twice the largest trained size are whole there.
PROBE_FACTOR = 0.5


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
    block at their own scale or reduced, see :mod:`crossct.blocks`).
    """
    return segment_stages(image, predictor, spec, timings)()


def segment_stages(image: np.ndarray, predictor: Predictor, spec: ModelSpec | None = None,
                   timings: Timings | None = None) -> Callable[[], np.ndarray]:
    """:func:`segment` in two stages: runs normalisation + network now and returns the rest
    (post-processing) as a function, so a batch can post-process one image on another thread
    while the next goes through the network.  Images segmented block by block are done in the
    first stage (their post-processing is interleaved with the network already).

    ``spec.test_time.flips`` averages the network over flips; ``spec.size`` rescales images whose
    cells are far from the trained sizes (a given diameter, or one measured by a first pass: that
    pass then completes in the first stage).  Labels always come back at the image's own size.
    """
    spec = spec or predictor.spec
    timings = timings if timings is not None else Timings()
    if image.ndim == 2:
        image = image[:, :, None]
    predictor = with_test_time(predictor, spec.test_time.flips)
    size = spec.size
    if size.diameter > 0:
        return _at_scale(image, _capped(zoom_factor(size.diameter, size), image), predictor, spec, timings)
    if size.auto:
        return _auto_size(image, predictor, spec, timings)
    return _segment_stages(image, predictor, spec, timings)


def _auto_size(image: np.ndarray, predictor: Predictor, spec: ModelSpec, timings: Timings) -> Callable[[], np.ndarray]:
    """Segment at a scale chosen from the cells themselves (see :class:`~crossct.config.SizeConfig`).

    A probe at half scale (a quarter of the pixels) measures the cells first: cells too large
    for the network are shattered at their own scale, which would hide their size, but at half
    scale they are whole.  Too large (by the median diameter, or by the area-weighted one when
    ``max_area_diameter`` is set): segmented at the reference size (measured again there, and
    once more should that disagree by more than 20 %).  Else: segmented at their own scale, and
    again enlarged when those cells turn out too small.
    """
    size = spec.size
    measure, diameter = large_cell_measure(image, predictor, spec, timings)
    if measure is not None:
        reference = size.reference_diameter
        if measure is inner_area_weighted_diameter and size.area_reference_diameter > 0:
            reference = size.area_reference_diameter
        factor = zoom_factor(diameter, size, reference)
        labels, diameter = _labels_at(image, factor, predictor, spec, timings, measure)
        again = zoom_factor(diameter, size, reference) if np.isfinite(diameter) else factor
        logger.debug("large cells: %.1f px at %.3g x", diameter, factor)
        if abs(again - factor) > 0.2 * factor:
            labels, _ = _labels_at(image, again, predictor, spec, timings, measure)
        return lambda: labels
    labels = _segment_stages(image, predictor, spec, timings)()
    diameter = median_diameter(labels)
    if np.isfinite(diameter) and diameter < size.min_diameter:
        factor = _capped(zoom_factor(diameter, size), image)
        if factor != 1.0:
            logger.debug("small cells: %.1f px, again at %.3g x", diameter, factor)
            labels, _ = _labels_at(image, factor, predictor, spec, timings)
    return lambda: labels


def large_cell_measure(image: np.ndarray, predictor: Predictor, spec: ModelSpec,
                        timings: Timings) -> tuple[Callable[[np.ndarray], float] | None, float]:
    """(the size measure by which the probe finds the image's cells too large, the diameter it
    measured), or (None, nan) when they are not: the median diameter above ``max_diameter``, else
    (when set) the area-weighted one of the cells clear of the image's edge above
    ``max_area_diameter``."""
    size = spec.size
    probe = _at_scale(image, PROBE_FACTOR, predictor, spec, timings, keep_scale=True)()
    limits = ((median_diameter, size.max_diameter), (inner_area_weighted_diameter, size.max_area_diameter))
    for measure, limit in limits:
        diameter = measure(probe) / PROBE_FACTOR
        if limit > 0 and np.isfinite(diameter) and diameter > limit:
            return measure, diameter
    return None, float("nan")


def inner_area_weighted_diameter(labels: np.ndarray) -> float:
    """The area-weighted diameter of the cells clear of the image's edge (the large-cell measure
    of ``max_area_diameter``)."""
    # Cells clear of the edge only: a 256-px crop of dense tissue merges at half scale into one
    # clump that fills it (measured: an IHC crop read as 168-px cells, shrunk to 3 cells from 72).
    return area_weighted_diameter(labels, clear_border=True)


def _labels_at(image: np.ndarray, factor: float, predictor: Predictor, spec: ModelSpec,
               timings: Timings, measure: Callable[[np.ndarray], float] = median_diameter) -> tuple[np.ndarray, float]:
    """(labels at the image's size, cell diameter by ``measure`` in the image's pixels) of a
    segmentation of the image rescaled by ``factor``."""
    scaled = _at_scale(image, factor, predictor, spec, timings, keep_scale=True)()
    return _to_image_scale(scaled, image, factor, spec), measure(scaled) / factor


def _at_scale(image: np.ndarray, factor: float, predictor: Predictor, spec: ModelSpec, timings: Timings,
              keep_scale: bool = False) -> Callable[[], np.ndarray]:
    """The two stages of ``image`` rescaled by ``factor``; labels resized back unless ``keep_scale``."""
    if factor == 1.0:
        return _segment_stages(image, predictor, spec, timings)
    finish = _segment_stages(resize_image(image, factor), predictor, spec, timings)
    return finish if keep_scale else (lambda: _to_image_scale(finish(), image, factor, spec))


def _to_image_scale(scaled: np.ndarray, image: np.ndarray, factor: float, spec: ModelSpec) -> np.ndarray:
    """Labels segmented at ``factor`` x the image's scale, back at the image's size.  An enlarged
    image's cells are ``factor**2`` times larger where ``min_size`` was applied: it is applied again
    here so that it means pixels of the user's image at every scale."""
    if factor == 1.0:
        return scaled
    labels = resize_labels(scaled, image.shape[:2])
    if factor > 1.0 and spec.postprocess.min_size > 1:
        labels = remove_small_and_relabel(labels, spec.postprocess.min_size)
    return labels


def _capped(factor: float, image: np.ndarray) -> float:
    """``factor``, enlarging (which multiplies memory and time by factor^2) no further than
    :data:`MAX_ZOOMED_PIXELS`; 1 when that leaves less than 5 %."""
    if factor <= 1.0:
        return factor
    factor = min(factor, max(1.0, (MAX_ZOOMED_PIXELS / (image.shape[0] * image.shape[1])) ** 0.5))
    return 1.0 if factor < 1.05 else factor


def zoom_factor(diameter: float, size: SizeConfig, reference: float | None = None) -> float:
    """The rescaling that brings cells of ``diameter`` px to ``reference`` (default
    ``size.reference_diameter``), within ``[1 / max_zoom, min(max_zoom, max_enlarge)]``; 1 when that
    is within 5 % of 1 (not worth a resampling)."""
    largest = min(size.max_zoom, size.max_enlarge)
    reference = size.reference_diameter if reference is None else reference
    factor = float(np.clip(reference / diameter, 1.0 / size.max_zoom, largest))
    return 1.0 if abs(factor - 1.0) < 0.05 else factor


def _segment_stages(image: np.ndarray, predictor: Predictor, spec: ModelSpec,
                    timings: Timings) -> Callable[[], np.ndarray]:
    """The two stages of one image at its given scale: whole, or block by block."""
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
