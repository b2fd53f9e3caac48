"""Known answers and properties of evaluate.metrics (challenge F1 at IoU 0.5)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from skimage.draw import disk
from skimage.segmentation import relabel_sequential

from evaluate import count_true_positives, f1_score, foreground_dice, remove_boundary_cells, sparse_iou
from evaluate.metrics import _sequential


# ------------------------------------------------------------------------------------------
# The official evaluator, transcribed (dense IoU, dense Hungarian), in int64 so that it cannot
# overflow. Used as the reference the sparse implementation must agree with.
# ------------------------------------------------------------------------------------------


def _official_remove_boundary_cells(mask: np.ndarray) -> np.ndarray:
    mask = mask.copy()
    w, h = mask.shape
    bd = np.ones((w, h))
    bd[2 : w - 2, 2 : h - 2] = 0
    for i in np.unique(mask * bd)[1:]:
        mask[mask == i] = 0
    return relabel_sequential(mask)[0]


def _official_tp_counts(gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int]:
    """(TP, n_gt, n_pred) by the official dense formulation, on sequential labels."""
    n_gt, n_pred = int(gt.max()), int(pred.max())
    if n_gt == 0 or n_pred == 0:
        return 0, n_gt, n_pred
    overlap = np.zeros((n_gt + 1, n_pred + 1), np.int64)
    np.add.at(overlap, (gt.ravel(), pred.ravel()), 1)
    n_pixels_pred = overlap.sum(axis=0, keepdims=True)
    n_pixels_true = overlap.sum(axis=1, keepdims=True)
    iou = (overlap / (n_pixels_pred + n_pixels_true - overlap))[1:, 1:]
    n_min = min(iou.shape)
    costs = -(iou >= threshold).astype(float) - iou / (2 * n_min)
    rows, cols = linear_sum_assignment(costs)
    return int((iou[rows, cols] >= threshold).sum()), n_gt, n_pred


def _official_counts(gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int]:
    return _official_tp_counts(
        _official_remove_boundary_cells(gt.astype(np.int64)), _official_remove_boundary_cells(pred.astype(np.int64)), threshold
    )


def _disks(shape, centres, radius, values=None, dtype=np.uint16) -> np.ndarray:
    out = np.zeros(shape, dtype)
    for k, c in enumerate(centres):
        out[disk(c, radius, shape=shape)] = k + 1 if values is None else values[k]
    return out


# ------------------------------------------------------------------------------------------
# Known answers
# ------------------------------------------------------------------------------------------


def test_shifted_squares_hand_computed_iou():
    gt = np.zeros((40, 60), np.uint16)
    pred = np.zeros_like(gt)
    gt[10:20, 5:15] = 1  # 10x10
    pred[10:20, 7:17] = 1  # shifted by 2: overlap 8x10 = 80, union 120 -> IoU 2/3
    gt[10:20, 25:35] = 2
    pred[10:20, 29:39] = 2  # shifted by 4: overlap 60, union 140 -> IoU 3/7 < 0.5
    gt[25:35, 40:50] = 3
    pred[25:35, 43:53] = 3  # shifted by 3: overlap 70, union 130 -> IoU 7/13 >= 0.5
    rows, cols, iou = sparse_iou(gt, 3, pred, 3)
    got = {(int(r), int(c)): v for r, c, v in zip(rows, cols, iou)}
    assert got == pytest.approx({(0, 0): 80 / 120, (1, 1): 60 / 140, (2, 2): 70 / 130})
    r = f1_score(gt, pred)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)


def test_shifted_and_dropped_disks():
    shape = (100, 100)
    gt = _disks(shape, [(20, 20), (20, 70), (70, 20), (70, 70)], 8)
    # disk 1 exact, disk 2 shifted 2 px (IoU ~0.85), disk 3 shifted 10 px > radius (IoU < 0.3),
    # disk 4 dropped, plus one extra disk where there is no cell.
    pred = _disks(shape, [(20, 20), (22, 70), (80, 20), (45, 45)], 8)
    r = f1_score(gt, pred)
    assert (r["tp"], r["fp"], r["fn"], r["n_gt"], r["n_pred"]) == (2, 2, 2, 4, 4)
    assert (r["precision"], r["recall"], r["f1"]) == (0.5, 0.5, 0.5)
    assert (r["tp"], r["n_gt"], r["n_pred"]) == _official_counts(gt, pred)


def test_threshold_is_inclusive_at_exactly_one_half():
    gt = np.zeros((10, 10), np.uint8)
    pred = np.zeros_like(gt)
    gt[4, 4:6] = 1  # 2 pixels
    pred[4, 4] = 1  # IoU exactly 1/2
    assert f1_score(gt, pred)["tp"] == 1
    assert f1_score(gt, pred, threshold=0.51)["tp"] == 0


def test_one_to_one_matching_with_ties():
    # One 2-pixel cell, two 1-pixel predictions, each with IoU exactly 0.5: only one can match.
    gt = np.zeros((10, 10), np.uint8)
    gt[4, 4:6] = 1
    pred = np.zeros_like(gt)
    pred[4, 4], pred[4, 5] = 1, 2
    r = f1_score(gt, pred)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)


def test_boundary_cells_removed_independently():
    gt = np.zeros((30, 30), np.uint16)
    pred = np.zeros_like(gt)
    gt[1:6, 10:15] = 1  # touches row 1, inside the 2-pixel frame: ignored
    gt[2:8, 20:26] = 2  # starts at row 2: kept
    gt[15:20, 15:20] = 3
    pred[15:20, 15:20] = 7
    pred[1:8, 20:26] = 9  # the prediction of cell 2 reaches row 1: removed from the prediction only
    r = f1_score(gt, pred)
    assert (r["tp"], r["fp"], r["fn"], r["n_gt"], r["n_pred"]) == (1, 0, 1, 2, 1)
    assert (r["tp"], r["n_gt"], r["n_pred"]) == _official_counts(gt, pred)
    off = f1_score(gt, pred, remove_boundary=False)
    assert (off["tp"], off["fp"], off["fn"], off["n_gt"], off["n_pred"]) == (2, 0, 1, 3, 2)


def test_cells_in_the_last_two_columns_and_rows_are_removed():
    gt = np.zeros((20, 20), np.uint8)
    gt[18, 8] = 1
    gt[8, 18] = 2
    gt[8, 8] = 3
    out, n = remove_boundary_cells(gt)
    assert n == 1 and out[8, 8] == 1 and out.sum() == 1


def test_empty_prediction():
    gt = _disks((50, 50), [(15, 15), (35, 35)], 5)
    r = f1_score(gt, np.zeros_like(gt))
    assert (r["tp"], r["fp"], r["fn"], r["n_gt"], r["n_pred"]) == (0, 0, 2, 2, 0)
    assert (r["precision"], r["recall"], r["f1"], r["dice"]) == (0.0, 0.0, 0.0, 0.0)


def test_empty_ground_truth_and_both_empty():
    pred = _disks((50, 50), [(15, 15)], 5)
    r = f1_score(np.zeros_like(pred), pred)
    assert (r["tp"], r["fp"], r["fn"], r["f1"]) == (0, 1, 0, 0.0)
    both = f1_score(np.zeros((9, 9), np.uint8), np.zeros((9, 9), np.uint8))
    assert (both["tp"], both["fp"], both["fn"], both["f1"], both["dice"]) == (0, 0, 0, 0.0, 1.0)


def test_foreground_dice_known_value():
    gt = np.zeros((10, 10), np.uint8)
    pred = np.zeros_like(gt)
    gt[0:4, 0:5] = 3  # 20 px
    pred[2:6, 0:5] = 1  # 20 px, 10 shared
    assert foreground_dice(gt, pred) == 0.5
    assert f1_score(gt, pred)["dice"] == 0.5


def test_label_values_above_65535():
    shape = (60, 60)
    centres = [(15, 15), (15, 45), (45, 15), (45, 45)]
    gt = _disks(shape, centres, 6, values=[70_000, 65_536, 1, 4_000_000_000], dtype=np.uint32)
    pred = _disks(shape, centres, 6, values=[2**40, 2**40 + 1, 2**62, 5], dtype=np.uint64)
    r = f1_score(gt, pred)
    assert (r["tp"], r["fp"], r["fn"], r["f1"]) == (4, 0, 0, 1.0)
    # Two distinct cells whose labels collide modulo 2**16 stay distinct.
    pred2 = _disks(shape, centres, 6, values=[1, 65_537, 131_073, 3], dtype=np.int64)
    assert f1_score(gt, pred2)["tp"] == 4


def test_sequential_relabelling_paths_agree():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 6, size=(20, 20)).astype(np.uint64)
    huge = np.where(small > 0, small * np.uint64(2**50) + np.uint64(7), 0).astype(np.uint64)
    drop = np.array([3], np.uint64)
    a, na = _sequential(small, drop)
    b, nb = _sequential(huge, drop * np.uint64(2**50) + np.uint64(7))
    assert na == nb == 4
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int32


def test_accepts_bool_and_integral_float_rejects_others():
    gt = np.zeros((10, 10), bool)
    gt[3:6, 3:6] = True
    assert f1_score(gt, gt.astype(np.float32))["f1"] == 1.0
    with pytest.raises(TypeError, match="non-integer"):
        f1_score(gt, gt * 0.5)
    with pytest.raises(ValueError, match=r"negative labels"):
        f1_score(gt, -gt.astype(np.int8))
    with pytest.raises(ValueError, match=r"pred \(shape \(10, 11\)\) must match gt \(shape \(10, 10\)\)"):
        f1_score(gt, np.zeros((10, 11), np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        f1_score(np.zeros((2, 10, 10), np.uint8), np.zeros((2, 10, 10), np.uint8))
    with pytest.raises(ValueError, match="threshold"):
        f1_score(gt, gt, threshold=0)


def test_arguments_not_modified():
    gt = _disks((50, 50), [(1, 1), (25, 25), (40, 10)], 5, values=[9, 70_000, 3], dtype=np.uint32)
    pred = _disks((50, 50), [(2, 2), (26, 25)], 5, values=[4, 2**33], dtype=np.uint64)
    gt0, pred0 = gt.copy(), pred.copy()
    gt.flags.writeable = False
    pred.flags.writeable = False
    f1_score(gt, pred)
    remove_boundary_cells(gt)
    np.testing.assert_array_equal(gt, gt0)
    np.testing.assert_array_equal(pred, pred0)


# ------------------------------------------------------------------------------------------
# Sparse matching == official dense Hungarian
# ------------------------------------------------------------------------------------------


def _random_case(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Random blobs, and a prediction that shifts, merges, splits and drops some of them."""
    gt = np.zeros((size, size), np.int64)
    for k in range(1, rng.integers(1, 12)):
        y, x = rng.integers(0, size, 2)
        h, w = rng.integers(1, 9, 2)
        gt[y : y + h, x : x + w] = k
    pred = np.roll(gt, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    pred = np.where(rng.random(pred.shape) < 0.1, rng.integers(0, 14, pred.shape), pred)
    if rng.random() < 0.5:  # split a cell in two
        pred = np.where((pred == 1) & (np.arange(size)[None, :] % 2 == 0), 20, pred)
    if rng.random() < 0.5:  # merge two cells
        pred = np.where(pred == 2, 3, pred)
    return gt, pred


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.1, 0.75])
def test_sparse_tp_equals_dense_official_on_random_cases(threshold):
    rng = np.random.default_rng(int(threshold * 100))
    for _ in range(150):
        gt, pred = _random_case(rng, int(rng.integers(8, 30)))
        r = f1_score(gt, pred, threshold=threshold)
        assert (r["tp"], r["n_gt"], r["n_pred"]) == _official_counts(gt, pred, threshold)


