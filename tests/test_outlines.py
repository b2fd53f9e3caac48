"""crossct.outlines: polygons that Fiji (ImageJ ROI zip) and QuPath (GeoJSON) fill back into the labels.

Fiji and QuPath fill a polygon by the pixel-centre rule (pixel (r, c) is inside when its centre
(c + 0.5, r + 0.5) is); the ROIs are read back with roifile and the GeoJSON with the geojson package
and shapely, rasterised by that rule, and compared with the labels cell by cell.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.measure import points_in_poly

from crossct.outlines import cell_polygons, geojson_features, write_geojson, write_imagej_zip
from crossct.synthetic import synthetic_cells

roifile = pytest.importorskip("roifile", reason="roifile is in requirements-dev.txt (crossct[reports])")
shapely = pytest.importorskip("shapely", reason="shapely is in requirements-dev.txt")
geojson = pytest.importorskip("geojson", reason="geojson is in requirements-dev.txt")


def _window(points: np.ndarray, shape: tuple[int, int]) -> tuple[slice, slice]:
    (x0, y0), (x1, y1) = np.floor(points.min(axis=0)), np.ceil(points.max(axis=0))
    return slice(max(int(y0), 0), min(int(y1), shape[0])), slice(max(int(x0), 0), min(int(x1), shape[1]))


def _centres(rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[rows, cols]
    return (xx + 0.5).ravel(), (yy + 0.5).ravel()


def fill_even_odd(rings: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside an odd number of rings (how a path with holes is filled)."""
    rings = [np.asarray(r, float) for r in rings]
    rows, cols = _window(np.vstack(rings), shape)
    xs, ys = _centres(rows, cols)
    inside = np.zeros(xs.size, bool)
    for ring in rings:
        inside ^= points_in_poly(np.column_stack([xs, ys]), ring)
    out = np.zeros(shape, bool)
    out[rows, cols] = inside.reshape(rows.stop - rows.start, cols.stop - cols.start)
    return out


