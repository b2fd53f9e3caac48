"""Cell-size rescaling and flip test-time augmentation at inference (crossct.size, crossct.tta,
crossct.pipeline.segment_stages)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from crossct import pipeline
from crossct import config
from crossct.config import ModelSpec, PostprocessConfig, SizeConfig, TilingConfig
from crossct.pipeline import segment, zoom_factor
from crossct.size import area_weighted_diameter, cell_diameters, median_diameter, resize_labels
from crossct.tta import FlipAveraging, with_test_time


class PointwiseNet:
    """Outputs from each pixel alone: foreground = cell distance = intensity (flip-equivariant)."""

    def __init__(self, spec):
        self.spec, self.description, self.tiles = spec, "pointwise", 0

    def predict(self, batch):
        self.tiles += batch.shape[0]
        x = batch[:, :1]
        zeros = np.zeros_like(x)
        return np.concatenate([1 - x, x, zeros, x, zeros], axis=1)


def disks(shape, radius, centres):
    """(image, labels): separate disks whose intensity is their own distance map (1 at the centre)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        labels[np.hypot(yy - cy, xx - cx) <= radius] = i
    image = np.zeros(shape, np.float32)
    for i in range(1, len(centres) + 1):
        d = ndi.distance_transform_edt(labels == i)
        image[labels == i] = (d / d.max())[labels == i]
    return (image * 250).astype(np.uint8), labels


def _spec(**size):
    return ModelSpec(tiling=TilingConfig(tile_size=64, overlap=0.25),
                     postprocess=PostprocessConfig(seed_threshold=0.5, mask_threshold=0.05, smooth_sigma=0.0,
                                                   min_seed_size=1, min_size=8),
                     size=SizeConfig(**size))


@pytest.fixture
def passes(monkeypatch):
    """The (H, W) of every image the pipeline segments at one scale."""
    shapes = []
    original = pipeline._segment_stages

    def record(image, *args):
        shapes.append(image.shape[:2])
        return original(image, *args)

    monkeypatch.setattr(pipeline, "_segment_stages", record)
    return shapes


def _matched(labels, truth):
    """IoU of every true cell with the predicted cell covering its centre."""
    ious = []
    for value in range(1, truth.max() + 1):
        cell = truth == value
        cy, cx = (int(round(c)) for c in ndi.center_of_mass(cell))
        pred = labels == labels[cy, cx] if labels[cy, cx] else np.zeros_like(cell)
        ious.append((cell & pred).sum() / (cell | pred).sum())
    return ious


def test_cell_diameters_are_those_of_disks_of_the_same_area():
    labels = np.zeros((30, 30), np.uint16)
    labels[:10, :10] = 1
    labels[20:24, 20:30] = 3  # label 2 absent
    assert cell_diameters(labels) == pytest.approx([math.sqrt(400 / math.pi), math.sqrt(160 / math.pi)])
    assert math.isnan(median_diameter(np.zeros((4, 4), np.uint8)))
    with pytest.raises(ValueError, match="2-D integer"):
        cell_diameters(np.zeros((4, 4), np.float32))


def test_area_weighted_diameter_is_that_of_the_cells_holding_most_of_the_area():
    labels = np.zeros((60, 60), np.uint16)
    labels[5:25, 5:25] = 1  # 400 px
    for i in range(5):
        labels[40 + 4 * i, 5:7] = 2 + i  # five 2-px fragments: the median is a fragment's
    assert median_diameter(labels) == pytest.approx(math.sqrt(8 / math.pi))
    assert area_weighted_diameter(labels) == pytest.approx(math.sqrt(1600 / math.pi))
    labels[30:50, 30:60] = 9  # 600 px: now more than half the area
    assert area_weighted_diameter(labels) == pytest.approx(math.sqrt(2400 / math.pi))
    # ... but it touches the edge: among the cells clear of it, cell 1 holds most of the area
    assert area_weighted_diameter(labels, clear_border=True) == pytest.approx(math.sqrt(1600 / math.pi))
    labels[labels == 1] = 0
    assert area_weighted_diameter(labels, clear_border=True) == pytest.approx(math.sqrt(8 / math.pi))
    assert math.isnan(area_weighted_diameter(np.zeros((4, 4), np.uint8)))


