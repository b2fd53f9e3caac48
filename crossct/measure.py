"""Per-cell measurements of a label image, and one summary line per image of a batch, as CSV.

Every number is scikit-image's ``regionprops_table``; this module only chooses the properties,
gives the columns plain names and writes the files (atomically, like the labels).

>>> table = measure_cells(labels, image)           # doctest: +SKIP
>>> pandas.DataFrame(table)                          # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .io import write_atomically

__all__ = [
    "CELL_PROPERTIES",
    "COLUMN_NAMES",
    "SUMMARY_COLUMNS",
    "measure_cells",
    "summary_row",
    "write_table_csv",
]

# The regionprops properties measured for every cell; intensities only when an image is given.
CELL_PROPERTIES: tuple[str, ...] = (
    "label", "area", "centroid", "bbox", "equivalent_diameter_area", "eccentricity", "solidity",
)
INTENSITY_PROPERTIES: tuple[str, ...] = ("intensity_mean", "intensity_max")

# regionprops_table's column -> ours.  Rows and columns are in pixels; the bounding box's max is
# exclusive (a cell in rows 3..7 has bbox_min_y 3, bbox_max_y 8), as in scikit-image.
COLUMN_NAMES: dict[str, str] = {
    "centroid-0": "centroid_y",
    "centroid-1": "centroid_x",
    "bbox-0": "bbox_min_y",
    "bbox-1": "bbox_min_x",
    "bbox-2": "bbox_max_y",
    "bbox-3": "bbox_max_x",
    "equivalent_diameter_area": "equivalent_diameter",
}

SUMMARY_COLUMNS: tuple[str, ...] = ("image", "height", "width", "cells", "median_area", "seconds", "error")


def _column_name(name: str) -> str:
    if name in COLUMN_NAMES:
        return COLUMN_NAMES[name]
    for prop, short in (("intensity_mean-", "mean_intensity_ch"), ("intensity_max-", "max_intensity_ch")):
        if name.startswith(prop):
            return short + name.removeprefix(prop)
    return name


def measure_cells(labels: np.ndarray, image: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Measure every cell of ``labels``.

    Parameters
    ----------
    labels : (H, W) integer instance labels, 0 background.
    image : (H, W) or (H, W, C) image the labels belong to, in its own dtype and units; gives
        ``mean_intensity_ch<c>`` and ``max_intensity_ch<c>`` for each channel c (0-based).

    Returns
    -------
    One array per column, one row per cell in label order: ``label, area, centroid_y, centroid_x,
    bbox_min_y, bbox_min_x, bbox_max_y, bbox_max_x, equivalent_diameter, eccentricity, solidity``
    and the intensity columns (see :data:`COLUMN_NAMES` for the regionprops names they come from).
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer array, got shape {labels.shape} and dtype {labels.dtype}")
    properties = CELL_PROPERTIES
    if image is not None:
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[:2] != labels.shape:
            raise ValueError(f"image (shape {image.shape}) must be (H, W) or (H, W, C) with (H, W) = "
                             f"the labels' shape {labels.shape}")
        properties += INTENSITY_PROPERTIES
    table = regionprops_table(labels, intensity_image=image, properties=properties)
    return {_column_name(name): values for name, values in table.items()}


def summary_row(image_name: str, labels: np.ndarray, seconds: float | None = None, error: str = "") -> dict:
    """One line of ``summary.csv``: the image, its size, its cell count and median cell area (px)."""
    labels = np.asarray(labels)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return {
        "image": image_name,
        "height": labels.shape[0],
        "width": labels.shape[1],
        "cells": int(areas.size),
        "median_area": float(np.median(areas)) if areas.size else 0.0,
        "seconds": "" if seconds is None else round(float(seconds), 3),
        "error": error,
    }


def write_table_csv(path: str | os.PathLike, table: Mapping[str, Sequence] | Iterable[Mapping],
                    columns: Sequence[str] | None = None) -> Path:
    """Write columns (``{name: values}``, as :func:`measure_cells` returns) or rows (dicts) as CSV, atomically."""
    text = io.StringIO()
    if isinstance(table, Mapping):
        columns = list(columns or table)
        rows: Iterable = zip(*(np.asarray(table[c]).tolist() for c in columns))
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        rows = list(table)
        columns = list(columns or (rows[0] if rows else []))
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    data = text.getvalue().encode()
    return write_atomically(path, lambda fh: fh.write(data))
