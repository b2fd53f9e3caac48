"""--measure, --export and --qc through the CLI: files beside the labels, the batch's summary and sheet."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from conftest import REPO, run_python, write_png

from crossct import cli
from crossct.io import read_image
from crossct.measure import measure_cells
from crossct.synthetic import synthetic_cells

SHIPPED = str(REPO / "weights")


@pytest.fixture
def batch(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for i, size in enumerate([(96, 128), (80, 100)]):
        write_png(inp / f"img{i}.png", synthetic_cells(*size, seed=10 + i)[0])
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return inp, tmp_path / "out"


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_report_beside_the_labels(batch, capsys):
    roifile = pytest.importorskip("roifile", reason="roifile is in requirements-dev.txt (crossct[reports])")
    inp, out = batch
    code = cli.main(["-i", str(inp), "-o", str(out), "-w", SHIPPED, "-q",
                     "--measure", "--export", "imagej", "geojson", "--qc"])
    assert code == 1  # the broken file failed; the rest was written
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"img{i}{suffix}" for i in (0, 1) for suffix in
         ("_label.tiff", "_cells.csv", "_rois.zip", "_cells.geojson")] + ["summary.csv", "qc.png"])
    summary = read_csv(out / "summary.csv")
    assert [r["image"] for r in summary] == ["img0.png", "img1.png", "broken.png"]
    for i, row in enumerate(summary[:2]):
        labels = tifffile.imread(out / f"img{i}_label.tiff")
        image = read_image(inp / f"img{i}.png")
        assert labels.max() > 3
        assert (int(row["height"]), int(row["width"]), int(row["cells"])) == (*labels.shape, labels.max())
        assert float(row["median_area"]) == np.median(np.bincount(labels.ravel())[1:])
        assert float(row["seconds"]) > 0 and row["error"] == ""
        cells = read_csv(out / f"img{i}_cells.csv")
        expected = measure_cells(labels, image)
        assert list(cells[0]) == list(expected) and len(cells) == labels.max()
        np.testing.assert_allclose([float(c["mean_intensity_ch0"]) for c in cells], expected["mean_intensity_ch0"])
        assert len(roifile.roiread(out / f"img{i}_rois.zip")) == labels.max()
        assert len(json.loads((out / f"img{i}_cells.geojson").read_text())["features"]) == labels.max()
    assert summary[2]["cells"] == "" and "not a decodable" in summary[2]["error"]
    sheet = read_image(out / "qc.png")
    assert sheet.ndim == 3 and sheet.shape[1] >= 760


def test_no_option_no_extra_file(batch, capsys):
    inp, out = batch
    cli.main(["-i", str(inp), "-o", str(out), "-w", SHIPPED, "-q"])
    assert sorted(p.name for p in out.iterdir()) == ["img0_label.tiff", "img1_label.tiff"]


def test_missing_roifile_stops_before_any_work(batch, capsys, caplog, monkeypatch):
    import crossct.reports as reports

    real = reports.importlib.util.find_spec
    monkeypatch.setattr(reports.importlib.util, "find_spec", lambda name: None if name == "roifile" else real(name))
    inp, out = batch
    assert cli.main(["-i", str(inp), "-o", str(out), "-w", SHIPPED, "--export", "imagej"]) == 2
    assert "--export imagej needs the roifile package: pip install 'crossct[reports]'" in caplog.text
    assert not out.exists() or list(out.iterdir()) == []  # stopped before any output


def test_unwritable_report_fails_that_image_only(batch, capsys, caplog):
    inp, out = batch
    (inp / "broken.png").unlink()
    out.mkdir()
    (out / "img0_cells.csv").mkdir()  # a folder where the table should go
    code = cli.main(["-i", str(inp), "-o", str(out), "-w", SHIPPED, "--measure"])
    assert code == 1
    assert f"FAILED {inp / 'img0.png'}: ReportWriteError: cannot write {out / 'img0_cells.csv'}: Is a directory" \
        in caplog.text
    assert (out / "img0_label.tiff").is_file() and (out / "img1_cells.csv").is_file()
    rows = read_csv(out / "summary.csv")
    assert [(r["image"], bool(r["error"])) for r in rows] == [("img1.png", False), ("img0.png", True)]


def test_unwritable_summary_is_reported(batch, capsys, caplog):
    inp, out = batch
    (inp / "broken.png").unlink()
    out.mkdir()
    (out / "summary.csv").mkdir()
    assert cli.main(["-i", str(inp), "-o", str(out), "-w", SHIPPED, "--measure"]) == 1
    assert f"FAILED {out / 'summary.csv'}: not written: Is a directory" in caplog.text
    assert (out / "img0_cells.csv").is_file()


def test_shards_write_their_own_batch_files(batch, capsys, monkeypatch):
    inp, out = batch
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cli.main(["-i", str(inp), "-o", str(out), "-w", SHIPPED, "-q", "--measure", "--qc"])
    assert {p.name for p in out.iterdir()} >= {"summary-rank1.csv", "qc-rank1.png"}
    assert not (out / "summary.csv").exists()


def test_help_and_import_stay_light():
    result = run_python(["-c", "import sys, crossct.cli; crossct.cli.build_parser().format_help(); "
                               "print(sorted(m for m in ('roifile', 'napari', 'skimage', 'numpy', 'qtpy') "
                               "if m in sys.modules))"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    help_text = cli.build_parser().format_help()
    for option in ("--measure", "--export", "--qc", "imagej", "geojson"):
        assert option in help_text


def test_bad_export_format_lists_valid_ones(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--export", "csv"])
    err = capsys.readouterr().err
    assert "invalid choice: 'csv'" in err and "imagej" in err and "geojson" in err
