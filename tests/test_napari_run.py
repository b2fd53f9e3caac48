"""What the napari widget runs, without Qt: the settings adapter and the worker's segmentation."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from conftest import CountingPredictor

from crossct.config import ModelSpec
from crossct.demo import demo_image
from crossct.napari.run import ProgressPredictor, SegmentationCancelled, layer_image, run_segmentation
from crossct.napari.settings import SEGMENT, SETTINGS, Setting, apply_settings, default_values
from crossct.pipeline import segment
from crossct.predictors import load_predictor
from crossct.tiling import tile_total


@pytest.fixture(scope="module")
def shipped():
    return load_predictor(None, device="cpu")


# --------------------------------------------------------------------------- settings


def test_defaults_are_the_weights_own(shipped):
    values = default_values(shipped.spec)
    post, tiling = shipped.spec.postprocess, shipped.spec.tiling
    assert values == {"method": post.method, "seed_threshold": post.seed_threshold,
                      "mask_threshold": post.mask_threshold, "interior_threshold": post.interior_threshold,
                      "min_size": post.min_size, "min_relative_size": post.min_relative_size,
                      "overlap": tiling.overlap, "tta": shipped.spec.test_time.flips,
                      "auto_size": shipped.spec.size.auto, "diameter": shipped.spec.size.diameter}
    assert values["seed_threshold"] != ModelSpec().postprocess.seed_threshold  # tuned, not the class default


def test_apply_settings_replaces_fields_and_checks_them(shipped):
    spec, keywords = apply_settings(shipped.spec, {"method": "threshold", "min_size": 5, "overlap": 0.5})
    assert (spec.postprocess.method, spec.postprocess.min_size, spec.tiling.overlap) == ("threshold", 5, 0.5)
    assert spec.postprocess.seed_threshold == shipped.spec.postprocess.seed_threshold and keywords == {}
    assert shipped.spec.tiling.overlap == 0.25  # the predictor's spec is not modified
    with pytest.raises(ValueError, match=r"unknown settings \['radius'\]; valid: \["):
        apply_settings(shipped.spec, {"radius": 30})
    with pytest.raises(ValueError, match=r"overlap: 1.0 must be >= 0"):
        apply_settings(shipped.spec, {"overlap": 1.0})
    with pytest.raises(ValueError, match="method: \"otsu\" is not one of"):
        apply_settings(shipped.spec, {"method": "otsu"})


def test_segment_keywords_take_segments_defaults_and_reach_it(shipped, monkeypatch):
    """A row with target SEGMENT (how diameter / tta will be offered) gets segment()'s default
    and is passed to segment() as a keyword; a keyword segment() lacks is refused."""
    rows = SETTINGS + (Setting("timings", "timings", SEGMENT),)
    assert default_values(shipped.spec, rows)["timings"] is None
    spec, keywords = apply_settings(shipped.spec, {"timings": "T", "min_size": 3}, rows)
    assert keywords == {"timings": "T"} and spec.postprocess.min_size == 3
    with pytest.raises(ValueError, match="segment has no keyword 'not_yet'"):
        default_values(shipped.spec, SETTINGS + (Setting("not_yet", "later", SEGMENT),))


# --------------------------------------------------------------------------- layer data


def test_layer_image_accepts_planes_and_refuses_stacks():
    plane = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert layer_image(plane, False, "a") is not None
    np.testing.assert_array_equal(layer_image([plane, plane[::2, ::2]], False, "ms"), plane)  # multiscale: level 0
    np.testing.assert_array_equal(layer_image(plane[None, None], False, "b"), plane)
    assert layer_image(np.zeros((3, 4, 3), np.uint8), True, "rgb").shape == (3, 4, 3)
    assert layer_image(plane > 5, False, "mask").dtype == np.uint8
    with pytest.raises(ValueError, match=r"image layer 'stack' has shape \(5, 3, 4\): CrossCT segments one 2-D"):
        layer_image(np.zeros((5, 3, 4)), False, "stack")
    with pytest.raises(ValueError, match=r"RGB layer must be \(H, W, 3 or 4\)"):
        layer_image(np.zeros((3, 4, 2)), True, "odd")
    with pytest.raises(ValueError, match="dtype complex128"):
        layer_image(np.zeros((3, 4), complex), False, "c")


# --------------------------------------------------------------------------- runs


def _progress_run(shipped, monkeypatch, image, values, spec=None):
    import crossct.napari.run as run

    counter = CountingPredictor(shipped)
    if spec is not None:
        counter.spec = spec
    monkeypatch.setattr(run, "cached_predictor", lambda weights: counter)
    calls = []
    outcome = run.run_segmentation(image, False, "nuclei", None, values,
                                   on_progress=lambda done, total: calls.append((done, total)))
    assert outcome.status == "done", outcome.message
    assert all(done <= total for done, total in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and [t for _, t in calls] == sorted(t for _, t in calls)
    return outcome, calls, counter.tiles


def test_same_labels_as_segment_with_progress(shipped, monkeypatch):
    """With the automatic size the network runs a half-scale probe, the image's own grid and, for
    these cells, an enlarged pass: the bar ends at the tiles really run, more than the image's grid."""
    image = demo_image("synthetic_nuclei")
    # A size range these nuclei (22 px across) fall below, whatever range the shipped weights were tuned to.
    spec = shipped.spec.replace(size=dataclasses.replace(shipped.spec.size, auto=True, reference_diameter=36.0,
                                                         min_diameter=28.0, max_diameter=45.0))
    outcome, calls, tiles = _progress_run(shipped, monkeypatch, image, default_values(spec), spec)
    np.testing.assert_array_equal(outcome.labels, segment(image, shipped, spec))
    grid = tile_total(*image.shape[:2], shipped.spec.tiling)
    assert grid == 6  # 384 x 512 at tile 256, stride 192: 2 x 3 tiles
    assert tiles > grid + 1  # probe (1 tile) + own grid + the enlarged pass
    assert calls[-1] == (tiles, tiles)
    assert outcome.message.startswith(f"nuclei: {outcome.labels.max()} cells in ")


