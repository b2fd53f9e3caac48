"""predict.py / crossct.cli: a folder in, one <stem>_label.tiff per image out, with honest exit codes."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
from conftest import REPO, cells_image, run_predict, run_python, write_image, write_png

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
    if labels.max() > 0:  # two-tone outlines drawn somewhere
        from crossct.overlay import OUTLINE_CORE_RGB

        assert (preview.reshape(-1, 3) == OUTLINE_CORE_RGB).all(axis=1).any()


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
    assert f"input {tmp_path / 'absent'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_single_files_and_globs_as_input(folders, tiny_weights, tmp_path, capsys):
    """-i takes image files (several, as a shell expands a glob) and quoted glob patterns, not only folders."""
    inp, out = folders
    code, err = run_cli(["-i", str(inp / "a.b.png"), "-o", str(out), "-w", str(tiny_weights), "-q"], capsys)
    assert code == 0 and summary_counts(err) == (1, 0, 0)
    assert sorted(p.name for p in out.iterdir()) == ["a_label.tiff"]

    out2 = tmp_path / "out2"
    code, err = run_cli(["-i", str(inp / "a.b.png"), str(inp / "c.jpg"), "-o", str(out2), "-w", str(tiny_weights),
                         "-q"], capsys)
    assert code == 0 and sorted(p.name for p in out2.iterdir()) == ["a_label.tiff", "c_label.tiff"]

    out3 = tmp_path / "out3"
    code, err = run_cli(["-i", str(inp / "*.tif"), str(inp / "c.*"), "-o", str(out3), "-w", str(tiny_weights), "-q"],
                        capsys)
    assert code == 0 and sorted(p.name for p in out3.iterdir()) == ["c_label.tiff", "rgb_label.tiff"]


def test_glob_without_match_exit_2(tmp_path, tiny_weights, capsys, caplog):
    code, err = run_cli(["-i", str(tmp_path / "*.png"), "-o", str(tmp_path / "out"), "-w", str(tiny_weights)], capsys)
    assert code == 2
    assert f"no image matches '{tmp_path / '*.png'}'" in caplog.text and not SUMMARY.search(err)


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


@pytest.mark.parametrize("content", [[], ["notes.txt", ".hidden.png", "sub/"]], ids=["empty", "no-images"])
def test_no_images_found_warns_and_exits_2(tmp_path, tiny_weights, capsys, caplog, content):
    """An empty folder, or one without images, is a mistake to report (exit 2, see README), not a success."""
    inp = tmp_path / "in"
    inp.mkdir()
    for name in content:
        (inp / name).mkdir() if name.endswith("/") else (inp / name).write_bytes(b"x")
    code, err = run_cli(["-i", str(inp), "-o", str(tmp_path / "out"), "-w", str(tiny_weights)], capsys)
    assert code == 2
    warning = next(r for r in caplog.records if r.levelname == "WARNING")
    assert warning.getMessage().startswith(f"no images found in {inp}: nothing to segment")
    assert not SUMMARY.search(err)


def test_empty_share_of_a_sharded_run_is_fine(tmp_path, tiny_weights, capsys, monkeypatch):
    """More processes than images: the processes without a share finish with exit code 0."""
    inp = tmp_path / "in"
    inp.mkdir()
    write_png(inp / "a.png", cells_image(40, 40))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, err = run_cli(["-i", str(inp), "-o", str(tmp_path / "out"), "-w", str(tiny_weights)], capsys)
    assert code == 0 and summary_counts(err) == (0, 0, 0)


@pytest.mark.parametrize("env, message", [
    ({"RANK": "abc"}, "environment variable RANK='abc' is not an integer"),
    ({"RANK": "3", "WORLD_SIZE": "2"}, "environment variable RANK=3 must be below WORLD_SIZE=2"),
    ({"WORLD_SIZE": "0"}, "environment variable WORLD_SIZE=0 must be >= 1"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "environment variable RANK=-1 must be >= 0"),
    ({"CROSSCT_MAX_MEMORY": "lots"}, "CROSSCT_MAX_MEMORY: 'lots' is not a memory size"),
])
def test_bad_environment_exit_2_without_traceback(folders, tiny_weights, env, message):
    inp, out = folders
    result = run_predict(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights)], env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_output_equal_to_input_twice_does_not_segment_labels(folders, tiny_weights, capsys):
    """-o = -i: the second run's input folder holds the first run's *_label.tiff; they are results, not images."""
    inp, _ = folders
    for _ in range(2):
        code, err = run_cli(["-i", str(inp), "-o", str(inp), "-w", str(tiny_weights), "-q"], capsys)
        assert code == 0 and summary_counts(err) == (3, 0, 0)
    assert sorted(p.name for p in inp.iterdir()) == ["a.b.png", "a_label.tiff", "c.jpg", "c_label.tiff", "rgb.tif",
                                                     "rgb_label.tiff"]


def test_label_files_in_another_folder_are_images(tmp_path, tiny_weights, capsys):
    """Only the output folder's label files are taken for results: an input named *_label.tiff elsewhere is an image."""
    inp = tmp_path / "in"
    inp.mkdir()
    write_image(inp / "cell_label.tiff", cells_image(40, 40))
    code, err = run_cli(["-i", str(inp), "-o", str(tmp_path / "out"), "-w", str(tiny_weights), "-q"], capsys)
    assert code == 0 and summary_counts(err) == (1, 0, 0)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cell_label_label.tiff"]


