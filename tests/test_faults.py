"""Issue 8, faults: a killed run, a full or unwritable output disk, an image too large for memory.

Whatever happens, every label file on disk is whole, a rerun with ``--skip-existing`` finishes the
batch with the labels a clean run gives, and each failure is reported with the file and the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import REPO, run_predict, write_image, write_png

from crossct import cli
from crossct.batch import find_work, remove_stale_temporaries, run_batch
from crossct.io import read_image
from crossct.synthetic import synthetic_cells

SIZE = 224  # 30 images of this size take a few seconds: long enough to be killed halfway


def make_folder(folder: Path, n: int, size: int = SIZE) -> list[str]:
    """``n`` synthetic PNGs; returns the label names a run should write."""
    folder.mkdir(parents=True)
    for i in range(n):
        write_png(folder / f"img_{i:02d}.png", synthetic_cells(size, size, seed=i)[0])
    return [f"img_{i:02d}_label.tiff" for i in range(n)]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def read_whole(path: Path) -> np.ndarray:
    """Decode every byte of a label TIFF (a truncated file raises)."""
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1, path
        return tif.pages[0].asarray()


def clean_labels(folder: Path, onnx_predictor, out: Path) -> dict[str, np.ndarray]:
    out.mkdir()
    work, _, _ = find_work(folder, out)
    assert run_batch(work, onnx_predictor).done == len(work)
    return {p.name: tifffile.imread(p) for p in out.iterdir()}


# ----------------------------------------------------------------------------- SIGKILL mid-batch


def _predict_process(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CROSSCT_WEIGHTS", None)
    return subprocess.Popen([sys.executable, str(REPO / "predict.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # about 15 s: two predict.py processes and a clean run
def test_sigkill_mid_batch_then_resume(tmp_path, tiny_weights, onnx_predictor):
    inp, out = tmp_path / "in", tmp_path / "out"
    names = make_folder(inp, 30)
    proc = _predict_process(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights), "-q"])
    try:
        # Wait for a few finished labels, then kill as soon as a write is in flight (a hidden
        # temporary is visible), or after 2 s without one.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and len(list(out.glob("*_label.tiff"))) >= 3:
                break
            time.sleep(0.01)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and proc.poll() is None and not any(".tmp-" in n for n in hidden(out)):
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "predict.py finished before it could be killed; use more images"

    written = sorted(p.name for p in out.glob("*_label.tiff"))
    assert 3 <= len(written) < len(names)
    clean = clean_labels(inp, onnx_predictor, tmp_path / "clean")
    for name in written:  # every label on disk is whole and final
        np.testing.assert_array_equal(read_whole(out / name), clean[name])
    left_by_kill = [n for n in hidden(out) if ".tmp-" in n]
    assert all(n.removeprefix(".").split(".tmp-")[0] in names for n in left_by_kill)
    # One more stale temporary: a TIFF header and nothing else, as a kill just after it was opened leaves it.
    stale = out / f".{names[-1]}.tmp-999999"
    stale.write_bytes(b"II*\x00" + bytes(96))

    result = run_predict(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights), "--skip-existing"])
    assert result.returncode == 0, result.stderr
    assert f"{len(names) - len(written)} image(s) segmented, 0 failed, {len(written)} skipped" in result.stderr
    assert f"removed stale temporary {stale}" in result.stderr
    assert hidden(out) == []
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        labels = read_whole(out / name)
        assert labels.tobytes() == clean[name].tobytes(), name


def test_stale_temporaries_of_other_outputs_are_kept(tmp_path):
    """Only this run's outputs are cleaned: another shard writing into the same folder keeps its temporary."""
    (tmp_path / "a_label.tiff").write_bytes(b"done")
    mine, other = tmp_path / ".b_label.tiff.tmp-12", tmp_path / ".c_label.tiff.tmp-34"
    mine.write_bytes(b"x")
    other.write_bytes(b"x")
    (tmp_path / ".b_label.tiff.tmp-notapid").write_bytes(b"x")
    removed = remove_stale_temporaries([tmp_path / "a_label.tiff", tmp_path / "b_label.tiff", tmp_path / "nowhere" / "d"])
    assert removed == [mine]
    assert hidden(tmp_path) == [".b_label.tiff.tmp-notapid", other.name]
    assert (tmp_path / "a_label.tiff").read_bytes() == b"done"


