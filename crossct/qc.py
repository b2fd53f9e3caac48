"""A quality-control contact sheet for a batch: every image as a thumbnail with its cell outlines
and count, the most unusual images first, so a person can scan hundreds of results in a minute.

"Unusual" is the larger of two robust z-scores over the batch: of log(1 + cell count) and of
log(1 + median cell area), each ``|x - median| / (1.4826 MAD)``.  An image with far fewer or far
more cells than its neighbours, or with cells of another size (over- or under-segmentation, a
blank or saturated field), sorts to the top; failed images come before everything.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import write_atomically

__all__ = ["QCEntry", "qc_entry", "failed_entry", "unusualness", "contact_sheet", "write_contact_sheet"]

THUMBNAIL = 160  # px, longer side: 500 thumbnails make a sheet of about 4,000 x 4,500 px
CAPTION = 30  # px of text under each thumbnail
MARGIN = 4
# Robust z above which a thumbnail gets a red frame; the MAD floor (in log units, about 10 %)
# keeps a batch of near-identical images from flagging tiny differences.
FLAG_Z = 3.0
MIN_SPREAD = 0.1
OUTLINE_RGB = (255, 64, 0)


@dataclass(frozen=True)
class QCEntry:
    """One image on the sheet: its name, a (h, w, 3) uint8 RGB thumbnail with outlines, the
    cell count and median cell area (px), or the reason it failed."""

    name: str
    thumbnail: np.ndarray | None
    cells: int = 0
    median_area: float = 0.0
    error: str = ""


def _thumbnail(image: np.ndarray, labels: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) uint8: the image shrunk to ``size`` on its longer side, normalised like the
    overlays, with the outlines of the shrunk labels drawn on it."""
    import cv2
    from skimage.segmentation import find_boundaries

    from .normalize import normalize_image

    height, width = labels.shape
    scale = min(1.0, size / max(height, width))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    if image.ndim == 2:
        image = image[:, :, None]
    # Subsample a whole slide first (to ~4x the thumbnail) so no full-size float copy is made.
    step = max(1, max(height, width) // (4 * max(h, w)))
    small = np.ascontiguousarray(image[::step, ::step, :3]).astype(np.float32)
    small = cv2.resize(small, (w, h), interpolation=cv2.INTER_AREA)
    rgb = (normalize_image(small.reshape(h, w, -1)) * 255).astype(np.uint8)
    # Nearest-neighbour labels by index: exact for any label value (a float resize is not above 2**24).
    rows = np.minimum(((np.arange(h) + 0.5) * height / h).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * width / w).astype(np.int64), width - 1)
    rgb[find_boundaries(labels[np.ix_(rows, cols)], mode="inner")] = OUTLINE_RGB
    return rgb


def qc_entry(name: str, image: np.ndarray, labels: np.ndarray, size: int = THUMBNAIL) -> QCEntry:
    """The sheet's entry for one segmented image (keeps only the thumbnail, not the image)."""
    labels = np.asarray(labels)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return QCEntry(name, _thumbnail(np.asarray(image), labels, size), int(areas.size),
                   float(np.median(areas)) if areas.size else 0.0)


def failed_entry(name: str, reason: str) -> QCEntry:
    return QCEntry(name, None, error=reason)


def _robust_z(values: np.ndarray) -> np.ndarray:
    if values.size < 3:
        return np.zeros_like(values)
    median = np.median(values)
    spread = max(1.4826 * float(np.median(np.abs(values - median))), MIN_SPREAD)
    return np.abs(values - median) / spread


def unusualness(entries: Sequence[QCEntry]) -> np.ndarray:
    """Per entry, the larger robust z-score of log(1 + cells) and log(1 + median area) among the
    segmented entries; ``inf`` for failed ones."""
    ok = np.array([not e.error for e in entries], bool)
    scores = np.full(len(entries), np.inf)
    cells = np.log1p([e.cells for e, good in zip(entries, ok) if good])
    areas = np.log1p([e.median_area for e, good in zip(entries, ok) if good])
    scores[ok] = np.maximum(_robust_z(cells), _robust_z(areas))
    return scores


def contact_sheet(entries: Sequence[QCEntry], size: int = THUMBNAIL, columns: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB sheet: a title line, then one tile per entry, most unusual first
    (stable: ties keep the batch's order), red-framed when flagged, with name, cell count, median
    area (px) and robust z underneath."""
    import cv2

    scores = unusualness(entries)
    order = sorted(range(len(entries)), key=lambda i: -scores[i])
    n = len(entries)
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / columns))
    tile_w, tile_h = size + 2 * MARGIN, size + CAPTION + 2 * MARGIN
    title_h = 28
    sheet = np.full((title_h + rows * tile_h, max(columns * tile_w, 760), 3), 32, np.uint8)
    flagged = int(np.sum(scores > FLAG_Z))
    font = cv2.FONT_HERSHEY_SIMPLEX
    title = (f"CrossCT QC: {n} images, most unusual first; {flagged} flagged (red: failed, or robust z > {FLAG_Z:g}); "
             "px: median cell area")
    cv2.putText(sheet, title, (6, 19), font, 0.45, (235, 235, 235), 1, cv2.LINE_AA)
    for slot, i in enumerate(order):
        entry, score = entries[i], scores[i]
        y, x = title_h + (slot // columns) * tile_h, (slot % columns) * tile_w
        if score > FLAG_Z:
            sheet[y : y + tile_h, x : x + tile_w] = (150, 20, 20)
        if entry.thumbnail is not None:
            th, tw = entry.thumbnail.shape[:2]
            oy, ox = y + MARGIN + (size - th) // 2, x + MARGIN + (size - tw) // 2
            sheet[oy : oy + th, ox : ox + tw] = entry.thumbnail
            lines = [entry.name, f"{entry.cells} cells, {entry.median_area:.0f} px, z {score:.1f}"]
        else:
            lines = [entry.name, f"FAILED: {entry.error}"]
        for k, text in enumerate(lines):
            text = text if len(text) <= size // 6 else text[: size // 6 - 1] + "~"
            cv2.putText(sheet, text, (x + MARGIN, y + MARGIN + size + 12 + 13 * k), font, 0.35,
                        (235, 235, 235), 1, cv2.LINE_AA)
    return sheet


def write_contact_sheet(path: str | os.PathLike, entries: Sequence[QCEntry], size: int = THUMBNAIL) -> Path:
    """Write :func:`contact_sheet` as PNG, atomically."""
    import cv2

    ok, data = cv2.imencode(".png", contact_sheet(entries, size)[:, :, ::-1])
    if not ok:
        raise OSError(f"cannot encode the QC sheet {path}")
    return write_atomically(path, lambda fh: fh.write(data.tobytes()))
