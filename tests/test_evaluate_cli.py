"""``python -m evaluate f1``: walking the ground truth, manifests, groups, errors and exit codes."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from evaluate import Case, score_cases, summarize
from evaluate.__main__ import main

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    env = os.environ.get("CROSSCT_DATA")
    return Path(env) if env else (REPO / ".." / "shared" / "data").resolve()


def _labels(n_cells: int, shape=(40, 40)) -> np.ndarray:
    """``n_cells`` 5x5 squares away from the border, labelled 1..n."""
    out = np.zeros(shape, np.uint16)
    for k in range(n_cells):
        y, x = 5 + 8 * (k // 4), 5 + 8 * (k % 4)
        out[y : y + 5, x : x + 5] = k + 1
    return out


def _write(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, labels, compression="zlib")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """gt: a (4 cells), b (4 cells), c (2 cells), d (4 cells); pred: a perfect, b half, c missing, d wrong shape."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for name, n in [("a", 4), ("b", 4), ("c", 2), ("d", 4)]:
        _write(gt / f"{name}_label.tiff", _labels(n))
    _write(pred / "a_label.tiff", _labels(4).astype(np.uint32) * 70_000)
    _write(pred / "b_label.tiff", _labels(2))  # TP 2, FN 2 -> F1 = 2*2/(4+2) = 2/3
    _write(pred / "d_label.tiff", _labels(4, shape=(40, 41)))
    _write(pred / "zzz_label.tiff", _labels(4))  # a prediction without ground truth: ignored
    (gt / "notes.txt").write_text("ignored")
    return gt, pred


def test_help_is_instant_and_imports_no_numpy():
    code = (
        "import sys, runpy\n"
        "sys.argv = ['evaluate', 'f1', '--help']\n"
        "try:\n    runpy.run_module('evaluate', run_name='__main__')\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print('numpy' in sys.modules, 'scipy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "--gt-suffix" in out and "_label.tiff)" in out
    assert out.strip().endswith("False False")


def test_folder_walks_ground_truth_and_reports_everything(folders, tmp_path: Path, capsys):
    gt, pred = folders
    code = main(["f1", "--gt", str(gt), "--pred", str(pred), "--csv", str(tmp_path / "s.csv")])
    assert code == 1  # d errored
    rows = {r["name"]: r for r in _read_csv(tmp_path / "s.csv")}
    assert sorted(rows) == ["a", "b", "c", "d"]
    assert [rows[n]["status"] for n in "abcd"] == ["ok", "ok", "missing", "error"]
    assert float(rows["a"]["f1"]) == 1.0
    assert float(rows["b"]["f1"]) == pytest.approx(2 / 3)
    assert (rows["b"]["tp"], rows["b"]["fp"], rows["b"]["fn"]) == ("2", "0", "2")
    assert (rows["c"]["f1"], rows["c"]["tp"], rows["c"]["fn"]) == ("0.0", "0", "2")
    assert "(40, 41)" in rows["d"]["message"] and "(40, 40)" in rows["d"]["message"] and "d_label.tiff" in rows["d"]["message"]
    out = capsys.readouterr().out
    assert "| c | missing |" in out and "| d | error |" in out
    mean = (1 + 2 / 3 + 0 + 0) / 4
    median = (2 / 3 + 0) / 2
    assert f"| all | 4 | 1 | 1 | {mean:.4f} | {median:.4f} |" in out


def test_missing_only_exits_zero_unless_strict(folders):
    gt, pred = folders
    (gt / "d_label.tiff").unlink()
    assert main(["f1", "--gt", str(gt), "--pred", str(pred)]) == 0
    assert main(["f1", "--gt", str(gt), "--pred", str(pred), "--strict"]) == 1


def test_suffixes_and_boundary_option(tmp_path: Path, capsys):
    lab = _labels(1)
    lab[0:3, 20:25] = 2  # touches the frame
    _write(tmp_path / "gt" / "x.gt.tif", lab)
    _write(tmp_path / "p" / "x_seg.tif", lab)
    args = ["f1", "--gt", str(tmp_path / "gt"), "--gt-suffix", ".gt.tif", "--pred", str(tmp_path / "p"), "--pred-suffix", "_seg.tif"]
    assert main(args + ["--csv", str(tmp_path / "on.csv")]) == 0
    assert main(args + ["--csv", str(tmp_path / "off.csv"), "--no-boundary-removal"]) == 0
    assert _read_csv(tmp_path / "on.csv")[0]["n_gt"] == "1"
    assert _read_csv(tmp_path / "off.csv")[0]["n_gt"] == "2"


