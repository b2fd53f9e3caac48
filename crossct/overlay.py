"""PNG previews: the normalised image with cell outlines drawn on it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import write_atomically
from .normalize import normalize_image

__all__ = ["overlay_image", "write_overlay"]

OUTLINE_RGB = (255, 64, 0)


def overlay_image(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(H, W, C) image + (H, W) labels -> (H, W, 3) uint8 RGB with outlines in orange."""
    from skimage.segmentation import find_boundaries

    rgb = (normalize_image(image) * 255).astype(np.uint8)
    edges = find_boundaries(labels, mode="inner")
    rgb[edges] = OUTLINE_RGB
    return rgb


def write_overlay(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> Path:
    """Write the preview as PNG, atomically."""
    import cv2

    path = Path(path)
    ok, data = cv2.imencode(".png", overlay_image(image, labels)[:, :, ::-1])
    if not ok:
        raise OSError(f"cannot encode overlay for {path}")
    return write_atomically(path, lambda fh: fh.write(data.tobytes()))
