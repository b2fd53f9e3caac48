"""The classical baseline (crossct.classical): Otsu + distance-transform watershed."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import disk

from crossct.classical import segment_classical
from evaluate import f1_score

REPO = Path(__file__).resolve().parents[1]
CENTRES = [(20 + 40 * i, 20 + 40 * j) for i in range(3) for j in range(3)]  # 9 disks, radius 10


def _scene(bright_on_dark: bool = True, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((120, 120), np.uint16)
    for k, c in enumerate(CENTRES):
        labels[disk(c, 10, shape=labels.shape)] = k + 1
    rng = np.random.default_rng(seed)
    image = (labels > 0).astype(np.float32) * 0.8 + 0.1 + rng.normal(0, noise, labels.shape).astype(np.float32)
    if not bright_on_dark:
        image = 1.0 - image
    return np.clip(image, 0, 1), labels


@pytest.mark.parametrize("bright_on_dark", [True, False])
def test_finds_disks_in_either_polarity(bright_on_dark):
    image, gt = _scene(bright_on_dark)
    labels = segment_classical(image)
    assert labels.shape == gt.shape and labels.dtype == np.int32
    assert labels.max() == 9
    assert f1_score(gt, labels)["f1"] == 1.0


@pytest.mark.parametrize("bright_on_dark", [True, False])
def test_polarity_picks_the_minority_class_with_large_cells(bright_on_dark):
    # Cells cover 36 % of the image: the foreground is the minority class in either polarity.
    gt = np.zeros((100, 100), np.uint16)
    for k, c in enumerate([(25, 25), (25, 75), (75, 25), (75, 75)]):
        gt[disk(c, 17, shape=gt.shape)] = k + 1
    image = np.where(gt > 0, 0.9, 0.2).astype(np.float32)
    labels = segment_classical(image if bright_on_dark else 1 - image)
    assert f1_score(gt, labels)["f1"] == 1.0


def test_splits_touching_disks():
    gt = np.zeros((60, 80), np.uint16)
    gt[disk((30, 28), 12, shape=gt.shape)] = 1
    gt[disk((30, 50), 12, shape=gt.shape)] = 2  # centres 22 apart, radius 12: touching, overlapping
    image = (gt > 0).astype(np.float32)
    labels = segment_classical(image)
    assert labels.max() == 2
    assert f1_score(gt, labels)["tp"] == 2


def test_rgb_and_integer_inputs_and_no_modification():
    image, gt = _scene()
    rgb16 = np.repeat((image * 60000).astype(np.uint16)[:, :, None], 3, axis=2)
    before = rgb16.copy()
    rgb16.flags.writeable = False
    labels = segment_classical(rgb16)
    np.testing.assert_array_equal(rgb16, before)
    assert labels.shape == (120, 120) and labels.max() == 9
    np.testing.assert_array_equal(segment_classical(image[:, :, None]), segment_classical(image))


def test_blank_images_and_small_objects_give_no_cells():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert segment_classical(np.zeros((32, 32), np.float32)).max() == 0
        assert segment_classical(np.full((32, 32, 3), 7, np.uint8)).max() == 0
        speck = np.zeros((64, 64), np.float32)
        speck[30:33, 30:33] = 1  # 9 pixels < min_size 16
        assert segment_classical(speck, smoothing=0).max() == 0
        assert segment_classical(speck, smoothing=0, min_size=4).max() == 1


def test_labels_are_sequential():
    image, _ = _scene(noise=0.2, seed=3)
    labels = segment_classical(image)
    values = np.unique(labels)
    np.testing.assert_array_equal(values, np.arange(values.size))


def test_rejects_non_image_shapes():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        segment_classical(np.zeros((2, 3, 4, 5)))


@pytest.mark.data
@pytest.mark.slow
def test_on_real_dsb2018_val_images():
    data = Path(os.environ.get("CROSSCT_DATA") or (REPO / ".." / "shared" / "data")).resolve()
    if not (data / "manifest.csv").is_file():
        pytest.skip(f"project data not found at {data} (set CROSSCT_DATA)")
    from crossct.io import read_image
    from crossct.normalize import normalize_image
    from evaluate import read_labels

    with open(data / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val" and r["source"] == "dsb2018"][:8]
    assert len(rows) == 8, "expected at least 8 dsb2018 val images in the manifest"
    f1s = [
        f1_score(read_labels(data / r["label"]), segment_classical(normalize_image(read_image(data / r["image"]))))["f1"]
        for r in rows
    ]
    # Mostly fluorescence nuclei, where Otsu + watershed works: measured mean 0.77 on these 8.
    assert np.mean(f1s) > 0.65