def test_progress_counts_every_flip(shipped, monkeypatch):
    image = demo_image("synthetic_nuclei")
    values = {**default_values(shipped.spec), "auto_size": False, "tta": True}
    _, calls, tiles = _progress_run(shipped, monkeypatch, image, values)
    assert tiles == 24 and calls[-1] == (24, 24)  # 6 tiles x 4 views
    assert all(total == 24 for _, total in calls)  # announced before the first tile ran


def test_settings_change_the_result(shipped):
    image = demo_image("synthetic_nuclei")
    values = default_values(shipped.spec)
    big_only = run_segmentation(image, False, "n", None, {**values, "min_size": 400}).labels
    every = run_segmentation(image, False, "n", None, values).labels
    assert 0 < big_only.max() < every.max()
    assert np.bincount(big_only.ravel())[1:].min() >= 400


def test_large_image_takes_the_block_path(shipped, monkeypatch):
    """With blocks of 256 px (instead of 2048) a 600 x 700 image goes block by block, as the CLI
    would take a whole slide; the widget's run gives segment()'s labels and counts every tile once."""
    import crossct.blocks as blocks
    import crossct.napari.run as run

    tiling = dataclasses.replace(shipped.spec.tiling, block_size=256, block_margin=64)
    small_blocks = ProgressPredictor(shipped)
    small_blocks.spec = shipped.spec.replace(tiling=tiling)
    monkeypatch.setattr(run, "cached_predictor", lambda weights: small_blocks)
    used = []
    real = blocks.segment_blocks
    monkeypatch.setattr(blocks, "segment_blocks", lambda *a, **k: used.append(1) or real(*a, **k))
    from crossct.synthetic import synthetic_cells

    image = synthetic_cells(600, 700, seed=4)[0]
    calls = []
    values = {**default_values(small_blocks.spec), "auto_size": False}  # one pass, at the image's own scale
    outcome = run.run_segmentation(image, False, "big", None, values,
                                   on_progress=lambda done, total: calls.append((done, total)))
    assert outcome.status == "done" and used == [1]
    np.testing.assert_array_equal(outcome.labels, segment(image, shipped, apply_settings(small_blocks.spec, values)[0]))
    grid = tile_total(*image.shape[:2], tiling)
    assert calls[-1] == (grid, grid) and all(total == grid for _, total in calls)


def test_cancel_stops_between_tiles(shipped):
    image = demo_image("synthetic_nuclei")
    cancel = threading.Event()
    calls = []

    def progress(done, total):
        calls.append(done)
        cancel.set()  # press Cancel as soon as the first batch is back

    outcome = run_segmentation(image, False, "nuclei", None, default_values(shipped.spec), progress, cancel)
    assert outcome.status == "cancelled" and outcome.labels is None
    assert "segmentation of 'nuclei' cancelled" in outcome.message
    assert max(calls) < tile_total(*image.shape[:2], shipped.spec.tiling)
    with pytest.raises(SegmentationCancelled):
        ProgressPredictor(shipped, cancel=cancel).predict(np.zeros((1, 3, 256, 256), np.float32))


@pytest.mark.parametrize("case", ["stack", "weights", "setting"])
def test_user_errors_become_messages(case, shipped, tmp_path):
    image, weights, values = demo_image("synthetic_nuclei"), None, default_values(shipped.spec)
    if case == "stack":
        image = np.stack([image] * 4)
    elif case == "weights":
        weights = tmp_path  # an empty folder
    else:
        values = {**values, "overlap": 1.0}
    outcome = run_segmentation(image, False, "img", weights, values)
    assert outcome.status == "failed" and outcome.labels is None
    assert outcome.message.startswith("CrossCT could not segment 'img': ")
    expected = {"stack": "has shape (4, 384, 512)", "weights": f"no model weights found at {tmp_path}",
                "setting": "overlap: 1.0 must be >= 0"}[case]
    assert expected in outcome.message