# ----------------------------------------------------------------------------- full and unwritable output disks


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only): room for about five label files."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                              capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small disk to fill")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_reported_per_file_nothing_partial(tmp_path, tiny_weights, small_tmpfs):
    inp, out = tmp_path / "in", small_tmpfs / "out"
    names = make_folder(inp, 12, size=192)
    result = run_predict(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights)])
    assert result.returncode == 1, result.stderr
    failed = [line.split(" FAILED ", 1)[1] for line in result.stderr.splitlines() if " FAILED " in line]
    written = sorted(p.name for p in out.iterdir())
    assert failed and written, "the disk should hold some labels and not all of them"
    assert f"{len(written)} image(s) segmented, {len(failed)} failed" in result.stderr
    for line in failed:
        image = Path(line.split(": ", 1)[0])
        assert line == f"{image}: cannot write labels {out / (image.stem + '_label.tiff')}: No space left on device"
    # every image is either written whole or reported; nothing partial, no temporaries
    assert sorted(written + [Path(line.split(": ", 1)[0]).stem + "_label.tiff" for line in failed]) == names
    assert hidden(out) == []
    for name in written:
        assert read_whole(out / name).shape == (192, 192)

    # with room again, --skip-existing finishes the batch
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    result = run_predict(["-i", str(inp), "-o", str(moved), "-w", str(tiny_weights), "--skip-existing"])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in moved.iterdir()) == names


def test_read_only_output_disk_exit_2(tmp_path, tiny_weights, small_tmpfs, capsys, caplog):
    inp = tmp_path / "in"
    make_folder(inp, 1, size=64)
    (small_tmpfs / "out").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    code = cli.main(["-i", str(inp), "-o", str(small_tmpfs / "out"), "-w", str(tiny_weights)])
    assert code == 2
    assert f"output folder {small_tmpfs / 'out'} is not writable (Read-only file system)" in caplog.text
    assert "image(s) segmented" not in capsys.readouterr().err


def test_output_under_a_regular_file_exit_2(tmp_path, tiny_weights):
    """The subprocess twin of test_cli.py::test_unwritable_output_exit_2: the message reaches stderr."""
    inp = tmp_path / "in"
    make_folder(inp, 1, size=64)
    (tmp_path / "file").write_bytes(b"")
    result = run_predict(["-i", str(inp), "-o", str(tmp_path / "file" / "out"), "-w", str(tiny_weights)])
    assert result.returncode == 2
    assert f"output folder {tmp_path / 'file' / 'out'} is not writable (Not a directory)" in result.stderr


