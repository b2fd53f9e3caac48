"""Synthetic cell images with known instance labels, for tests, CI and benchmarks.

Bright, slightly textured ellipses (some touching) on a dark noisy background: the look of
fluorescence nuclei, with the ground truth known exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["synthetic_cells", "write_synthetic_dataset"]


def synthetic_cells(height: int, width: int, n_cells: int | None = None, radius: tuple[float, float] = (6, 14),
                    seed: int = 0, touching: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """An (H, W) uint8 image and its (H, W) uint16/uint32 instance labels.

    ``n_cells`` defaults to a density of about one cell per 1,600 pixels; ``touching`` is the
    fraction of cells placed right next to the previous one.
    """
    rng = np.random.default_rng(seed)
    if n_cells is None:
        n_cells = max(1, height * width // 1600)
    labels = np.zeros((height, width), np.uint32)
    yy, xx = np.mgrid[0:height, 0:width] if height * width <= 4_000_000 else (None, None)
    placed = 0
    prev = None
    for _ in range(n_cells * 4):
        if placed >= n_cells:
            break
        ry, rx = rng.uniform(*radius, size=2)
        if prev is not None and rng.random() < touching:
            cy, cx = prev[0] + rng.choice([-1, 1]) * (prev[2] + ry) * 0.95, prev[1]
        else:
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        y0, y1 = int(max(cy - ry - 1, 0)), int(min(cy + ry + 2, height))
        x0, x1 = int(max(cx - rx - 1, 0)), int(min(cx + rx + 2, width))
        if y1 <= y0 or x1 <= x0:
            continue
        if yy is not None:
            sy, sx = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
        else:
            sy, sx = np.mgrid[y0:y1, x0:x1]
        inside = ((sy - cy) / ry) ** 2 + ((sx - cx) / rx) ** 2 <= 1
        window = labels[y0:y1, x0:x1]
        if not inside.any() or (window[inside] != 0).any():
            continue
        placed += 1
        window[inside] = placed
        prev = (cy, cx, ry)
    image = rng.normal(20, 5, (height, width))
    image[labels > 0] += 120 + rng.normal(0, 10, int((labels > 0).sum()))
    image = np.clip(image, 0, 255).astype(np.uint8)
    out_dtype = np.uint16 if placed <= 65535 else np.uint32
    return image, labels.astype(out_dtype)


def write_synthetic_dataset(folder: str | os.PathLike, n_images: int = 4, size: tuple[int, int] = (128, 160),
                            seed: int = 0) -> tuple[Path, Path]:
    """Write ``images/cell_XXXXX.png`` and ``labels/cell_XXXXX_label.tiff`` pairs; returns the two folders."""
    import cv2
    import tifffile

    folder = Path(folder)
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        image, label = synthetic_cells(*size, seed=seed + i)
        cv2.imwrite(str(images / f"cell_{i:05d}.png"), image)
        tifffile.imwrite(labels / f"cell_{i:05d}_label.tiff", label, compression="zlib")
    return images, labels
