"""predict.py / crossct.cli: a folder in, one <stem>_label.tiff per image out, with honest exit codes."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
from conftest import cells_image, run_predict, write_image, write_png

from crossct import cli

SUMMARY = re.compile(r"crossct: (\d+) image\(s\) segmented, (\d+) failed, (\d+) skipped, (\d+) cells")


def summary_counts(text: str) -> tuple[int, int, int]:
    match = SUMMARY.search(text)
    assert match, f"no summary line in:\n{text}"
    return int(match[1]), int(match[2]), int(match[3])


@pytest.fixture
def folders(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    write_png(inp / "a.b.png", cells_image(70, 90, seed=1))
    write_image(inp / "rgb.tif", np.stack([cells_image(64, 64, seed=2)] * 3, axis=-1))
    write_image(inp / "c.jpg", cells_image(33, 130, seed=3))
    return inp, tmp_path / "out"


def run_cli(args, capsys) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_subprocess(folders, tiny_weights, tmp_path):
    inp, out = folders
    overlays = tmp_path / "overlays"
    result = run_predict(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights), "--overlay", str(overlays)])
    assert result.returncode == 0, result.stderr
    assert summary_counts(result.stderr) == (3, 0, 0)
    assert "onnxruntime" in result.stderr  # the summary names the backend
    assert sorted(p.name for p in out.iterdir()) == ["a_label.tiff", "c_label.tiff", "rgb_label.tiff"]
    for name, shape in [("a_label.tiff", (70, 90)), ("rgb_label.tiff", (64, 64)), ("c_label.tiff", (33, 130))]:
        with tifffile.TiffFile(out / name) as tif:
            page = tif.pages[0]
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            labels = page.asarray()
        assert labels.dtype == np.uint16 and labels.shape == shape
        values = np.unique(labels)
        np.testing.assert_array_equal(values, np.arange(values.size))  # 0 (if any background) then 1..N
    assert sorted(p.name for p in overlays.iterdir()) == ["a_label.png", "c_label.png", "rgb_label.png"]
    from crossct.io import read_image

    preview = read_image(overlays / "a_label.png")
    assert preview.shape == (70, 90, 3) and preview.dtype == np.uint8
    labels = tifffile.imread(out / "a_label.tiff")
    if labels.max() > 0:  # outlines drawn in orange somewhere
        assert (preview.reshape(-1, 3) == (255, 64, 0)).all(axis=1).any()


def test_same_results_in_process(folders, tiny_weights, capsys):
    """The in-process entry point writes the same labels as the end-to-end run would."""
    inp, out = folders
    code, err = run_cli(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights), "-q"], capsys)
    assert code == 0, err
    assert summary_counts(err) == (3, 0, 0)
    assert sorted(p.name for p in out.iterdir()) == ["a_label.tiff", "c_label.tiff", "rgb_label.tiff"]


def test_colliding_output_names_both_reported(tmp_path, tiny_weights, capsys, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    write_png(inp / "x.png", cells_image(40, 40))
    write_image(inp / "x.v2.tif", cells_image(40, 40, seed=5))
    write_png(inp / "y.png", cells_image(40, 40, seed=6))
    code, err = run_cli(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights)], capsys)
    assert code == 1
    assert summary_counts(err) == (1, 2, 0)
    assert sorted(p.name for p in out.iterdir()) == ["y_label.tiff"]
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FAILED")]
    assert len(failed) == 2
    for own, other in [("x.png", "x.v2.tif"), ("x.v2.tif", "x.png")]:
        line = next(m for m in failed if m.startswith(f"FAILED {inp / own}:"))
        assert other in line and "x_label.tiff" in line


def test_skip_existing(folders, tiny_weights, capsys):
    inp, out = folders
    assert run_cli(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights), "-q"], capsys)[0] == 0
    (out / "c_label.tiff").unlink()
    kept = out / "a_label.tiff"
    kept.write_bytes(b"sentinel")  # must not be rewritten
    code, err = run_cli(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights), "-q", "--skip-existing"], capsys)
    assert code == 0
    assert summary_counts(err) == (1, 0, 2)
    assert kept.read_bytes() == b"sentinel"
    assert tifffile.imread(out / "c_label.tiff").shape == (33, 130)
    # without the flag everything is redone
    code, err = run_cli(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights), "-q"], capsys)
    assert summary_counts(err) == (3, 0, 0)
    assert tifffile.imread(kept).shape == (70, 90)


def test_postprocess_override(folders, tiny_weights, capsys):
    inp, out = folders
    code, err = run_cli(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights), "-q", "--postprocess", "threshold"],
                        capsys)
    assert code == 0 and summary_counts(err) == (3, 0, 0)


def test_missing_input_folder_exit_2(tmp_path, tiny_weights):
    result = run_predict(["-i", str(tmp_path / "absent"), "-o", str(tmp_path / "out"), "-w", str(tiny_weights)])
    assert result.returncode == 2
    assert f"input folder {tmp_path / 'absent'} does not exist" in result.stderr


def test_input_is_a_file_exit_2(tmp_path, tiny_weights, capsys, caplog):
    (tmp_path / "f.png").write_bytes(b"x")
    code, _ = run_cli(["-i", str(tmp_path / "f.png"), "-o", str(tmp_path / "out"), "-w", str(tiny_weights)], capsys)
    assert code == 2 and "is not a folder" in caplog.text


@pytest.mark.parametrize("which", ["output", "overlay"])
def test_unwritable_output_exit_2(folders, tiny_weights, tmp_path, capsys, caplog, which):
    inp, out = folders
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"")  # a folder cannot be created under (or as) a file, even by root
    args = ["-i", str(inp), "-o", str(out), "-w", str(tiny_weights)]
    if which == "output":
        args[3] = str(blocker / "sub")
    else:
        args += ["--overlay", str(blocker / "sub")]
    code, err = run_cli(args, capsys)
    assert code == 2
    assert f"output folder {blocker / 'sub'} is not writable" in caplog.text
    assert not SUMMARY.search(err)


def test_no_weights_exit_2_says_where_and_how(folders, tmp_path):
    inp, out = folders
    result = run_predict(["-i", str(inp), "-o", str(out), "-w", str(tmp_path / "no_weights")])
    assert result.returncode == 2
    assert f"no model weights found at {tmp_path / 'no_weights'}" in result.stderr
    assert "model.json" in result.stderr and "python -m crossct.export" in result.stderr
    assert not any(out.glob("*.tiff"))


def test_help_lists_options():
    result = run_predict(["--help"], timeout=60)
    assert result.returncode == 0
    for option in ["--input", "--output", "--weights", "--backend", "--device", "--postprocess", "--overlay",
                   "--skip-existing", "--quiet"]:
        assert option in result.stdout
    assert "default: auto" in result.stdout  # defaults are shown


def test_bad_choice_lists_valid_ones(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--backend", "tensorrt"])
    assert info.value.code == 2
    assert "choose from 'auto', 'onnx', 'torch'" in capsys.readouterr().err


def test_empty_input_folder(tmp_path, tiny_weights, capsys):
    (tmp_path / "in").mkdir()
    code, err = run_cli(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-w", str(tiny_weights)], capsys)
    assert code == 0 and summary_counts(err) == (0, 0, 0)