def test_label_path_taken_by_a_folder_reported(tmp_path, tiny_weights, capsys, caplog):
    """One label cannot be written (its name is a folder): that image is reported, the others written."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_folder(inp, 3, size=64)
    (out / "img_01_label.tiff").mkdir(parents=True)
    code = cli.main(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights)])
    assert code == 1
    assert f"FAILED {inp / 'img_01.png'}: cannot write labels {out / 'img_01_label.tiff'}: Is a directory" in caplog.text
    assert "2 image(s) segmented, 1 failed" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["img_00_label.tiff", "img_01_label.tiff", "img_02_label.tiff"]
    assert (out / "img_01_label.tiff").is_dir() and not any((out / "img_01_label.tiff").iterdir())


# ----------------------------------------------------------------------------- memory: a huge image, or none left


def test_out_of_memory_reported_and_batch_goes_on(tmp_path, onnx_predictor, monkeypatch):
    """MemoryError while decoding or segmenting one image fails that image only, with a plain reason."""
    import cv2

    import crossct.pipeline as pipeline

    inp, out = tmp_path / "in", tmp_path / "out"
    make_folder(inp, 3, size=64)
    out.mkdir()
    real_outputs, real_decode = pipeline.predict_outputs, cv2.imdecode
    calls, decodes = [], []

    def predict_outputs(image, *args, **kwargs):  # the first image runs out of memory in the network
        calls.append(image.shape)
        if len(calls) == 1:
            raise MemoryError
        return real_outputs(image, *args, **kwargs)

    def imdecode(data, flags):  # the third one already while decoding
        decodes.append(len(data))
        if len(decodes) == 3:
            raise MemoryError
        return real_decode(data, flags)

    monkeypatch.setattr(pipeline, "predict_outputs", predict_outputs)
    monkeypatch.setattr(cv2, "imdecode", imdecode)
    work, _, _ = find_work(inp, out)
    summary = run_batch(work, onnx_predictor)
    assert summary.failed == [(str(inp / "img_00.png"), "out of memory while segmenting"),
                              (str(inp / "img_02.png"), "not enough memory to decode this image")]
    assert summary.done == 1 and sorted(p.name for p in out.iterdir()) == ["img_01_label.tiff"]


def test_large_image_goes_through_bounded_blocks(tmp_path, tiny_weights, monkeypatch, capsys):
    """An image larger than block_size + 2 * block_margin is segmented block by block: the network
    input is normalised one row of tiles at a time, the blended outputs live on a canvas of
    (block + 2 margins + a tile) rows across the shorter side, and no post-processed piece is larger
    than one block with its margins."""
    import crossct.blocks as blocks
    import crossct.tiling as tiling

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    spec = json.loads((weights / "model.json").read_text())
    spec["tiling"].update(block_size=128, block_margin=32)  # model.json is not checksummed, the model is
    (weights / "model.json").write_text(json.dumps(spec))
    limit = 128 + 2 * 32
    tile = spec["tiling"]["tile_size"]

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    image = synthetic_cells(500, 420, seed=7)[0]
    write_image(inp / "slide.tif", image)
    write_png(inp / "small.png", synthetic_cells(limit, limit, seed=8)[0])  # exactly the limit: one piece

    calls, strips, canvases, pieces = [], [], [], []
    real_blocks, real_normalize, real_post = blocks.segment_blocks, blocks.normalize_image, blocks.postprocess
    real_blender = tiling.TileBlender.__init__

    def spy_blocks(img, *args, **kwargs):
        calls.append(img.shape)
        return real_blocks(img, *args, **kwargs)

    def spy_normalize(x, *args, **kwargs):
        strips.append(x.shape)
        return real_normalize(x, *args, **kwargs)

    def spy_post(outputs, *args, **kwargs):
        pieces.append(outputs.shape)
        return real_post(outputs, *args, **kwargs)

    def spy_blender(self, shape, *args, **kwargs):
        canvases.append(shape)
        real_blender(self, shape, *args, **kwargs)

    monkeypatch.setattr(blocks, "segment_blocks", spy_blocks)
    monkeypatch.setattr(blocks, "normalize_image", spy_normalize)
    monkeypatch.setattr(blocks, "postprocess", spy_post)
    monkeypatch.setattr(tiling.TileBlender, "__init__", spy_blender)
    code = cli.main(["-i", str(inp), "-o", str(out), "-w", str(weights), "-q"])
    assert code == 0, capsys.readouterr().err
    assert calls == [(500, 420, 1)]  # the slide only; the image at the limit goes in one piece
    assert strips and all(s[0] <= tile and s[1] == 420 for s in strips)  # rows of tiles down the longer axis
    assert canvases[0] == (limit + tile, 420)  # the slide's canvas; then the small image's own
    assert len(pieces) == len(blocks.block_grid(500, 128)) * len(blocks.block_grid(420, 128)) == 16
    assert all(max(p[1:]) <= limit for p in pieces), pieces
    labels = read_whole(out / "slide_label.tiff")
    assert labels.shape == (500, 420) and labels.max() > 0
    np.testing.assert_array_equal(np.unique(labels), np.arange(int(labels.max()) + 1))  # 1..N, no gaps
    assert read_whole(out / "small_label.tiff").shape == (limit, limit)


def test_batch_post_processes_one_image_while_the_next_goes_through_the_network(tmp_path, onnx_predictor,
                                                                                  monkeypatch):
    """The two stages overlap (post-processing + write on a second thread), results and failure
    order are as from one image after another, and no more than two images are in flight."""
    import threading
    import time

    import crossct.batch as batch
    import crossct.pipeline as pipeline
    from crossct.pipeline import segment

    inp, out = tmp_path / "in", tmp_path / "out"
    names = make_folder(inp, 4, size=96)
    (inp / "img_02.png").write_bytes(b"not a png")  # a failure in the middle keeps its place
    out.mkdir()
    events, lock = [], threading.Lock()
    real_outputs, real_post = pipeline.predict_outputs, pipeline.postprocess

    def log(what):
        with lock:
            events.append(what)

    def predict_outputs(image, *args, **kwargs):
        log("net start")
        result = real_outputs(image, *args, **kwargs)
        log("net end")
        return result

    def postprocess(outputs, *args, **kwargs):
        log("post start")
        time.sleep(0.3)  # long enough that the next image's network starts meanwhile
        result = real_post(outputs, *args, **kwargs)
        log("post end")
        return result

    monkeypatch.setattr(pipeline, "predict_outputs", predict_outputs)
    monkeypatch.setattr(pipeline, "postprocess", postprocess)
    work, errors, _ = find_work(inp, out)
    summary = batch.run_batch(work, onnx_predictor)
    assert summary.done == 3 and [Path(f).name for f, _ in summary.failed] == ["img_02.png"]
    # image 0's post-processing was still running when image 1's network started
    assert events.index("net start", 1) < events.index("post end")
    in_flight = most = 0
    for e in events:  # images between their network start and their post-processing end
        in_flight += {"net start": 1, "post end": -1}.get(e, 0)
        most = max(most, in_flight)
    assert most == 2
    for name in names:
        if name == "img_02_label.tiff":
            assert not (out / name).exists()
            continue
        image = read_image(inp / name.replace("_label.tiff", ".png"))
        np.testing.assert_array_equal(read_whole(out / name), segment(image, onnx_predictor))


def test_images_in_flight_together_fit_the_memory_budget(tmp_path, onnx_predictor, monkeypatch):
    """With room for one image only, the next image waits for the previous one's post-processing."""
    import threading

    import crossct.pipeline as pipeline
    from crossct.budget import MemoryBudget, needed_bytes
    from crossct.io import read_header

    inp, out = tmp_path / "in", tmp_path / "out"
    make_folder(inp, 3, size=96)
    out.mkdir()
    events, lock = [], threading.Lock()
    real_outputs, real_post = pipeline.predict_outputs, pipeline.postprocess

    def log(what):
        with lock:
            events.append(what)

    def predict_outputs(image, *args, **kwargs):
        log("net")
        return real_outputs(image, *args, **kwargs)

    def postprocess(outputs, *args, **kwargs):
        time.sleep(0.2)  # long enough that a next image would start meanwhile, were there room
        result = real_post(outputs, *args, **kwargs)
        log("post end")
        return result

    monkeypatch.setattr(pipeline, "predict_outputs", predict_outputs)
    monkeypatch.setattr(pipeline, "postprocess", postprocess)
    work, _, _ = find_work(inp, out)
    one = needed_bytes(read_header(work[0].image), onnx_predictor.spec)
    summary = run_batch(work, onnx_predictor, budget=MemoryBudget(int(1.5 * one)))
    assert summary.done == 3
    assert events == ["net", "post end"] * 3  # one image at a time
    events.clear()
    out2 = tmp_path / "out2"
    out2.mkdir()
    run_batch(find_work(inp, out2)[0], onnx_predictor, budget=MemoryBudget(2 * one))
    assert events.index("net", 1) < events.index("post end")  # room for two: they overlap


