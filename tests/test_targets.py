"""Targets from instance labels (3-class map, Scherr distances) and their on-disk cache."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries

from crossct.train import targets as T
from crossct.train.targets import TargetCache, make_targets, prepare_all


def disk_labels(shape, centres, radius, ids=None):
    """(H, W) int32 labels with one disk per centre (later disks overwrite earlier ones)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = (ids[i] if ids else i + 1)
    return labels


# ----------------------------------------------------------------------------- cell distance
def test_single_disk_cell_distance_peaks_at_centre_and_is_zero_outside():
    labels = disk_labels((64, 64), [(30, 33)], 12)
    classes, distances = make_targets(labels)
    cell = distances[0]
    assert cell[30, 33] == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(cell), cell.shape) == (30, 33)
    assert np.all(cell[labels == 0] == 0)
    assert np.all(cell[labels > 0] > 0)
    # Falls off from the centre: 1 px inside the edge is 1 / radius-ish, far below the centre.
    assert cell[30, 33 + 12] == pytest.approx(1 / 13, abs=0.02)
    assert np.all(np.diff(cell[30, 33:46]) < 0)


def test_cell_distance_is_per_cell_so_touching_cells_stay_separable():
    labels = disk_labels((60, 100), [(30, 30), (30, 70)], 20)  # touch at x = 50
    _, distances = make_targets(labels)
    cell = distances[0]
    assert cell[30, 30] == pytest.approx(1.0) and cell[30, 70] == pytest.approx(1.0)
    # Both cells are 1 px from their edge at the contact: a valley between two peaks.
    assert cell[30, 50] < 0.1 and cell[30, 49] < 0.1


def test_cell_distance_is_normalised_by_each_cells_own_maximum():
    labels = disk_labels((60, 100), [(30, 25)], 20)
    labels[disk_labels((60, 100), [(30, 75)], 6) > 0] = 2  # a small cell beside a big one
    _, distances = make_targets(labels)
    assert distances[0][labels == 1].max() == pytest.approx(1.0)
    assert distances[0][labels == 2].max() == pytest.approx(1.0)


def test_distances_are_float32_in_unit_range_and_zero_on_background():
    rng = np.random.default_rng(3)
    labels = disk_labels((80, 90), rng.integers(5, 75, size=(12, 2)).tolist(), 9)
    classes, distances = make_targets(labels)
    assert classes.dtype == np.uint8 and classes.shape == labels.shape
    assert distances.dtype == np.float32 and distances.shape == (2, *labels.shape)
    assert set(np.unique(classes)) <= {0, 1, 2}
    assert distances.min() >= 0 and distances.max() <= 1
    assert np.all(distances[:, labels == 0] == 0)


# ----------------------------------------------------------------------------- neighbour distance
def test_touching_disks_neighbour_distance_high_at_contact_low_far_away():
    labels = disk_labels((60, 100), [(30, 30), (30, 70)], 20)
    _, distances = make_targets(labels)
    nb = distances[1]
    assert nb.max() == pytest.approx(1.0)
    assert nb[30, 49] > 0.9 and nb[30, 50] > 0.9  # the two pixels either side of the contact
    assert nb[30, 11] < 0.02 and nb[30, 89] < 0.02  # far sides of both cells
    assert nb[30, 20] < nb[30, 40] < nb[30, 49]


def test_isolated_cell_has_zero_neighbour_distance():
    labels = disk_labels((64, 64), [(32, 32)], 15)
    _, distances = make_targets(labels)
    assert np.all(distances[1] == 0)


def test_cells_far_apart_count_as_isolated():
    # 8 px radius cells, 80 px apart: beyond the search window (one cell size around each box).
    labels = disk_labels((40, 140), [(20, 20), (20, 100)], 8)
    _, distances = make_targets(labels)
    assert np.all(distances[1] == 0)


def test_targets_invariant_to_label_ids_and_dtype():
    base = disk_labels((50, 70), [(25, 20), (25, 45)], 12)
    renumbered = np.zeros(base.shape, np.uint32)
    renumbered[base == 1] = 4_000_000_000  # sparse, huge ids take the unique() path
    renumbered[base == 2] = 7
    c0, d0 = make_targets(base)
    c1, d1 = make_targets(renumbered)
    np.testing.assert_array_equal(c0, c1)
    np.testing.assert_allclose(d0, d1, atol=1e-6)
    c2, d2 = make_targets(base.astype(np.uint16) * 300)
    np.testing.assert_array_equal(c0, c2)
    np.testing.assert_allclose(d0, d2, atol=1e-6)


def test_bool_mask_is_one_object():
    labels = disk_labels((40, 40), [(20, 20)], 10)
    c0, d0 = make_targets(labels)
    c1, d1 = make_targets(labels > 0)
    np.testing.assert_array_equal(c0, c1)
    np.testing.assert_array_equal(d0, d1)


# ----------------------------------------------------------------------------- 3-class map
def test_disk_class_map_is_three_pixel_boundary_ring_and_interior_rest():
    labels = disk_labels((41, 41), [(20, 20)], 10)
    classes, _ = make_targets(labels)
    # Known answer along the row through the centre: cell spans x = 10..30.
    row = classes[20]
    expected = np.zeros(41, np.uint8)
    expected[10:31] = 1
    expected[[9, 10, 11, 29, 30, 31]] = 2  # 1 px outside + inner boundary + 1 px inside, each side
    np.testing.assert_array_equal(row, expected)
    # The organisers' recipe, spelled out with scikit-image.
    boundary = dilation(find_boundaries(labels, mode="inner"), disk(1))
    np.testing.assert_array_equal(classes == 2, boundary)
    np.testing.assert_array_equal(classes == 1, (labels > 0) & ~boundary)
    assert np.all(classes[(labels == 0) & ~boundary] == 0)