def test_sparse_tp_equals_dense_with_many_exact_half_ties():
    # Cells of 2 pixels against 1-pixel predictions: every candidate pair has IoU exactly 0.5,
    # so the graph has many edges and the matching is not trivial.
    rng = np.random.default_rng(7)
    for _ in range(100):
        gt = np.zeros((12, 24), np.int64)
        pred = np.zeros_like(gt)
        for k in range(1, 20):
            y, x = rng.integers(2, 10), rng.integers(2, 21)
            gt[y, x : x + 2] = k
        for k in range(1, 25):
            y, x = rng.integers(2, 10), rng.integers(2, 22)
            pred[y, x] = k
        r = f1_score(gt, pred)
        assert (r["tp"], r["n_gt"], r["n_pred"]) == _official_counts(gt, pred)


def test_count_true_positives_needs_augmenting_path():
    # gt0-pred0, gt0-pred1, gt1-pred0: greedy gt0->pred0 gives 1, the maximum is 2.
    rows, cols, iou = np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([0.5, 0.5, 0.5])
    assert count_true_positives(rows, cols, iou, 2, 2, 0.5) == 2


# ------------------------------------------------------------------------------------------
# Tiles (images of 25 Mpx or more)
# ------------------------------------------------------------------------------------------


def _official_tiled_counts(gt, pred, roi, threshold=0.5):
    h, w = gt.shape
    nh, nw = -(-h // roi), -(-w // roi)
    gpad = np.zeros((nh * roi, nw * roi), np.int64)
    ppad = np.zeros_like(gpad)
    gpad[:h, :w], ppad[:h, :w] = gt, pred
    total = np.zeros(3, int)
    for i in range(nh):
        for j in range(nw):
            sl = np.s_[roi * i : roi * (i + 1), roi * j : roi * (j + 1)]
            total += _official_counts(gpad[sl], ppad[sl], threshold)
    return tuple(int(v) for v in total)


def test_tiling_small_scale_known_answer():
    # 50x50 scored in 20x20 tiles (forced by large_image_pixels): tiles start at 0, 20, 40.
    gt = np.zeros((50, 50), np.uint16)
    gt[5:10, 5:10] = 1  # inside tile (0,0)
    gt[5:10, 17:24] = 2  # crosses x = 20: touches both tiles' frames -> ignored in both
    gt[45:49, 45:50] = 3  # touches the image's right edge, but the last tile is padded to 20: kept
    gt[30:35, 30:35] = 4
    pred = gt.copy()
    pred[30:35, 30:35] = 0  # cell 4 missed
    kw = dict(large_image_pixels=2500, tile_size=20)
    r = f1_score(gt, pred, **kw)
    assert (r["tp"], r["fp"], r["fn"], r["n_gt"], r["n_pred"], r["n_tiles"]) == (2, 0, 1, 3, 2, 9)
    assert (r["tp"], r["n_gt"], r["n_pred"]) == _official_tiled_counts(gt, pred, 20)
    whole = f1_score(gt, pred)  # not tiled: cell 3 touches the frame, cell 2 is whole
    assert (whole["tp"], whole["n_gt"], whole["n_pred"], whole["n_tiles"]) == (2, 3, 2, 1)


def test_tiling_matches_official_on_random_images():
    rng = np.random.default_rng(3)
    for _ in range(20):
        gt, pred = _random_case(rng, 45)
        r = f1_score(gt, pred, large_image_pixels=1, tile_size=16)
        assert (r["tp"], r["n_gt"], r["n_pred"]) == _official_tiled_counts(gt, pred, 16)


def test_tiling_keeps_labels_the_official_dtype_copy_would_wrap():
    # Official: the prediction is copied into the ground truth's uint16 pad, so 65537 -> 1 and the
    # two predicted cells merge into one (TP 0 there). We keep them apart.
    gt = np.zeros((40, 40), np.uint16)
    gt[5:10, 5:10], gt[5:10, 12:17] = 1, 2
    pred = np.zeros((40, 40), np.uint32)
    pred[5:10, 5:10], pred[5:10, 12:17] = 1, 65_537
    r = f1_score(gt, pred, large_image_pixels=1, tile_size=20)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 0)


