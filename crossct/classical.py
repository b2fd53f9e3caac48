"""A classical baseline: Otsu threshold + distance-transform watershed (scikit-image).

No learning: it is the floor every trained model must beat, and a sanity check of the evaluation.
The steps, in order:

1. grayscale: mean of the channels of the (normalised) image, rescaled to its 1st-99th percentiles
   and smoothed (Gaussian);
2. Otsu threshold; the polarity is chosen so that the foreground is the minority class
   (bright nuclei on a dark background and dark nuclei on a bright background both work);
3. small holes filled, objects smaller than ``min_size`` removed;
4. Euclidean distance transform of the mask, smoothed like the image (sigma 1, or 2 on large images);
5. seeds = local maxima at least ``min_distance`` apart, where ``min_distance`` follows the typical
   object radius (median of the largest inscribed radius of each connected component);
6. watershed of the negated distance from the seeds, inside the mask; a component that got no
   seed keeps its own label.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

__all__ = ["segment_classical"]

logger = logging.getLogger(__name__)


def _grayscale(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) -> (H, W) float32 in [0, 1], by channel mean and 1-99 % percentiles."""
    image = np.asarray(image)
    if image.ndim == 3:
        gray = image.astype(np.float32).mean(axis=2)
    elif image.ndim == 2:
        gray = image.astype(np.float32)
    else:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    gray = np.nan_to_num(gray, nan=0.0, posinf=0.0, neginf=0.0)
    sample = gray.ravel()[:: max(1, gray.size // 2_000_000)]
    lo, hi = np.percentile(sample, [1.0, 99.0])
    if hi - lo <= 0:
        lo, hi = float(gray.min()), float(gray.max())
    if hi - lo <= 0:
        return np.zeros(gray.shape, np.float32)
    return np.clip((gray - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def _fill_small_holes(mask: np.ndarray, max_hole: int) -> np.ndarray:
    """Fill the holes of ``mask`` (background regions not touching the border) of at most ``max_hole`` pixels."""
    holes = ndi.binary_fill_holes(mask) & ~mask
    if not holes.any():
        return mask
    hole_labels, _ = ndi.label(holes)
    fill = np.bincount(hole_labels.ravel()) <= max_hole
    fill[0] = False
    return mask | fill[hole_labels]


def segment_classical(
    image: np.ndarray,
    *,
    min_size: int = 16,
    max_hole_fraction: float = 0.001,
    min_distance: int | None = None,
    smoothing: float | None = None,
) -> np.ndarray:
    """Segment cells with Otsu + distance-transform watershed.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array of any real dtype, ideally the normalised image
        (:func:`crossct.normalize.normalize_image`); not modified.
    min_size : objects smaller than this many pixels (after hole filling) are removed.
    max_hole_fraction : holes are filled up to this fraction of the image area (at least 64
        pixels); larger enclosed regions, such as the gaps of a tissue's nuclear network, stay
        background.
    min_distance : minimum distance between seeds in pixels; None derives it from the typical
        object radius, ``max(3, round(0.75 * median inscribed radius))``.
    smoothing : sigma of the Gaussian applied to the grayscale image before thresholding and to
        the distance map before seeding (0 disables); None picks 1 for images under 700 pixels
        on their short side and 2 otherwise (chosen on the train split of the project data).

    Returns
    -------
    labels : (H, W) int32, 0 background, cells 1..N (sequential).

    Examples
    --------
    >>> yy, xx = np.mgrid[:64, :64]
    >>> img = (((yy - 20) ** 2 + (xx - 20) ** 2 < 64) | ((yy - 44) ** 2 + (xx - 44) ** 2 < 64)).astype(np.float32)
    >>> int(segment_classical(img).max())
    2
    """
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import label as cc_label
    from skimage.segmentation import relabel_sequential, watershed

    gray = _grayscale(image)
    if smoothing is None:
        smoothing = 1.0 if min(gray.shape) < 700 else 2.0
    if smoothing > 0:
        gray = gaussian(gray, sigma=smoothing, preserve_range=True).astype(np.float32)
    if float(gray.max()) - float(gray.min()) <= 1e-6:
        logger.debug("constant image: no cells")
        return np.zeros(gray.shape, np.int32)
    threshold = threshold_otsu(gray)
    mask = gray > threshold
    if np.count_nonzero(mask) > mask.size / 2:
        mask = ~mask  # dark objects on a bright background: the foreground is the minority class
    max_hole = max(64, int(max_hole_fraction * mask.size))
    mask = _fill_small_holes(mask, max_hole)
    components = cc_label(mask, connectivity=1)
    if min_size > 1:
        small = np.bincount(components.ravel()) < min_size
        small[0] = False
        if small.any():
            mask = mask & ~small[components]
            components = cc_label(mask, connectivity=1)
    if not mask.any():
        return np.zeros(gray.shape, np.int32)
    distance = ndi.distance_transform_edt(mask).astype(np.float32)
    if min_distance is None:
        radii = ndi.maximum(distance, components, np.arange(1, int(components.max()) + 1))
        min_distance = max(3, int(round(0.75 * float(np.median(radii)))))
    if smoothing > 0:
        distance = gaussian(distance, sigma=smoothing, preserve_range=True).astype(np.float32)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(gray.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = watershed(-distance, markers, mask=mask).astype(np.int32)
    unseeded = mask & (labels == 0)
    if unseeded.any():  # components without a seed (flat or tiny) keep their own label
        extra = cc_label(unseeded, connectivity=1).astype(np.int32)
        labels = np.where(extra > 0, extra + labels.max(), labels)
    labels = relabel_sequential(labels)[0].astype(np.int32)
    logger.debug("classical: threshold %.3f, min_distance %d, %d cells", threshold, min_distance, labels.max())
    return labels