def test_resize_labels_keeps_ids_and_dtype():
    labels = np.arange(12, dtype=np.uint32).reshape(3, 4) + 70000
    up = resize_labels(labels, (6, 8))
    assert up.dtype == np.uint32 and np.array_equal(up[::2, ::2], labels)
    assert np.array_equal(resize_labels(up, (3, 4)), labels)


@pytest.mark.parametrize("diameter, expected", [(120.0, 0.25), (60.0, 0.5), (31.0, 1.0), (5.0, 4.0), (1.0, 4.0)])
def test_zoom_factor_brings_cells_to_the_reference_within_limits(diameter, expected):
    assert zoom_factor(diameter, SizeConfig(reference_diameter=30.0, max_zoom=4.0)) == pytest.approx(expected)


@pytest.mark.parametrize("diameter, expected", [(5.0, 2.0), (12.0, 2.0), (20.0, 1.5), (120.0, 0.25)])
def test_enlarging_is_limited_by_max_enlarge_not_reducing(diameter, expected):
    size = SizeConfig(reference_diameter=30.0, max_zoom=4.0, max_enlarge=2.0)
    assert zoom_factor(diameter, size) == pytest.approx(expected)


def test_weights_without_max_enlarge_keep_enlarging_up_to_max_zoom():
    """model.json files written before the setting existed mean what they meant: up to max_zoom."""
    from crossct.config import ModelSpec

    data = ModelSpec().to_dict()
    del data["size"]["max_enlarge"]
    size = ModelSpec.from_dict(data).size
    assert size.max_enlarge == 4.0 and zoom_factor(5.0, size) == pytest.approx(4.0)


def test_large_cells_are_segmented_again_at_a_smaller_scale(passes):
    image, truth = disks((400, 400), 60, [(100, 100), (100, 290), (290, 200)])  # 120 px across
    labels = segment(image, PointwiseNet(_spec(auto=True)))
    # The half-scale probe measures ~115 px (> 80): segmented at about 30 / 115, never at full size.
    assert passes[0] == (200, 200) and len(passes) == 2 and 95 <= passes[1][0] == passes[1][1] <= 110
    assert labels.shape == truth.shape and labels.max() == 3
    assert min(_matched(labels, truth)) > 0.8


def large_cells_among_fragments():
    """Two 120-px cells and five 8-px fragments: the median diameter is a fragment's."""
    centres = [(100, 100), (290, 290)] + [(60 + 40 * i, 340) for i in range(3)] + [(340, 60), (340, 120)]
    image, truth = disks((400, 400), 60, centres[:2])
    specks, _ = disks((400, 400), 4, centres[2:])
    return np.maximum(image, specks), truth


@pytest.mark.parametrize("max_area_diameter, scaled", [(0.0, False), (100.0, True), (140.0, False)])
def test_large_cells_among_fragments_are_found_by_their_share_of_the_area(passes, max_area_diameter, scaled):
    image, truth = large_cells_among_fragments()
    labels = segment(image, PointwiseNet(_spec(auto=True, max_area_diameter=max_area_diameter)))
    assert passes[0] == (200, 200)
    if scaled:  # ~117 px by area: segmented at about 30 / 117, as cells of that size alone would be
        assert len(passes) == 2 and 95 <= passes[1][0] <= 110
    else:  # under the limit, the fragments decide: 8 px, too small, so enlarged by about 30 / 8
        assert passes[1] == (400, 400) and len(passes) == 3 and passes[2][0] > 1400
    assert min(_matched(labels, truth)) > 0.8


def test_large_cells_found_by_area_are_brought_to_their_own_reference(passes):
    """``area_reference_diameter``: the cells found by their share of the area (~117 px) are brought
    to that size, not to the median cell's reference (30 px)."""
    image, truth = large_cells_among_fragments()
    labels = segment(image, PointwiseNet(_spec(auto=True, max_area_diameter=100.0, area_reference_diameter=60.0)))
    assert passes[0] == (200, 200)
    assert len(passes) == 2 and 190 <= passes[1][0] <= 215  # about 60 / 117 of 400, not 30 / 117
    assert min(_matched(labels, truth)) > 0.8
    data = ModelSpec().to_dict()
    del data["size"]["area_reference_diameter"]  # weights tuned before the setting: the median's reference
    assert ModelSpec.from_dict(data).size.area_reference_diameter == 0.0