@pytest.mark.slow
def test_tiling_at_challenge_size():
    # 5000x5000 = 25e6 pixels: tiled in 2000x2000 (3x3 tiles after padding to 6000).
    gt = np.zeros((5000, 5000), np.uint32)
    gt[100:120, 100:120] = 1
    gt[100:120, 1990:2010] = 2  # crosses x = 2000: ignored in both tiles
    gt[3000:3020, 4985:5000] = 3  # touches the image edge, not the padded tile's frame: kept
    gt[4500:4520, 100:120] = 70_000
    pred = gt.copy()
    pred[4500:4520, 100:120] = 0
    r = f1_score(gt, pred)
    assert (r["tp"], r["fp"], r["fn"], r["n_gt"], r["n_pred"], r["n_tiles"]) == (2, 0, 1, 3, 2, 9)
    below = f1_score(gt[:4999], pred[:4999])  # 24,995,000 pixels: one piece, edge cell removed
    assert (below["tp"], below["n_gt"], below["n_tiles"]) == (2, 3, 1)


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------


@st.composite
def label_images(draw, min_side=5, max_side=24):
    h = draw(st.integers(min_side, max_side))
    w = draw(st.integers(min_side, max_side))
    n = draw(st.integers(0, 8))
    img = np.zeros((h, w), np.int64)
    for k in range(1, n + 1):
        y, x = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        dy, dx = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        img[y : y + dy, x : x + dx] = k
    return img


