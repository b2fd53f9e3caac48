"""crossct.bioimageio: the shipped weights as a BioImage Model Zoo package that passes the format's
own test, and that predict.py takes as a weights folder once unzipped."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
import tifffile
from conftest import REPO, run_predict, write_png

from crossct import bioimageio, cli
from crossct.config import load_spec
from crossct.predictors import WeightsError

pytest.importorskip("bioimageio.core", reason="the bioimageio extra is not installed (requirements-dev.txt has it)")

WEIGHTS = REPO / "weights"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return bioimageio.build_package(WEIGHTS, tmp_path_factory.mktemp("zoo") / "crossct.zip")


@pytest.fixture(scope="module")
def unpacked(package):
    folder = package.parent / "crossct-model"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    return folder


def test_package_contents(package):
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
    assert {"rdf.yaml", "model.onnx", bioimageio.TORCHSCRIPT_NAME, "model.json", "README.md", "cover.png",
            "test_input.npy", "test_output.npy"} <= names
    descr = bioimageio.load_package(package)
    assert str(descr.license) == "CC-BY-NC-SA-4.0"
    assert [str(c) for c in descr.outputs[0].axes[1].channel_names] == [
        "background", "interior", "boundary", "cell_distance", "neighbor_distance"]
    assert {str(c.doi) for c in descr.cite if c.doi} == {bioimageio.SCHERR_DOI}
    # The format's preprocessing is CrossCT's normalisation: percentiles 1-99 per channel, clipped.
    scale, clip = [p for p in descr.inputs[0].preprocessing if p.id != "ensure_dtype"]
    assert (scale.id, scale.kwargs.min_percentile, scale.kwargs.max_percentile) == ("scale_range", 1.0, 99.0)
    assert [str(a) for a in scale.kwargs.axes] == ["y", "x"]
    assert (clip.id, clip.kwargs.min, clip.kwargs.max) == ("clip", 0.0, 1.0)


# bioimageio.core loads the TorchScript copy with torch.jit.load, which torch deprecates.
@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:DeprecationWarning")
def test_bioimageio_test_passes(package):
    """The format's own check: the test input through the preprocessing and every weight format,
    compared with the test output, and inference at other sizes and batch sizes."""
    from bioimageio.core import test_description

    # A description loaded with its files checked is tested as it is (no reload that would
    # check the citation's URL over the network).
    summary = test_description(bioimageio.load_package(package))
    tested = {d.name for d in summary.details}
    assert summary.status == "passed", summary.format()
    assert {"Reproduce test outputs from test inputs (onnx)",
            "Reproduce test outputs from test inputs (torchscript)"} <= tested


def test_unpacked_package_is_a_weights_folder(unpacked, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_png(inputs / "crop.png", bioimageio.example_crop(load_spec(WEIGHTS / "model.json")))
    result = run_predict(["-i", str(inputs), "-o", str(tmp_path / "package"), "-w", str(unpacked)])
    assert result.returncode == 0, result.stderr
    assert cli.main(["-i", str(inputs), "-o", str(tmp_path / "weights"), "-w", str(WEIGHTS)]) == 0
    labels = tifffile.imread(tmp_path / "package" / "crop_label.tiff")
    assert labels.max() > 20
    np.testing.assert_array_equal(labels, tifffile.imread(tmp_path / "weights" / "crop_label.tiff"))


def test_weights_folder_without_model_json(tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(WEIGHTS / "model.onnx", folder)
    with pytest.raises(WeightsError, match=r"no model\.json in it"):
        bioimageio.build_package(folder, tmp_path / "out.zip")
    assert bioimageio.main([str(folder), str(tmp_path / "out.zip")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "model.json" in err and "\n" not in err
    assert not (tmp_path / "out.zip").exists() and [p.name for p in tmp_path.iterdir()] == ["weights"]


def test_refuses_weights_that_fail_their_checksum(tmp_path):
    folder = shutil.copytree(WEIGHTS, tmp_path / "weights", ignore=shutil.ignore_patterns("model.pt"))
    with open(folder / "model.onnx", "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        bioimageio.build_package(folder, tmp_path / "out.zip")
