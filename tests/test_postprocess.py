"""crossct.postprocess: known answers on synthetic network outputs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import iou, outputs_from_labels, squares, two_touching_disks

from crossct.config import PostprocessConfig
from crossct.postprocess import (
    MIN_OBJECTS_FOR_MEDIAN,
    _gaussian,
    _label4,
    flood,
    postprocess,
    relabel_sequential,
    remove_relatively_small,
    remove_small,
    remove_small_and_relabel,
    threshold_labels,
    watershed_labels,
)


def background(height: int, width: int) -> np.ndarray:
    out = np.zeros((5, height, width), np.float32)
    out[0] = 1
    return out


def test_watershed_splits_touching_cells_that_threshold_merges():
    truth = two_touching_disks()
    assert truth.max() == 2 and np.bincount(truth.ravel())[1:].min() > 500
    outputs = outputs_from_labels(truth)

    labels = watershed_labels(outputs)
    assert labels.max() == 2
    for value in (1, 2):
        best = max(iou(truth == value, labels == other) for other in (1, 2))
        assert best > 0.8

    # The same cells predicted as interior only, no boundary line between them: one component.
    no_boundary = outputs.copy()
    no_boundary[1] = truth > 0
    no_boundary[2] = 0
    merged = threshold_labels(no_boundary)
    assert merged.max() == 1
    assert iou(merged > 0, truth > 0) > 0.95
    # Watershed still splits them: it relies on the distance maps, not on the boundary class.
    assert watershed_labels(no_boundary).max() == 2


def test_postprocess_dispatches_on_method():
    outputs = outputs_from_labels(two_touching_disks())
    outputs[1] += outputs[2]
    outputs[2] = 0
    assert postprocess(outputs, PostprocessConfig(method="watershed")).max() == 2
    assert postprocess(outputs, PostprocessConfig(method="threshold")).max() == 1


def test_many_separate_cells_found_exactly():
    truth = np.zeros((60, 90), np.int32)
    yy, xx = np.mgrid[:60, :90]
    centres = [(15, 15), (15, 45), (15, 75), (45, 15), (45, 45), (45, 75)]
    for i, (cy, cx) in enumerate(centres, 1):
        truth[np.hypot(yy - cy, xx - cx) <= 8] = i
    labels = watershed_labels(outputs_from_labels(truth))
    assert labels.max() == 6
    for value in range(1, 7):
        found = np.unique(labels[truth == value])
        assert len(found) == 1 and found[0] > 0
        assert iou(truth == value, labels == found[0]) > 0.9


def test_min_size_removes_small_objects():
    truth = np.zeros((50, 50), np.int32)
    yy, xx = np.mgrid[:50, :50]
    truth[np.hypot(yy - 15, xx - 15) <= 8] = 1  # ~200 px
    truth[40:43, 40:43] = 2  # 9 px
    outputs = outputs_from_labels(truth)
    assert watershed_labels(outputs, PostprocessConfig(min_size=5)).max() == 2
    kept = watershed_labels(outputs, PostprocessConfig(min_size=16))
    assert kept.max() == 1 and kept[40:43, 40:43].max() == 0
    assert threshold_labels(outputs, PostprocessConfig(min_size=16)).max() == 1


def test_orphans_without_seed_become_cells():
    """Foreground with a flat (zero) cell distance gets no seed, but is not lost."""
    outputs = background(40, 60)
    outputs[0, 5:25, 5:25] = 0
    outputs[1, 5:25, 5:25] = 1  # foreground, no distance peak at all
    truth = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[:40, :60]
    truth[np.hypot(yy - 20, xx - 45) <= 9] = 1
    cell = outputs_from_labels(truth)
    outputs[:, truth > 0] = cell[:, truth > 0]
    labels = watershed_labels(outputs)
    assert labels.max() == 2
    assert len(np.unique(labels[5:25, 5:25])) == 1 and labels[10, 10] > 0
    assert labels[20, 45] > 0 and labels[20, 45] != labels[10, 10]
    assert (labels[5:25, 5:25] > 0).all()


@pytest.mark.parametrize("scale", [1, 4])
def test_relative_size_drops_fragments_at_any_cell_size(scale):
    labels = relabel_sequential(squares(scale))
    kept = remove_relatively_small(labels, 0.2)
    assert kept.max() == 8 and np.array_equal(kept > 0, (labels > 0) & (labels <= 8))
    assert np.array_equal(np.unique(kept), np.arange(9))
    # At 0.15 the speck (0.16 of the median area) stays; 0 is off.
    assert remove_relatively_small(labels, 0.15).max() == 9
    assert remove_relatively_small(labels, 0.0) is labels
    # An absolute minimum cannot do this at both scales: 20 px drops the speck at 1x, not at 4x (256 px).
    assert remove_small_and_relabel(labels, 20).max() == (8 if scale == 1 else 9)


def test_relative_size_leaves_sparse_fields_alone():
    # Two large cells and a small true one: a median of three says nothing about fragments.
    labels = np.zeros((60, 60), np.int32)
    labels[2:22, 2:22], labels[30:50, 30:50], labels[5:9, 40:44] = 1, 2, 3
    assert 3 < MIN_OBJECTS_FOR_MEDIAN
    assert remove_relatively_small(labels, 0.5) is labels


def test_watershed_min_relative_size():
    outputs = outputs_from_labels(squares(2))
    plain = watershed_labels(outputs, PostprocessConfig(min_size=8))
    assert plain.max() == 9
    filtered = watershed_labels(outputs, PostprocessConfig(min_size=8, min_relative_size=0.25))
    assert filtered.max() == 8 and (filtered[2 * 8:2 * 12, 2 * 60:2 * 64] == 0).all()
    empty = watershed_labels(background(10, 10), PostprocessConfig(min_relative_size=0.5))
    assert empty.max() == 0


def test_all_seeds_too_small_still_gives_cells():
    outputs = background(30, 30)
    outputs[0, 5:15, 5:15] = 0
    outputs[1, 5:15, 5:15] = 1
    outputs[3, 9, 9] = 5  # a one-pixel seed, below min_seed_size
    labels = watershed_labels(outputs, PostprocessConfig(smooth_sigma=0, min_seed_size=3, min_size=4))
    assert labels.max() == 1 and (labels[5:15, 5:15] == 1).all() and labels.sum() == 100


@pytest.mark.parametrize("method", ["watershed", "threshold"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 50), (40, 40)])
def test_empty_outputs_give_no_cells(method, shape):
    labels = postprocess(background(*shape), PostprocessConfig(method=method))
    assert labels.shape == shape and labels.max() == 0
    zeros = postprocess(np.zeros((5,) + shape, np.float32), PostprocessConfig(method=method))
    assert zeros.max() == 0


def test_labels_sequential_from_one():
    truth = np.zeros((40, 120), np.int32)
    for i, x in enumerate(range(5, 115, 22), 1):
        truth[10:30, x : x + 15] = i * 7  # values 7, 14, ... must come back 1..N
    for method in ("watershed", "threshold"):
        labels = postprocess(outputs_from_labels(truth), PostprocessConfig(method=method))
        values = np.unique(labels)
        np.testing.assert_array_equal(values, np.arange(0, 6))


def test_postprocess_does_not_modify_outputs():
    outputs = outputs_from_labels(two_touching_disks())
    before = outputs.copy()
    postprocess(outputs)
    postprocess(outputs, PostprocessConfig(method="threshold"))
    np.testing.assert_array_equal(outputs, before)


def test_postprocess_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(5, H, W\)"):
        postprocess(np.zeros((3, 10, 10), np.float32))


def test_relabel_sequential_and_remove_small():
    labels = np.array([[0, 5, 5], [9, 9, 9], [0, 2, 0]])
    np.testing.assert_array_equal(relabel_sequential(labels), [[0, 2, 2], [3, 3, 3], [0, 1, 0]])
    np.testing.assert_array_equal(remove_small(labels, 2), [[0, 5, 5], [9, 9, 9], [0, 0, 0]])
    np.testing.assert_array_equal(remove_small(labels, 3), [[0, 0, 0], [9, 9, 9], [0, 0, 0]])
    before = labels.copy()
    remove_small(labels, 3)
    np.testing.assert_array_equal(labels, before)
    assert relabel_sequential(np.zeros((2, 2), np.int32)).max() == 0


@pytest.mark.parametrize("seed", range(5))
def test_one_lookup_filter_equals_remove_small_then_relabel(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 40, size=(60, 70)) * (rng.random((60, 70)) < 0.7)
    for min_size in (0, 1, 50, 120, 10_000):
        expected = relabel_sequential(remove_small(labels, min_size))
        np.testing.assert_array_equal(remove_small_and_relabel(labels, min_size), expected)
    assert remove_small_and_relabel(np.zeros((3, 3), np.int64), 5).dtype == np.int32


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (64, 48), (257, 300)])
@pytest.mark.parametrize("sigma", [0.7, 2.0, 3.5])
def test_opencv_gaussian_equals_scipy(shape, sigma):
    from scipy import ndimage as ndi

    image = np.random.default_rng(1).random(shape, dtype=np.float32) * 10
    np.testing.assert_allclose(_gaussian(image, sigma), ndi.gaussian_filter(image, sigma), atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_opencv_components_equal_scipy_partition(seed):
    from scipy import ndimage as ndi

    binary = np.random.default_rng(seed).random((80, 90)) < 0.55
    ours, n = _label4(binary)
    theirs, m = ndi.label(binary)  # 4-connected by default in 2D
    assert n == m and ours.dtype == np.int32
    # Same components, possibly numbered differently: a one-to-one map between the two numberings.
    pairs = np.unique(np.stack([ours.ravel(), theirs.ravel()]), axis=1)
    assert pairs.shape[1] == n + 1 and len(set(pairs[0])) == len(set(pairs[1])) == n + 1


@pytest.mark.parametrize("seed", range(40))
def test_flooding_by_bands_of_components_equals_one_watershed(seed):
    from skimage.segmentation import watershed

    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 90, 2)
    # Plateaus everywhere (ties between flooded pixels) but distinct values at the markers.
    surface = rng.integers(0, 4, (h, w)).astype(np.float64)
    mask = rng.random((h, w)) < rng.uniform(0.3, 0.8)
    markers = (rng.random((h, w)) < 0.05) * rng.integers(1, 30, (h, w))
    surface[markers > 0] += rng.permutation(np.count_nonzero(markers)) / (10 * np.count_nonzero(markers) + 1)
    expected = watershed(surface, markers=markers, mask=mask)
    got = flood(surface, markers, mask, band_rows=int(rng.integers(1, 40)))
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int32


def test_flood_without_foreground_or_markers():
    assert not flood(np.zeros((4, 5)), np.zeros((4, 5), int), np.zeros((4, 5), bool)).any()
    assert not flood(np.zeros((4, 5)), np.zeros((4, 5), int), np.ones((4, 5), bool)).any()


@pytest.mark.parametrize("kwargs, match", [({"method": "otsu"}, "watershed"), ({"min_size": -1}, "min_size")])
def test_config_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PostprocessConfig(**kwargs)
