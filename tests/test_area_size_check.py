"""benchmarks.area_size_check: the images an area-weighted large-cell limit rescales."""

import pytest

from conftest import manifest_folder, training_folders
from benchmarks import area_size_check


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("area")
    return manifest_folder(training_folders(root / "synthetic", n_train=1), root / "data")


def test_weights_without_a_limit_are_refused_unless_one_is_given(tiny_weights, data):
    with pytest.raises(ValueError, match="no area-weighted limit"):
        area_size_check.check(str(tiny_weights), data, "val", None)


def test_lists_exactly_the_images_the_limit_rescales(tiny_weights, data, monkeypatch):
    from crossct import pipeline

    probed = []

    def measure(image, predictor, spec, timings):  # the second val image reads as 200-px cells
        probed.append(image.shape)
        big = len(probed) == 2
        return (pipeline.inner_area_weighted_diameter, 200.0) if big else (None, float("nan"))

    monkeypatch.setattr(pipeline, "large_cell_measure", measure)
    rows = area_size_check.check(str(tiny_weights), data, "val", 160.0)
    assert len(probed) == 4 and len(rows) == 1  # two probes, then the listed image segmented twice
    assert rows[0]["split"] == "val" and rows[0]["diameter"] == 200.0
    assert 0.0 <= rows[0]["f1_without"] <= 1.0 and 0.0 <= rows[0]["f1_with"] <= 1.0
    assert "f1_at" not in rows[0]
    probed.clear()
    rows = area_size_check.check(str(tiny_weights), data, "val", 160.0, references=[48.0, 80.0])
    assert len(probed) == 6 and sorted(rows[0]["f1_at"]) == [48.0, 80.0]  # and once more per size