def _has_inner_cell(img: np.ndarray) -> bool:
    frame = np.ones(img.shape, bool)
    frame[2:-2, 2:-2] = False
    return bool(np.setdiff1d(np.unique(img[~frame]), np.unique(img[frame])).size)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_images())
def test_f1_of_identical_images_is_one(img):
    r = f1_score(img, img)
    if _has_inner_cell(img):
        assert r["f1"] == 1.0 and r["fp"] == 0 and r["fn"] == 0
    else:
        assert r["f1"] == 0.0 and r["n_gt"] == 0
    assert f1_score(img, img, remove_boundary=False)["f1"] == (1.0 if img.any() else 0.0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_images(), st.data())
def test_invariant_under_relabelling(gt, data):
    pred = np.roll(gt, data.draw(st.integers(-2, 2)), axis=data.draw(st.integers(0, 1)))
    pred = np.where(np.arange(pred.size).reshape(pred.shape) % 7 == 0, 0, pred)
    base = f1_score(gt, pred)
    values = np.array(data.draw(st.lists(st.integers(1, 2**40), min_size=9, max_size=9, unique=True)), np.int64)
    lut = np.concatenate([[0], values])
    r = f1_score(lut[gt], pred)
    r2 = f1_score(gt, lut[::-1][pred] * (pred > 0))
    for key in ("tp", "fp", "fn", "f1", "dice"):
        assert r[key] == base[key] and r2[key] == base[key]
    assert (base["tp"], base["n_gt"], base["n_pred"]) == _official_counts(gt, pred)
