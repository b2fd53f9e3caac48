"""crossct.measure: per-cell tables equal to scikit-image's regionprops_table, and their CSV files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from skimage.measure import regionprops_table

from crossct.measure import COLUMN_NAMES, measure_cells, summary_row, write_table_csv
from crossct.synthetic import synthetic_cells

PROPERTIES = ("label", "area", "centroid", "bbox", "equivalent_diameter_area", "eccentricity", "solidity")


@pytest.fixture(scope="module")
def cells():
    image, labels = synthetic_cells(96, 128, seed=5)
    rgb = np.stack([image, 255 - image, image // 2], axis=-1)
    return rgb, labels


def test_columns_equal_regionprops_table(cells):
    rgb, labels = cells
    table = measure_cells(labels, rgb)
    expected = regionprops_table(labels, intensity_image=rgb,
                                 properties=PROPERTIES + ("intensity_mean", "intensity_max"))
    assert len(table) == len(expected) == 11 + 2 * 3
    for name, values in expected.items():
        ours = COLUMN_NAMES.get(name) or name.replace("intensity_mean-", "mean_intensity_ch").replace(
            "intensity_max-", "max_intensity_ch")
        np.testing.assert_array_equal(table[ours], values, err_msg=name)
    assert list(table)[:11] == ["label", "area", "centroid_y", "centroid_x", "bbox_min_y", "bbox_min_x",
                                "bbox_max_y", "bbox_max_x", "equivalent_diameter", "eccentricity", "solidity"]
    np.testing.assert_array_equal(table["label"], np.unique(labels)[1:])


def test_known_answers_for_a_rectangle():
    labels = np.zeros((10, 12), np.int32)
    labels[2:5, 3:9] = 7  # 3 x 6 rectangle
    image = np.zeros((10, 12), np.uint16)
    image[2:5, 3:9] = np.arange(18).reshape(3, 6) * 100
    row = {k: v[0] for k, v in measure_cells(labels, image).items()}
    assert row["label"] == 7 and row["area"] == 18
    assert (row["centroid_y"], row["centroid_x"]) == (3.0, 5.5)
    assert (row["bbox_min_y"], row["bbox_min_x"], row["bbox_max_y"], row["bbox_max_x"]) == (2, 3, 5, 9)
    assert row["equivalent_diameter"] == pytest.approx(np.sqrt(4 * 18 / np.pi))
    assert row["solidity"] == 1.0
    assert row["mean_intensity_ch0"] == pytest.approx(850.0) and row["max_intensity_ch0"] == 1700


def test_without_image_no_intensities_and_inputs_untouched(cells):
    rgb, labels = cells
    before = labels.copy(), rgb.copy()
    assert not any("intensity" in name for name in measure_cells(labels))
    measure_cells(labels, rgb)
    np.testing.assert_array_equal(labels, before[0])
    np.testing.assert_array_equal(rgb, before[1])


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"image \(shape \(5, 6, 3\)\) must be .* labels' shape \(5, 7\)"):
        measure_cells(np.zeros((5, 7), np.int32), np.zeros((5, 6, 3)))
    with pytest.raises(ValueError, match="2-D integer"):
        measure_cells(np.zeros((5, 7), np.float32))


def test_csv_round_trip(cells, tmp_path):
    rgb, labels = cells
    table = measure_cells(labels, rgb)
    path = write_table_csv(tmp_path / "x_cells.csv", table)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == labels.max() and list(rows[0]) == list(table)
    for name, values in table.items():
        np.testing.assert_allclose([float(r[name]) for r in rows], values, rtol=1e-15)  # shortest repr: exact


def test_summary_row_and_empty_images(tmp_path):
    labels = np.zeros((4, 6), np.uint16)
    labels[0, :3] = 1
    labels[2:4, 2:6] = 3  # id 2 unused
    assert summary_row("a.png", labels, 1.23456) == {
        "image": "a.png", "height": 4, "width": 6, "cells": 2, "median_area": 5.5, "seconds": 1.235, "error": ""}
    empty = summary_row("b.png", np.zeros((3, 3), np.uint16))
    assert empty["cells"] == 0 and empty["median_area"] == 0.0
    path = write_table_csv(tmp_path / "x_cells.csv", measure_cells(np.zeros((3, 3), np.uint16)))
    assert path.read_text().splitlines() == [",".join(["label", "area", "centroid_y", "centroid_x", "bbox_min_y",
                                                      "bbox_min_x", "bbox_max_y", "bbox_max_x",
                                                      "equivalent_diameter", "eccentricity", "solidity"])]