def test_failed_overlay_named_as_such_and_made_by_skip_existing(tmp_path, tiny_weights, capsys, caplog, monkeypatch):
    """An overlay that cannot be written is reported as the overlay (the labels are written); a rerun with
    --skip-existing makes just the overlay, from the labels on disk, without running the network."""
    import crossct.batch as batch

    inp, out, overlays = tmp_path / "in", tmp_path / "out", tmp_path / "overlays"
    make_folder(inp, 2, size=64)
    (overlays / "img_01_label.png").mkdir(parents=True)  # this overlay cannot be written
    code = cli.main(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights), "--overlay", str(overlays)])
    assert code == 1
    assert (f"FAILED {inp / 'img_01.png'}: labels written, but cannot write overlay {overlays / 'img_01_label.png'}: "
            "Is a directory") in caplog.text
    assert "1 image(s) segmented, 1 failed" in capsys.readouterr().err
    labels = (out / "img_01_label.tiff").read_bytes()

    (overlays / "img_01_label.png").rmdir()
    monkeypatch.setattr(batch, "segment_stages", lambda *a, **k: pytest.fail("the network ran again"))
    code = cli.main(["-i", str(inp), "-o", str(out), "-w", str(tiny_weights), "--overlay", str(overlays),
                     "--skip-existing"])
    assert code == 0
    assert "0 image(s) segmented, 0 failed, 1 skipped, 1 overlay(s) made from existing labels" in capsys.readouterr().err
    assert (out / "img_01_label.tiff").read_bytes() == labels
    preview = read_image(overlays / "img_01_label.png")
    assert preview.shape == (64, 64, 3) and hidden(overlays) == []