def fill_geometry(geometry, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside a shapely geometry or a GeoJSON geometry dict."""
    geometry = shapely.geometry.shape(geometry) if isinstance(geometry, dict) else geometry
    bounds = np.asarray(geometry.bounds, float).reshape(2, 2)
    rows, cols = _window(bounds, shape)
    xs, ys = _centres(rows, cols)
    out = np.zeros(shape, bool)
    out[rows, cols] = shapely.contains_xy(geometry, xs, ys).reshape(rows.stop - rows.start, cols.stop - cols.start)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def tricky_labels() -> np.ndarray:
    """Synthetic cells on the left; on the right the hard cases: a cell with two holes, one in
    three pieces (one inside its own hole, one touching it only at a corner), cells on the right
    and bottom borders and in two corners, a one-pixel cell, and a ring one pixel wide."""
    labels = np.zeros((120, 200), np.int32)
    labels[:, :80] = synthetic_cells(120, 80, seed=3)[1]
    n = int(labels.max())
    labels[40:70, 90:120] = n + 1  # two holes
    labels[45:52, 95:102] = 0
    labels[58:64, 100:116] = 0
    labels[80:100, 130:150] = n + 2  # a piece with a hole holding another piece (an island) ...
    labels[85:95, 135:145] = 0
    labels[88:92, 138:142] = n + 2
    labels[100, 150] = n + 2  # ... and a third piece touching the first only at a corner
    labels[0:6, 191:200] = n + 3  # top-right corner
    labels[114:120, 190:200] = n + 4  # bottom-right corner
    labels[50:60, 195:200] = n + 5  # right border
    labels[30, 130] = n + 6  # one pixel
    labels[5:15, 150:160] = n + 7  # a ring one pixel wide
    labels[6:14, 151:159] = 0
    labels[116:120, 100:110] = n + 8  # bottom border
    return labels


def test_polygons_fill_back_exactly(tricky_labels):
    for label, polygons in cell_polygons(tricky_labels):
        geometry = shapely.MultiPolygon([shapely.Polygon(p.exterior, p.holes) for p in polygons])
        assert geometry.is_valid, (label, shapely.is_valid_reason(geometry))
        np.testing.assert_array_equal(fill_geometry(geometry, tricky_labels.shape), tricky_labels == label,
                                      err_msg=f"cell {label}")


def test_holes_pieces_and_orientation(tricky_labels):
    polygons = dict(cell_polygons(tricky_labels))
    n = int(tricky_labels.max()) - 8
    assert [len(p.holes) for p in polygons[n + 1]] == [2]
    assert sorted(len(p.holes) for p in polygons[n + 2]) == [0, 0, 1]  # piece with hole, island, corner pixel
    assert [len(p.holes) for p in polygons[n + 7]] == [1]
    for pieces in polygons.values():
        for p in pieces:
            for ring in (p.exterior, *p.holes):
                np.testing.assert_array_equal(ring[0], ring[-1])  # closed
            assert shapely.LinearRing(p.exterior).is_ccw  # positive shoelace area (RFC 7946, in x, y)
            assert not any(shapely.LinearRing(h).is_ccw for h in p.holes)  # holes wind the other way
    # A border cell's outline runs along the image edges: y = 0 and x = 200 for the top-right one.
    corner = polygons[n + 3][0].exterior
    assert (corner[:, 0].min(), corner[:, 0].max(), corner[:, 1].min(), corner[:, 1].max()) == (191, 200, 0, 6)
    assert (corner[:, 1] == 0).sum() >= 2 and (corner[:, 0] == 200).sum() >= 2  # edges along the border


def test_imagej_zip_reads_back_into_the_labels(tricky_labels, tmp_path):
    path = write_imagej_zip(tmp_path / "cells_rois.zip", tricky_labels)
    rois = roifile.roiread(path)
    ids = np.unique(tricky_labels)[1:]
    assert [roi.name for roi in rois] == [f"cell_{i:05d}" for i in ids]
    composite = {int(roi.name.split("_")[1]) for roi in rois if roi.composite}
    n = int(tricky_labels.max()) - 8
    assert composite == {n + 1, n + 2, n + 7}  # exactly the cells with holes or pieces
    for roi in rois:
        label = int(roi.name.split("_")[1])
        filled = fill_even_odd(roi.coordinates(multi=True), tricky_labels.shape)
        assert iou(filled, tricky_labels == label) == 1.0, label
        if not roi.composite:
            assert roi.roitype == roifile.ROI_TYPE.FREEHAND and roi.subpixelresolution
        y0, x0 = np.argwhere(tricky_labels == label).min(axis=0)
        assert (roi.left, roi.top) == (x0, y0)


def test_geojson_validates_and_fills_back(tricky_labels, tmp_path):
    path = write_geojson(tmp_path / "cells.geojson", tricky_labels)
    text = path.read_text()
    collection = geojson.loads(text)
    assert collection.is_valid, collection.errors()
    assert collection["type"] == "FeatureCollection"
    ids = np.unique(tricky_labels)[1:]
    assert len(collection["features"]) == ids.size
    n = int(tricky_labels.max()) - 8
    for feature, label in zip(collection["features"], ids):
        assert feature["properties"]["objectType"] == "detection"  # what QuPath imports as a detection
        assert feature["properties"]["measurements"]["label"] == label
        assert feature["geometry"]["type"] == ("MultiPolygon" if label == n + 2 else "Polygon")
        assert shapely.geometry.shape(feature["geometry"]).is_valid
        np.testing.assert_array_equal(fill_geometry(feature["geometry"], tricky_labels.shape),
                                      tricky_labels == label, err_msg=f"cell {label}")


@pytest.mark.slow
def test_real_segmentation_outlines_round_trip(tmp_path):
    """On the shipped model's labels for the demo image: IoU >= 0.95 per cell (the done-criterion;
    the construction gives exactly 1)."""
    from crossct.demo import demo_image
    from crossct.pipeline import segment
    from crossct.predictors import load_predictor

    labels = segment(demo_image("ihc"), load_predictor(None, device="cpu"))
    assert labels.max() > 100
    rois = roifile.roiread(write_imagej_zip(tmp_path / "ihc_rois.zip", labels))
    features = json.loads(write_geojson(tmp_path / "ihc.geojson", labels).read_text())["features"]
    assert len(rois) == len(features) == labels.max()
    for roi, feature in zip(rois, features):
        label = feature["properties"]["measurements"]["label"]
        assert int(roi.name.split("_")[1]) == label
        cell = labels == label
        assert iou(fill_even_odd(roi.coordinates(multi=True), labels.shape), cell) >= 0.95
        assert iou(fill_geometry(feature["geometry"], labels.shape), cell) >= 0.95


def test_no_cells_gives_empty_outputs(tmp_path):
    empty = np.zeros((20, 30), np.uint16)
    assert list(cell_polygons(empty)) == []
    assert geojson_features(empty) == {"type": "FeatureCollection", "features": []}
    assert roifile.roiread(write_imagej_zip(tmp_path / "e.zip", empty)) == []


def test_labels_are_not_modified_and_bad_input_is_refused(tricky_labels):
    before = tricky_labels.copy()
    list(cell_polygons(tricky_labels))
    np.testing.assert_array_equal(tricky_labels, before)
    with pytest.raises(ValueError, match="2-D integer"):
        list(cell_polygons(np.zeros((4, 4), np.float32)))
    with pytest.raises(ValueError, match="2-D integer"):
        list(cell_polygons(np.zeros((2, 4, 4), np.int32)))


def test_failed_write_keeps_the_previous_file(tricky_labels, tmp_path, monkeypatch):
    import zipfile

    path = write_imagej_zip(tmp_path / "cells_rois.zip", tricky_labels)
    before = path.read_bytes()
    calls = []

    def fail_on_third(self, name, data, *args, **kwargs):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return original(self, name, data, *args, **kwargs)

    original = zipfile.ZipFile.writestr
    monkeypatch.setattr(zipfile.ZipFile, "writestr", fail_on_third)
    with pytest.raises(OSError, match="No space"):
        write_imagej_zip(path, tricky_labels[:, ::-1])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells_rois.zip"]  # no temporary left