def test_boundary_between_touching_cells():
    labels = np.zeros((20, 20), np.int32)
    labels[2:18, 2:10] = 1
    labels[2:18, 10:18] = 2
    classes, _ = make_targets(labels)
    # Inner boundaries at x = 9 and x = 10, dilated by one pixel: x = 8..11 on a middle row.
    np.testing.assert_array_equal(classes[10, 6:14], [1, 1, 2, 2, 2, 2, 1, 1])


def test_objects_under_16_pixels_are_removed():
    labels = np.zeros((30, 30), np.int32)
    labels[2:5, 2:5] = 1  # 9 px: removed
    labels[10:14, 10:14] = 2  # 16 px: kept
    classes, distances = make_targets(labels)
    assert np.all(classes[:8, :8] == 0) and np.all(distances[:, :8, :8] == 0)
    assert np.all(classes[10:14, 10:14] > 0) and distances[0, 10:14, 10:14].max() == pytest.approx(1.0)


def test_empty_labels_give_background_only():
    classes, distances = make_targets(np.zeros((16, 24), np.uint16))
    assert not classes.any() and not distances.any()
    assert classes.shape == (16, 24) and distances.shape == (2, 16, 24)


def test_single_cell_filling_the_image():
    classes, distances = make_targets(np.ones((20, 20), np.uint16))
    assert np.isfinite(distances).all() and distances.max() <= 1
    assert np.all(distances[1] == 0)


def test_targets_do_not_modify_the_input():
    labels = disk_labels((40, 40), [(15, 15), (15, 30), (30, 20)], 8, ids=[5, 9, 2])
    labels[0:2, 0:2] = 77  # a small object that gets removed from the targets
    before = labels.copy()
    labels.flags.writeable = False  # any in-place write would raise
    make_targets(labels)
    np.testing.assert_array_equal(labels, before)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4, 2), np.int32), "2-D"),
    (np.zeros((4, 4), np.float32), "integers"),
    (np.full((4, 4), -1, np.int32), ">= 0"),
])
def test_bad_labels_are_refused_with_a_reason(bad, message):
    with pytest.raises(ValueError, match=message):
        make_targets(bad)


# ----------------------------------------------------------------------------- cache
@pytest.fixture
def label_file(tmp_path):
    path = tmp_path / "cell_label.tiff"
    tifffile.imwrite(path, disk_labels((48, 64), [(20, 20), (20, 40)], 10).astype(np.uint16))
    return path


def _boom(labels):
    raise AssertionError("make_targets called although the targets are cached")


def test_cache_second_get_is_a_hit(tmp_path, label_file, monkeypatch):
    cache = TargetCache(tmp_path / "cache")
    classes, distances = cache.get(label_file)
    assert cache.misses == 1 and cache.hits == 0
    assert classes.dtype == np.uint8 and distances.dtype == np.float16
    ref_c, ref_d = make_targets(tifffile.imread(label_file))
    np.testing.assert_array_equal(classes, ref_c)
    np.testing.assert_allclose(distances, ref_d, atol=1e-3)

    monkeypatch.setattr(T, "make_targets", _boom)
    again_c, again_d = TargetCache(tmp_path / "cache").get(label_file)  # a fresh object: from disk
    np.testing.assert_array_equal(again_c, classes)
    np.testing.assert_array_equal(again_d, distances)  # same float16 values on a hit and a miss
    # Content-keyed: a copy under another name is a hit too.
    copy = tmp_path / "renamed_label.tiff"
    copy.write_bytes(label_file.read_bytes())
    cache.get(copy)
    assert cache.hits == 1
    # Written atomically: no temporary files left behind.
    assert [p.suffix for p in cache.folder.iterdir()] == [".npz"]


def test_cache_recomputes_when_the_label_content_changes(tmp_path, label_file):
    cache = TargetCache(tmp_path / "cache")
    first_c, _ = cache.get(label_file)
    tifffile.imwrite(label_file, disk_labels((48, 64), [(24, 32)], 15).astype(np.uint16))
    second_c, _ = cache.get(label_file)
    assert cache.misses == 2
    assert not np.array_equal(first_c, second_c)
    np.testing.assert_array_equal(second_c, make_targets(tifffile.imread(label_file))[0])


def test_cache_key_includes_the_version(tmp_path, label_file, monkeypatch):
    cache = TargetCache(tmp_path / "cache")
    key = cache.key(label_file.read_bytes())
    monkeypatch.setattr(T, "TARGETS_VERSION", T.TARGETS_VERSION + 1)
    assert TargetCache(tmp_path / "cache").key(label_file.read_bytes()) != key


def test_damaged_cache_entry_is_recomputed(tmp_path, label_file, caplog):
    cache = TargetCache(tmp_path / "cache")
    expected = cache.get(label_file)
    cache.entry(label_file).write_bytes(b"not a zip file")
    got = cache.get(label_file)
    assert cache.misses == 2 and "unreadable" in caplog.text
    np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_all_fills_the_cache_once(tmp_path, label_file, workers, monkeypatch):
    from types import SimpleNamespace

    other = tmp_path / "other_label.tiff"
    tifffile.imwrite(other, disk_labels((30, 30), [(15, 15)], 8).astype(np.uint16))
    records = [SimpleNamespace(label=label_file), SimpleNamespace(label=other), SimpleNamespace(label=None)]
    assert prepare_all(records, tmp_path / "cache", workers=workers) == {"labels": 2, "cached": 0, "computed": 2}
    assert prepare_all(records, tmp_path / "cache", workers=workers) == {"labels": 2, "cached": 2, "computed": 0}
    monkeypatch.setattr(T, "make_targets", _boom)
    TargetCache(tmp_path / "cache").get(other)
