"""Cell outlines as polygons, for Fiji's ROI Manager (an ImageJ ROI zip) and QuPath (GeoJSON).

Coordinates follow ImageJ's and QuPath's convention: x to the right, y down, and the pixel in row
``r``, column ``c`` is the square ``[c, c + 1) x [r, r + 1)`` (its centre at ``(c + 0.5, r + 0.5)``).
A cell's outline is scikit-image's marching-squares contour (``find_contours``) of its mask at level
0.5: it runs halfway between the centres of inside and outside pixels and never through a centre,
so filling the polygon by the pixel-centre rule of ImageJ and QuPath gives back exactly the cell's
pixels.  Holes are inner rings; a cell in several 4-connected pieces becomes several polygons
(an ImageJ composite ROI, a GeoJSON MultiPolygon); a cell touching the image border is closed
along the border.

The ImageJ zip needs ``roifile`` (``pip install 'crossct[reports]'``), imported only when written.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .io import write_atomically

__all__ = [
    "CellPolygon",
    "cell_polygons",
    "imagej_rois",
    "write_imagej_zip",
    "geojson_features",
    "write_geojson",
]


@dataclass(frozen=True)
class CellPolygon:
    """One piece of a cell: a closed exterior ring and its holes, each an (N, 2) float64 array of
    (x, y) with the first point repeated last.  Exterior rings have a positive signed (shoelace)
    area in these coordinates, holes a negative one (RFC 7946's rule, read in x, y)."""

    exterior: np.ndarray
    holes: tuple[np.ndarray, ...] = ()


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """The same closed ring without points that lie on a straight run (often half of them).

    Marching squares puts a vertex on every pixel edge it crosses; the coordinates are exact
    multiples of 0.5, so the cross product test is exact and the polygon does not change.
    (scikit-image's ``approximate_polygon`` returns the ring unchanged at tolerance 0.)
    """
    points = ring[:-1]
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    kept = points[turn != 0]
    return np.vstack([kept, kept[:1]])


def _rings(mask: np.ndarray, offset: tuple[int, int]) -> list[np.ndarray]:
    """Closed (x, y) rings of a padded binary mask whose pixel [1, 1] is image pixel ``offset``."""
    from skimage.measure import find_contours

    rings = []
    # fully_connected="low": background is 8-connected, so cells are 4-connected pieces (the
    # connectivity of scipy.ndimage.label's default, used to split pieces below).
    for contour in find_contours(mask.astype(np.float32), 0.5, fully_connected="low"):
        xy = np.column_stack([contour[:, 1] + (offset[1] - 1 + 0.5), contour[:, 0] + (offset[0] - 1 + 0.5)])
        if len(xy) >= 4:
            rings.append(_drop_collinear(xy))
    return rings


def cell_polygons(labels: np.ndarray) -> Iterator[tuple[int, list[CellPolygon]]]:
    """``(label, polygons)`` for every cell of ``labels``, in increasing label order.

    Parameters
    ----------
    labels : (H, W) integer instance labels, 0 background.

    Yields
    ------
    label : the cell's id.
    polygons : one :class:`CellPolygon` per 4-connected piece of the cell (usually one).
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer array, got shape {labels.shape} and dtype {labels.dtype}")
    for index, box in enumerate(ndi.find_objects(labels)):
        if box is None:
            continue
        label = index + 1
        mask = np.pad(labels[box] == label, 1)
        pieces, n = ndi.label(mask)
        polygons = []
        for piece in range(1, n + 1):
            rings = _rings(pieces == piece, (box[0].start, box[1].start))
            if not rings:
                continue
            areas = [_signed_area(r) for r in rings]
            outer = int(np.argmax(np.abs(areas)))
            exterior = rings[outer] if areas[outer] > 0 else rings[outer][::-1]
            holes = tuple(r if a < 0 else r[::-1] for i, (r, a) in enumerate(zip(rings, areas)) if i != outer)
            polygons.append(CellPolygon(exterior, holes))
        yield label, polygons


# --------------------------------------------------------------------------- ImageJ / Fiji


def imagej_rois(labels: np.ndarray) -> list:
    """One ``roifile.ImagejRoi`` per cell, named ``cell_<label>`` (zero-padded, so Fiji's ROI
    Manager lists them in label order).

    A cell of one piece without holes is a sub-pixel freehand ROI (what ImageJ's own tools make of
    traced outlines); one with holes or several pieces is a composite (shape) ROI whose path holds
    every ring, so its area and its mask in Fiji leave the holes out.
    """
    import roifile

    rois = []
    polygons_by_cell = list(cell_polygons(labels))
    width = max(5, len(str(polygons_by_cell[-1][0]))) if polygons_by_cell else 5
    for label, polygons in polygons_by_cell:
        name = f"cell_{label:0{width}d}"
        if len(polygons) == 1 and not polygons[0].holes:
            roi = roifile.ImagejRoi.frompoints(polygons[0].exterior[:-1], name=name)
        else:
            rings = [ring for p in polygons for ring in (p.exterior, *p.holes)]
            roi = _composite_roi(roifile, rings, name)
        rois.append(roi)
    return rois


def _composite_roi(roifile, rings: list[np.ndarray], name: str):
    """A composite ROI from closed rings: Java path operations MOVETO (0), LINETO (1), CLOSE (4)."""
    path: list[float] = []
    for ring in rings:
        points = ring[:-1]
        path += [0.0, float(points[0, 0]), float(points[0, 1])]
        for x, y in points[1:]:
            path += [1.0, float(x), float(y)]
        path.append(4.0)
    every = np.vstack(rings)
    roi = roifile.ImagejRoi()
    roi.roitype = roifile.ROI_TYPE.RECT  # ImageJ's marker for a shape ROI, together with shape_roi_size
    roi.name = name
    roi.multi_coordinates = np.asarray(path, np.float32)
    roi.shape_roi_size = len(path)
    roi.left, roi.top = (int(np.floor(v)) for v in every.min(axis=0))
    roi.right, roi.bottom = (int(np.ceil(v)) for v in every.max(axis=0))
    return roi


def write_imagej_zip(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write every cell's ROI into one zip that Fiji's ROI Manager opens (File > Open, or drag it
    in), atomically.  An image without cells gives an empty zip."""
    rois = imagej_rois(labels)

    # roifile.roiwrite wants a file name; writing the members here lets the zip go through
    # write_atomically (a killed run leaves no truncated zip).  ImageJ's own zips are deflated too.
    def write(fh) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for roi in rois:
                zf.writestr(f"{roi.name}.roi", roi.tobytes())

    return write_atomically(path, write)


# --------------------------------------------------------------------------- GeoJSON / QuPath


def geojson_features(labels: np.ndarray) -> dict:
    """A GeoJSON FeatureCollection with one Feature per cell, as QuPath imports it (File > Import
    objects from file): a Polygon (MultiPolygon for a cell in pieces) in pixel coordinates, with
    ``objectType: detection``, the name ``cell <label>`` and the label as a measurement."""
    features = []
    for label, polygons in cell_polygons(labels):
        rings = [[p.exterior.tolist(), *(h.tolist() for h in p.holes)] for p in polygons]
        geometry = ({"type": "Polygon", "coordinates": rings[0]} if len(rings) == 1
                    else {"type": "MultiPolygon", "coordinates": rings})
        features.append({
            "type": "Feature",
            "geometry": geometry,
            "properties": {"objectType": "detection", "name": f"cell {label}", "measurements": {"label": label}},
        })
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write :func:`geojson_features` of ``labels`` as a ``.geojson`` file, atomically."""
    data = json.dumps(geojson_features(labels), separators=(",", ":")).encode()
    return write_atomically(path, lambda fh: fh.write(data))
