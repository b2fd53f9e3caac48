"""Cell size: the median cell diameter of a label image, and rescaling an image to a cell size.

Training uses :func:`median_diameter` to draw scale augmentation over a range of cell sizes
(:mod:`crossct.train.data`); inference uses it to estimate the cell size of an image from a first
segmentation and, when that size is outside the range the network was trained for, to segment
the image again at a scale inside it (:mod:`crossct.pipeline`).

A cell's diameter is that of the disk of the same area, ``sqrt(4 area / pi)`` (scikit-image's
``equivalent_diameter_area``), computed for all cells at once from one ``bincount``.
:func:`area_weighted_diameter` is the size of the cells that hold most of the segmented area: a few
large cells shattered among many small fragments (noisy whole-cell fluorescence) hide from the
plain median, not from it.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["cell_diameters", "median_diameter", "area_weighted_diameter", "resize_image", "resize_labels"]


def cell_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent diameter of every cell of an instance label map.

    Parameters
    ----------
    labels : (H, W) integer array, 0 = background.

    Returns
    -------
    (N,) float64, one value per label present (in label order).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size == 0:
        return np.zeros(0)
    areas = np.bincount(labels.ravel().astype(np.int64, copy=False))[1:]
    areas = areas[areas > 0]
    return np.sqrt(4.0 * areas / math.pi)


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter of the cells in ``labels`` (NaN when there are none).

    >>> import numpy as np
    >>> labels = np.zeros((20, 20), np.uint16); labels[2:12, 2:12] = 1
    >>> round(median_diameter(labels), 2)
    11.28
    """
    diameters = cell_diameters(labels)
    return float(np.median(diameters)) if diameters.size else float("nan")


def area_weighted_diameter(labels: np.ndarray, clear_border: bool = False) -> float:
    """Diameter of the cell that holds the median segmented pixel (NaN when there are no cells).

    Half of the segmented area lies in cells at least this wide.  ``clear_border``: of the cells
    clear of the image's edge only (scikit-image's ``clear_border``): a cell cut by the edge has no
    size to measure, and dense tissue merged into one clump at a coarse scale reaches it.  Three
    4-px fragments beside one 20 x 20 cell: the median diameter is that of a fragment, this one
    that of the cell.

    >>> import numpy as np
    >>> labels = np.zeros((40, 40), np.uint16); labels[2:22, 2:22] = 1
    >>> labels[30, 0:4], labels[34, 0:4], labels[38, 0:4] = 2, 3, 4
    >>> round(median_diameter(labels), 2), round(area_weighted_diameter(labels), 2)
    (2.26, 22.57)
    """
    if clear_border:
        from skimage.segmentation import clear_border as clear

        labels = clear(np.asarray(labels))
    diameters = cell_diameters(labels)
    if not diameters.size:
        return float("nan")
    order = np.argsort(diameters)
    area = np.cumsum(diameters[order] ** 2)  # proportional to each cell's area
    return float(diameters[order][np.searchsorted(area, 0.5 * area[-1])])


def _scaled_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    return max(1, int(round(shape[0] * factor))), max(1, int(round(shape[1] * factor)))


def resize_image(image: np.ndarray, factor: float) -> np.ndarray:
    """(H, W[, C]) image resized by ``factor`` (area averaging when shrinking, linear when growing).

    Returns a new float32 or same-dtype array of shape ``(round(H f), round(W f)[, C])``.
    """
    height, width = _scaled_shape(image.shape, factor)
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    array = np.ascontiguousarray(image)
    if array.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        array = array.astype(np.float32)
    channels = array.shape[2] if array.ndim == 3 else None
    if channels is not None and channels > 4:  # OpenCV resizes at most 4 channels at once
        return np.stack([resize_image(array[..., c], factor) for c in range(channels)], axis=-1)
    out = cv2.resize(array, (width, height), interpolation=interpolation)
    return out.reshape(height, width, *array.shape[2:])


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels resized to ``shape`` by (centre-aligned) nearest neighbour, dtype kept.

    Index arithmetic rather than ``cv2.resize``: OpenCV's nearest neighbour does not take 32-bit
    unsigned labels.
    """
    labels = np.asarray(labels)
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]
