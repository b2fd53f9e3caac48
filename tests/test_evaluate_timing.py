"""Running-time tolerance and the one-image-per-run timing harness (evaluate.timing)."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from evaluate import image_hw, rank_time, time_command, timing_totals, tolerance, write_timing_csv
from evaluate.__main__ import main

# A stand-in for predict.py: checks that its input folder holds exactly one image, then writes
# <stem>_label.tiff (content irrelevant to the harness) and, for the test, what it saw.
PREDICT = r"""
import os, sys, pathlib
inp, out = sys.argv[1], sys.argv[2]
files = os.listdir(inp)
assert len(files) == 1, files
stem = files[0].split(".")[0]
pathlib.Path(out, stem + "_label.tiff").write_bytes(b"label")
pathlib.Path(out, stem + ".seen").write_text(inp + "\n" + files[0])
"""


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "cell_00001.tif", np.zeros((30, 40, 3), np.uint8))
    cv2.imwrite(str(folder / "cell_00002.png"), np.zeros((20, 10), np.uint8))
    cv2.imwrite(str(folder / "cell_00003.b.bmp"), np.zeros((5, 7, 3), np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_tolerance_and_rank_time_known_values():
    assert tolerance(1000, 1000) == 10.0
    assert tolerance(1, 1) == 10.0
    assert tolerance(1000, 1001) == pytest.approx(10.01)
    assert tolerance(2000, 3000) == 60.0
    assert tolerance(5000, 5000) == 250.0
    assert rank_time(5.0, 100, 100) == 0.0
    assert rank_time(15.0, 1000, 1000) == 5.0
    assert rank_time(70.0, 2000, 3000) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        tolerance(-1, 5)


def test_image_hw_reads_tiff_png_bmp_jpg(tmp_path: Path):
    tifffile.imwrite(tmp_path / "a.tiff", np.zeros((31, 17), np.uint16))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((12, 9, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((2, 12, 9), np.uint8), photometric="minisblack", metadata={"axes": "CYX"})
    cv2.imwrite(str(tmp_path / "d.png"), np.zeros((8, 6, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "e.bmp"), np.zeros((3, 4), np.uint8))
    cv2.imwrite(str(tmp_path / "f.jpg"), np.zeros((16, 24), np.uint8))
    expected = {"a.tiff": (31, 17), "b.tif": (12, 9), "c.tif": (12, 9), "d.png": (8, 6), "e.bmp": (3, 4), "f.jpg": (16, 24)}
    assert {name: image_hw(tmp_path / name) for name in expected} == expected


def test_time_command_one_image_per_fresh_folder(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    rows = time_command(images, out, [sys.executable, "-c", PREDICT, "{in}", "{out}"])
    assert [r["image"] for r in rows] == ["cell_00001.tif", "cell_00002.png", "cell_00003.b.bmp"]
    assert [(r["height"], r["width"]) for r in rows] == [(30, 40), (20, 10), (5, 7)]
    assert all(r["status"] == "ok" and r["returncode"] == 0 for r in rows)
    assert all(r["tolerance_s"] == 10.0 and r["rank_time_s"] == 0.0 and r["real_time_s"] > 0 for r in rows)
    seen = [(out / f"{stem}.seen").read_text().split("\n") for stem in ("cell_00001", "cell_00002", "cell_00003")]
    folders = [Path(s[0]) for s in seen]
    assert [s[1] for s in seen] == [r["image"] for r in rows]
    assert len(set(folders)) == 3  # a fresh folder per image ...
    assert not any(f.exists() for f in folders)  # ... removed afterwards
    assert (out / "cell_00003_label.tiff").exists()  # stem = name up to the first dot


def test_time_command_measures_wall_time(images: Path, tmp_path: Path):
    script = "import time, sys, pathlib, os; time.sleep(0.3); " + "f=os.listdir(sys.argv[1])[0]; " + \
        "pathlib.Path(sys.argv[2], f.split('.')[0] + '_label.tiff').write_bytes(b'x')"
    rows = time_command([images / "cell_00002.png"], tmp_path / "o", [sys.executable, "-c", script, "{in}", "{out}"])
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert rows[0]["real_time_s"] >= 0.3


def test_time_command_reports_failures(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    failed = time_command(images, out, [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    assert {r["status"] for r in failed} == {"failed"}
    assert {r["returncode"] for r in failed} == {3}
    assert "boom" in failed[0]["message"]
    nothing = time_command(images, out, [sys.executable, "-c", "pass"])
    assert {r["status"] for r in nothing} == {"missing_output"}
    assert "cell_00001_label.tiff" in nothing[0]["message"]


def test_stale_output_does_not_count(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cell_00002_label.tiff").write_bytes(b"old")
    rows = time_command([images / "cell_00002.png"], out, [sys.executable, "-c", "pass"])
    assert rows[0]["status"] == "missing_output"
    assert (out / "cell_00002_label.tiff").read_bytes() == b"old"  # left alone


def test_timeout_kills_the_run(images: Path, tmp_path: Path):
    start = time.perf_counter()
    rows = time_command([images / "cell_00002.png"], tmp_path / "o", [sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert rows[0]["status"] == "timeout" and rows[0]["returncode"] is None
    assert time.perf_counter() - start < 20


def test_placeholders_inside_arguments_like_docker(images: Path, tmp_path: Path):
    # docker run -v {in}:/workspace/inputs -v {out}:/workspace/outputs: placeholders inside arguments.
    script = (
        "import sys, pathlib, os; inp = sys.argv[1].split(':')[0]; out = sys.argv[2].split(':')[0]; "
        "assert sys.argv[1].endswith(':/workspace/inputs'), sys.argv; "
        "f = os.listdir(inp)[0]; pathlib.Path(out, f.split('.')[0] + '_label.tiff').write_bytes(b'x')"
    )
    rows = time_command(
        [images / "cell_00001.tif"], tmp_path / "o", [sys.executable, "-c", script, "{in}:/workspace/inputs", "{out}:/workspace/outputs"]
    )
    assert rows[0]["status"] == "ok", rows[0]["message"]


def test_csv_has_rows_and_totals(tmp_path: Path):
    rows = [
        {"image": "a.png", "height": 1000, "width": 1000, "real_time_s": 12.0, "tolerance_s": 10.0, "rank_time_s": 2.0, "status": "ok", "returncode": 0, "message": ""},
        {"image": "b.tif", "height": 2000, "width": 3000, "real_time_s": 50.0, "tolerance_s": 60.0, "rank_time_s": 0.0, "status": "failed", "returncode": 1, "message": "x"},
    ]  # fmt: skip
    assert timing_totals(rows) == {"images": 2, "not_ok": 1, "real_time_s": 62.0, "tolerance_s": 70.0, "rank_time_s": 2.0}
    path = write_timing_csv(rows, tmp_path / "t.csv")
    with open(path, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["image"] for r in table] == ["a.png", "b.tif", "TOTAL"]
    assert (float(table[2]["real_time_s"]), float(table[2]["tolerance_s"]), float(table[2]["rank_time_s"])) == (62.0, 70.0, 2.0)
    assert (table[1]["height"], table[1]["width"], table[1]["status"]) == ("2000", "3000", "failed")


def test_cli_timing(images: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    code = main(["timing", "-i", str(images), "-o", str(out), "--", sys.executable, "-c", PREDICT, "{in}", "{out}"])
    assert code == 0
    assert "| TOTAL (3 images)" in capsys.readouterr().out
    with open(out / "timing.csv", newline="") as fh:
        assert [r["image"] for r in csv.DictReader(fh)] == ["cell_00001.tif", "cell_00002.png", "cell_00003.b.bmp", "TOTAL"]
    code = main(["timing", "-i", str(images), "-o", str(out), "--csv", str(tmp_path / "t.csv"), "--", sys.executable, "-c", "pass"])
    assert code == 1
    assert main(["timing", "-i", str(images), "-o", str(out)]) == 2  # no command