def test_a_clump_on_the_edge_is_not_read_as_large_cells(passes):
    """Dense cells merged at the probe's scale into one clump reaching the edge (a crop of tissue):
    the area-weighted size counts only cells clear of the edge, so the image is not shrunk."""
    image, _ = disks((300, 300), 60, [(30, 30), (270, 270)])  # two clumps cut by the edge
    specks, _ = disks((300, 300), 4, [(150, 50 * i) for i in range(1, 6)])
    segment(np.maximum(image, specks), PointwiseNet(_spec(auto=True, max_area_diameter=80.0)))  # clumps: ~91 px
    assert passes[0] == (150, 150) and passes[1] == (300, 300)  # the probe, then the image's own scale
    assert min(shape[0] for shape in passes[1:]) == 300  # never shrunk


def test_max_area_diameter_is_off_or_above_max_diameter():
    with pytest.raises(config.SpecError, match="max_area_diameter"):
        SizeConfig(max_diameter=60.0, max_area_diameter=50.0)
    data = ModelSpec().to_dict()
    del data["size"]["max_area_diameter"]  # weights tuned before the setting: off
    assert ModelSpec.from_dict(data).size.max_area_diameter == 0.0


def test_cells_in_range_are_segmented_at_their_own_scale(passes):
    image, truth = disks((200, 200), 20, [(50, 50), (50, 150), (150, 100)])  # 40 px across
    labels = segment(image, PointwiseNet(_spec(auto=True)))
    assert passes == [(100, 100), (200, 200)]  # the probe, then the image as it is
    assert min(_matched(labels, truth)) > 0.8


def test_a_given_diameter_rescales_without_a_first_pass(passes):
    image, truth = disks((400, 400), 60, [(100, 100), (100, 290), (290, 200)])
    labels = segment(image, PointwiseNet(_spec(auto=False, diameter=120.0)))
    assert passes == [(100, 100)]
    assert labels.shape == (400, 400) and min(_matched(labels, truth)) > 0.8
    plain = segment(image, PointwiseNet(_spec()))  # neither: the image's own scale, once
    assert passes[-1] == (400, 400) and plain.shape == (400, 400)


def test_small_cells_are_segmented_again_enlarged(passes):
    image, truth = disks((120, 120), 3, [(20, 20), (20, 60), (60, 40), (90, 90)])  # 6 px across
    segment(image, PointwiseNet(_spec(auto=True, min_diameter=10.0)))
    assert passes[:2] == [(60, 60), (120, 120)] and passes[2] == (480, 480)  # 30 / 6 = 5, capped at 4


def test_min_size_is_in_the_images_pixels_at_every_scale(passes):
    """Enlarged 4x, a 13-px speck is 208 px where the watershed's min_size (40) applies: it is
    removed again at the image's size, as at the image's own scale."""
    image, truth = disks((120, 120), 5, [(20, 20), (20, 60), (60, 40), (90, 90)])  # 10 px across, 81 px
    speck_image, speck = disks((120, 120), 2, [(95, 30)])  # 4 px across, 13 px
    image, truth = np.maximum(image, speck_image), np.where(speck > 0, 5, truth)
    spec = _spec(diameter=7.5)  # zoom 30 / 7.5 = 4
    spec = spec.replace(postprocess=dataclasses.replace(spec.postprocess, min_size=40))
    for run in (spec, spec.replace(size=SizeConfig())):
        labels = segment(image, PointwiseNet(run))
        assert labels.max() == 4 and labels[95, 30] == 0
        assert min(_matched(labels, np.where(truth == 5, 0, truth))) > 0.5
    assert passes == [(480, 480), (120, 120)]