def _manifest(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    rows = []
    for source, names in [("alpha", ["a1", "a2"]), ("beta", ["b1", "b2", "b3"])]:
        for i, name in enumerate(names):
            _write(root / source / "labels" / f"{name}_label.tiff", _labels(4))
            split = "train" if name == "b3" else "val"
            rows.append({"source": source, "name": name, "image": f"{source}/images/{name}.ome.tif",
                         "label": f"{source}/labels/{name}_label.tiff", "modality": "x", "n_instances": 4,
                         "license": "x", "split": split})  # fmt: skip
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


def test_manifest_split_and_groups(tmp_path: Path, capsys):
    manifest = _manifest(tmp_path)
    pred = tmp_path / "pred"
    _write(pred / "a1_label.tiff", _labels(4))  # F1 1
    _write(pred / "a2_label.tiff", _labels(2))  # F1 2/3
    _write(pred / "b1_label.tiff", _labels(4))  # F1 1; b2 missing; b3 is train
    argv = ["f1", "--manifest", str(manifest), "--split", "val", "--pred", str(pred), "--group-by", "source", "--csv", str(tmp_path / "s.csv")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"| alpha | 2 | 0 | 0 | {(1 + 2 / 3) / 2:.4f} | {(1 + 2 / 3) / 2:.4f} |" in out
    assert "| beta | 2 | 1 | 0 | 0.5000 | 0.5000 |" in out
    assert f"| all | 4 | 1 | 0 | {(2 + 2 / 3) / 4:.4f} |" in out
    rows = _read_csv(tmp_path / "s.csv")
    assert [(r["name"], r["group"], r["status"]) for r in rows] == [
        ("a1", "alpha", "ok"), ("a2", "alpha", "ok"), ("b1", "beta", "ok"), ("b2", "beta", "missing"),
    ]  # fmt: skip


def test_manifest_groups_a_gt_folder(tmp_path: Path, capsys):
    manifest = _manifest(tmp_path)
    gt = tmp_path / "gt"
    gt.mkdir()
    for source, name in [("alpha", "a1"), ("beta", "b1"), ("beta", "b3")]:
        shutil.copy(manifest.parent / source / "labels" / f"{name}_label.tiff", gt)
    argv = ["f1", "--gt", str(gt), "--manifest", str(manifest), "--split", "val", "--group-by", "source", "--pred", str(gt)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| alpha | 1 | 0 | 0 | 1.0000 | 1.0000 |" in out and "| beta | 1 | 0 | 0 | 1.0000 | 1.0000 |" in out
    assert "| all | 2 |" in out  # b3 is train


def test_usage_errors_name_the_problem(tmp_path: Path, capsys):
    manifest = _manifest(tmp_path)
    assert main(["f1", "--manifest", str(manifest), "--pred", str(tmp_path), "--group-by", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "source" in err  # lists the columns it has
    assert main(["f1", "--pred", str(tmp_path)]) == 2
    assert "--gt" in capsys.readouterr().err
    assert main(["f1", "--gt", str(tmp_path / "absent"), "--pred", str(tmp_path)]) == 2
    assert "absent" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["empty", "absent", "suffix"])
def test_no_prediction_at_all_is_an_error(folders, tmp_path: Path, capsys, where):
    """Pointed at the wrong folder (or suffix), the evaluator says so instead of a table of zeros."""
    gt, pred = folders
    args = ["f1", "--gt", str(gt), "--pred", str(pred)]
    if where == "empty":
        pred = tmp_path / "empty"
        pred.mkdir()
        args[-1] = str(pred)
    elif where == "absent":
        pred = tmp_path / "absent"
        args[-1] = str(pred)
    else:
        args += ["--pred-suffix", "_masks.tif"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "no prediction found for any of the 4 ground-truth image(s)" in captured.err
    assert ("does not exist" if where == "absent" else "holds none of them") in captured.err
    assert "| all |" not in captured.out


def test_unreadable_ground_truth_is_an_error_row(tmp_path: Path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "bad_label.tiff").write_bytes(b"not a tiff")
    rows = score_cases([Case("bad", tmp_path / "gt" / "bad_label.tiff", tmp_path / "p" / "bad_label.tiff", "g")])
    assert rows[0]["status"] == "error" and "bad_label.tiff" in rows[0]["message"] and rows[0]["f1"] == 0.0
    s = summarize(rows)
    assert s["overall"]["errors"] == 1 and s["groups"]["g"]["mean_f1"] == 0.0


@pytest.mark.data
def test_real_val_split_against_itself(tmp_path: Path, capsys):
    data = _data_dir()
    if not (data / "manifest.csv").is_file():
        pytest.skip(f"project data not found at {data} (set CROSSCT_DATA)")
    with open(data / "manifest.csv", newline="") as fh:
        val = [r for r in csv.DictReader(fh) if r["split"] == "val"]
    pred = tmp_path / "pred"
    pred.mkdir()
    by_source: dict[str, dict] = {}
    for row in val:  # the first val image of each source, as its own prediction
        by_source.setdefault(row["source"], row)
    for row in by_source.values():
        shutil.copy(data / row["label"], pred)
    argv = ["f1", "--manifest", str(data / "manifest.csv"), "--split", "val", "--pred", str(pred), "--group-by", "source",
            "--csv", str(tmp_path / "s.csv")]  # fmt: skip
    assert main(argv) == 0
    rows = _read_csv(tmp_path / "s.csv")
    assert len(rows) == len(val)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == len(by_source) and all(float(r["f1"]) == 1.0 for r in ok)
    assert sum(r["status"] == "missing" for r in rows) == len(val) - len(by_source)
