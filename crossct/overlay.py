"""PNG previews: the normalised image with cell outlines drawn on it.

Each outline is two-tone: a bright core on the cell's border pixels between two dark edges, so
it stands out on any background (dark fluorescence, pink H&E, white brightfield, a yellow stain)
where a single colour vanishes on some.  Drawn band by band: the preview of a whole slide costs
its own 3 bytes a pixel and the encoded PNG, not float copies of the image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import write_atomically
from .normalize import channel_bounds, normalize_image

__all__ = ["overlay_image", "draw_outlines", "write_overlay", "OUTLINE_CORE_RGB", "OUTLINE_EDGE_RGB"]

OUTLINE_CORE_RGB = (255, 255, 0)  # yellow: the brightest colour that is not white
OUTLINE_EDGE_RGB = (0, 0, 0)
BAND_ROWS = 1024
_CONTEXT = 2  # rows a band needs on each side: the edge is the core dilated by one pixel


def overlay_image(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(H, W, C) image + (H, W) labels -> (H, W, 3) uint8 RGB with two-tone cell outlines.

    The core colour (:data:`OUTLINE_CORE_RGB`) marks each cell's border pixels
    (``find_boundaries(mode="inner")``); the pixels next to it on both sides get the edge colour.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[:2] != labels.shape:
        raise ValueError(f"labels (shape {labels.shape}) must match image (shape {image.shape[:2]})")
    height = image.shape[0]
    bounds = channel_bounds(image)  # measured once, so every band is scaled alike
    out = np.empty(image.shape[:2] + (3,), np.uint8)
    for y0 in range(0, height, BAND_ROWS):
        y1 = min(height, y0 + BAND_ROWS)
        a, b = max(0, y0 - _CONTEXT), min(height, y1 + _CONTEXT)
        rgb = normalize_image(image[a:b], bounds=bounds)
        rgb *= 255
        rgb = draw_outlines(rgb.astype(np.uint8), labels[a:b])
        out[y0:y1] = rgb[y0 - a : y1 - a]
    return out


def draw_outlines(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Draw two-tone outlines of ``labels`` ((H, W) ints) on ``rgb`` ((H, W, 3) uint8, changed in place
    and returned): the core colour on each cell's border pixels, the edge colour beside them."""
    import cv2
    from skimage.segmentation import find_boundaries

    core = find_boundaries(labels, mode="inner")
    edge = cv2.dilate(core.view(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~core
    rgb[edge] = OUTLINE_EDGE_RGB
    rgb[core] = OUTLINE_CORE_RGB
    return rgb


def write_overlay(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> Path:
    """Write the preview as PNG, atomically."""
    import cv2

    path = Path(path)
    preview = overlay_image(image, labels)
    cv2.cvtColor(preview, cv2.COLOR_RGB2BGR, dst=preview)  # the encoder takes BGR; in place, no copy
    ok, data = cv2.imencode(".png", preview)
    del preview
    if not ok:
        raise OSError(f"cannot encode overlay for {path}")
    return write_atomically(path, lambda fh: fh.write(data))