def test_enlarging_is_capped_by_the_pixel_limit(passes, monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_ZOOMED_PIXELS", 4 * 100 * 100)
    image, _ = disks((100, 100), 3, [(30, 30), (70, 70)])  # 6 px cells: zoom 4 wanted
    segment(image, PointwiseNet(_spec(diameter=6.0)))
    assert passes == [(200, 200)]  # capped at 2x (4 x the pixels)


class RampNet(PointwiseNet):
    """Not flip-equivariant: every output channel is the column position within the tile."""

    def predict(self, batch):
        self.tiles += batch.shape[0]
        ramp = np.linspace(0, 1, batch.shape[3], dtype=np.float32)
        return np.broadcast_to(ramp, (batch.shape[0], 5, batch.shape[2], batch.shape[3])).copy()


def test_flip_averaging_matches_an_equivariant_network_and_averages_the_rest():
    rng = np.random.default_rng(0)
    batch = rng.random((3, 3, 64, 64), dtype=np.float32)
    plain = PointwiseNet(ModelSpec())
    averaged = FlipAveraging(PointwiseNet(ModelSpec()))
    np.testing.assert_allclose(averaged.predict(batch), plain.predict(batch), atol=1e-6)
    assert averaged.inner.tiles == 12  # the 4 views in one call
    ramp = FlipAveraging(RampNet(ModelSpec())).predict(batch)
    np.testing.assert_allclose(ramp, 0.5, atol=1e-6)  # x and its mirror 1 - x, averaged
    assert averaged.spec is averaged.inner.spec  # the rest of the predictor shows through
    assert with_test_time(averaged, True) is averaged and with_test_time(plain, False) is plain


def test_spec_flips_run_every_tile_four_times():
    image, truth = disks((200, 200), 20, [(50, 50), (50, 150), (150, 100)])
    spec = _spec()
    once, four = PointwiseNet(spec), PointwiseNet(spec)
    a = segment(image, once)
    b = segment(image, four, dataclasses.replace(spec, test_time=config.TestTimeConfig(flips=True)))
    assert four.tiles == 4 * once.tiles
    np.testing.assert_array_equal(a, b)  # an equivariant network: the same labels


def test_cli_options_override_the_weights_settings(tmp_path, tiny_weights, caplog):
    import argparse

    from crossct import cli

    spec = ModelSpec()
    given = cli._test_time_options(spec, argparse.Namespace(diameter="45", tta=True))
    assert given.size.diameter == 45.0 and given.test_time.flips is True
    auto = cli._test_time_options(spec, argparse.Namespace(diameter="auto", tta=None))
    assert auto.size.auto is True and auto.size.diameter == 0.0 and auto.test_time == spec.test_time
    assert cli._test_time_options(spec, argparse.Namespace(diameter=None, tta=None)) == spec
    automatic = spec.replace(size=dataclasses.replace(spec.size, auto=True, diameter=20.0))
    native = cli._test_time_options(automatic, argparse.Namespace(diameter="native", tta=None))
    assert native.size.auto is False and native.size.diameter == 0.0
    image_dir = tmp_path / "in"
    image_dir.mkdir()
    (image_dir / "a.png").write_bytes(b"")
    code = cli.main(["-i", str(image_dir), "-o", str(tmp_path / "out"), "-w", str(tiny_weights), "--diameter", "-3"])
    assert code == 2 and "--diameter '-3': give a cell diameter in pixels" in caplog.text


def test_size_tuning_turns_on_the_area_limit_where_fragments_hide_large_cells():
    from crossct.train.tune import tune_size

    image, truth = large_cells_among_fragments()  # the truth has the two cells, not the fragments
    spec = _spec()
    items = [{"image": image, "label": truth, "source": "synthetic", "name": "msc-like"}]
    best, summary, trace = tune_size(PointwiseNet(spec), items, spec)
    # Median-only sizes keep the fragments (F1 2 / 4.5); rescaled by the cells' area they vanish.
    assert best.auto and best.max_area_diameter == 100.0 and summary["mean"] == 1.0
    assert trace[0][0] == "off" and trace[0][1] < 0.5
    assert [name for name, _ in trace if "by area" in name][-1].endswith("above 100")
