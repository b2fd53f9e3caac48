"""Network outputs -> instance labels (pure NumPy / SciPy / scikit-image).

``outputs`` is the blended (5, H, W) map: softmax probabilities of background, interior and
boundary, then the cell-distance and neighbour-distance maps (Scherr et al. 2020).

Two methods:

- ``watershed`` (default): seeds where the cell distance minus the squared neighbour distance is
  high (cell centres, cut apart where cells touch), flooded over the inverted cell distance inside
  the predicted foreground.  Foreground islands that got no seed become cells of their own, so a
  small or faint cell is not lost for want of a distance peak.
- ``threshold``: the organisers' baseline, ``P(interior) > 0.5`` + connected components, for
  comparison.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .config import PostprocessConfig

__all__ = ["postprocess", "watershed_labels", "threshold_labels", "remove_small", "relabel_sequential"]

BACKGROUND, INTERIOR, BOUNDARY, CELL_DISTANCE, NEIGHBOR_DISTANCE = range(5)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..N in order of first appearance of their value; int32/int64 output."""
    values = np.unique(labels)
    values = values[values != 0]
    dtype = np.int32 if values.size < np.iinfo(np.int32).max else np.int64
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=dtype)
    lut[values] = np.arange(1, values.size + 1, dtype=dtype)
    return lut[labels]


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero out objects with fewer than ``min_size`` pixels (returns a new array)."""
    if min_size <= 1 or labels.max() == 0:
        return labels.copy()
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    out = labels.copy()
    out[small[labels]] = 0
    return out


def threshold_labels(outputs: np.ndarray, config: PostprocessConfig = PostprocessConfig()) -> np.ndarray:
    """The organisers' post-processing: interior probability > threshold, holes filled, small removed, labelled.

    Returns (H, W) int32 labels.
    """
    from skimage import measure, morphology

    interior = outputs[INTERIOR] > config.interior_threshold
    interior = morphology.remove_small_holes(interior, max_size=max(config.min_size, 1))
    labels = measure.label(interior, connectivity=1).astype(np.int32)
    return relabel_sequential(remove_small(labels, config.min_size))


def watershed_labels(outputs: np.ndarray, config: PostprocessConfig = PostprocessConfig()) -> np.ndarray:
    """Distance-map watershed (Scherr et al. 2020) with the foreground mask from the class probabilities.

    Parameters
    ----------
    outputs : (5, H, W) float32, channels as in :data:`crossct.config.OUTPUT_CHANNELS`.
    config : thresholds (tuned per model and stored with the weights).

    Returns
    -------
    (H, W) int32 labels, 0 background, 1..N cells.
    """
    from skimage.segmentation import watershed

    cell = outputs[CELL_DISTANCE]
    if config.smooth_sigma > 0:
        cell = ndi.gaussian_filter(cell, config.smooth_sigma)
    neighbor = outputs[NEIGHBOR_DISTANCE]
    mask = (outputs[INTERIOR] + outputs[BOUNDARY]) > config.mask_threshold
    seed_map = ((cell - np.clip(neighbor, 0, None) ** 2) > config.seed_threshold) & mask
    structure = ndi.generate_binary_structure(2, 1)
    seeds, n_seeds = ndi.label(seed_map, structure=structure)
    seeds = remove_small(seeds, config.min_seed_size)
    labels = watershed(-cell, markers=seeds, mask=mask) if n_seeds else np.zeros(cell.shape, np.int32)
    labels = labels.astype(np.int32, copy=False)

    # Foreground islands the flooding could not reach (no seed of their own) become cells.
    orphans, n_orphans = ndi.label(mask & (labels == 0), structure=structure)
    if n_orphans:
        orphans = remove_small(orphans, config.min_size)
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    return relabel_sequential(remove_small(labels, config.min_size))


def postprocess(outputs: np.ndarray, config: PostprocessConfig = PostprocessConfig()) -> np.ndarray:
    """Dispatch to the configured method; (5, H, W) float32 -> (H, W) int32 labels."""
    if outputs.ndim != 3 or outputs.shape[0] != 5:
        raise ValueError(f"outputs must be (5, H, W), got shape {outputs.shape}")
    if config.method == "watershed":
        return watershed_labels(outputs, config)
    if config.method == "threshold":
        return threshold_labels(outputs, config)
    raise ValueError(f"post-processing method {config.method!r} is not one of ['watershed', 'threshold']")