def test_help_names_the_command_and_shows_each_default_once():
    for command, prog in [([str(REPO / "predict.py")], "predict.py"),
                          (["-c", "import sys; from crossct.cli import main; sys.argv[0] = 'crossct-predict'; main()"],
                           "crossct-predict")]:
        result = run_python([*command, "--help"], timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: {prog} "), result.stdout[:80]
        text = " ".join(result.stdout.split())
        assert "(default: None)" not in text and "(default: False)" not in text
        for option_help in re.split(r"\n\s*-", result.stdout):
            assert option_help.lower().count("default") <= 1, option_help


def render_terminal(output: str, columns: int = 120) -> list[str]:
    """The screen a terminal shows after ``output``: carriage returns overwrite, cursor-up moves up."""
    screen, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[(\d*)([A-Za-z])|(\r)|(\n)|([^\x1b\r\n])", output):
        count, code, cr, nl, char = token
        if cr:
            col = 0
        elif nl:
            row, col = row + 1, 0
            screen += [""] * (row + 1 - len(screen))
        elif code == "A":
            row = max(0, row - int(count or 1))
        elif char:
            line = screen[row].ljust(col)
            screen[row] = line[:col] + char + line[col + 1:]
            col += 1
    return [line.rstrip() for line in screen]


def test_progress_bar_and_log_lines_do_not_write_over_each_other(folders, tiny_weights, tmp_path):
    """In a terminal, log records are printed above the bar, each on its own line, and no stale bar is left."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    inp, out = folders
    for i in range(4):
        write_png(inp / f"more_{i}.png", cells_image(60, 70, seed=10 + i))
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    env.pop("CROSSCT_WEIGHTS", None)
    proc = subprocess.Popen([sys.executable, str(REPO / "predict.py"), "-i", str(inp), "-o", str(out), "-w",
                             str(tiny_weights)], cwd=REPO, env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    raw = b"".join(chunks).decode("utf-8", "replace")
    assert "img/s" in raw or "it/s" in raw or "%|" in raw, "no progress bar was drawn"
    screen = [line for line in render_terminal(raw) if line]
    logs = [line for line in screen if re.search(r"\d\d:\d\d:\d\d (INFO|WARNING|ERROR)", line)]
    assert len(logs) >= 7  # one per image at least
    for line in logs:
        assert re.match(r"\d\d:\d\d:\d\d (INFO|WARNING|ERROR) ", line), f"log line written over:\n{line!r}"
    assert not [line for line in screen if "%|" in line], "a progress bar was left on the screen"
    assert screen[-1].startswith("crossct: 7 image(s) segmented")
