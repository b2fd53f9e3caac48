"""Issue 8: every bad input is either segmented correctly or reported with its name and the reason,
and the rest of the batch completes (exit code 1 when anything failed, nothing partial left behind)."""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import cells_image, run_predict, write_image, write_png

from crossct.batch import find_work, run_batch
from crossct.io import ImageReadError, read_image, write_labels

# ----------------------------------------------------------------------------- file factories


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking 8-bit gray PNG header declaring width x height, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def tiff_bomb(path: Path, size: int = 100_000) -> Path:
    """A 16x16 TIFF whose ImageWidth and ImageLength tags are patched to ``size``."""
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8))
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offsets = [tif.pages[0].tags[name].valueoffset for name in ("ImageWidth", "ImageLength")]
    for offset in offsets:
        struct.pack_into("<I", data, offset, size)
    path.write_bytes(bytes(data))
    return path


def truncated(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# name -> (writer, expected: a shape (segmented) or a regex fragment of the reason (reported))
def build_bad_folder(folder: Path) -> dict[str, object]:
    folder.mkdir()
    expected: dict[str, object] = {}
    rng = np.random.default_rng(0)

    (folder / "empty.png").write_bytes(b"")
    expected["empty.png"] = "file is empty"
    truncated(write_png(folder / "truncated.png", cells_image(64, 64)))
    expected["truncated.png"] = "not a decodable .png image"
    truncated(write_image(folder / "truncated_tiff.tif", cells_image(64, 64, dtype=np.float32)))
    expected["truncated_tiff.tif"] = "cannot read image"
    (folder / "text.png").write_text("this is a text file, not a PNG\n")
    expected["text.png"] = "not a decodable .png image"
    (folder / "bomb.png").write_bytes(png_bomb())
    expected["bomb.png"] = "100000x100000 .* decompression bomb"
    tiff_bomb(folder / "bomb_tiff.tif")
    expected["bomb_tiff.tif"] = "100000x100000 .* decompression bomb"
    tifffile.imwrite(folder / "stack.tif", rng.integers(0, 255, (6, 32, 32), dtype=np.uint8))
    expected["stack.tif"] = r"channel axis of an array of shape \(6, 32, 32\)"
    tifffile.imwrite(folder / "volume.tif", rng.integers(0, 255, (2, 3, 32, 32), dtype=np.uint8),
                     photometric="minisblack")
    expected["volume.tif"] = r"4-D data of shape \(2, 3, 32, 32\)"

    write_png(folder / "one_pixel.png", np.array([[200]], np.uint8))
    expected["one_pixel.png"] = (1, 1)
    write_png(folder / "thin.png", rng.integers(0, 255, (3, 50_000), dtype=np.uint8))
    expected["thin.png"] = (3, 50_000)
    write_png(folder / "rgba.png", np.dstack([np.stack([cells_image(48, 40)] * 3, -1), np.full((48, 40), 128, np.uint8)]))
    expected["rgba.png"] = (48, 40)
    write_png(folder / "deep16.png", cells_image(40, 50, dtype=np.uint16))
    expected["deep16.png"] = (40, 50)
    write_image(folder / "deep16_tiff.tiff", cells_image(41, 50, dtype=np.uint16))
    expected["deep16_tiff.tiff"] = (41, 50)
    floats = cells_image(45, 52, dtype=np.float32)
    floats[0, :5], floats[1, :5], floats[2, :5] = np.nan, np.inf, -np.inf
    write_image(folder / "float_nan.tif", floats)
    expected["float_nan.tif"] = (45, 52)
    write_png(folder / "constant.png", np.full((30, 30), 77, np.uint8))
    expected["constant.png"] = (30, 30)
    write_image(folder / "two_pages.tif", np.stack([cells_image(36, 44), cells_image(36, 44, seed=9)]))
    expected["two_pages.tif"] = (36, 44)  # a 2-page TIFF is a channel-first 2-channel image
    write_png(folder / "with spaces.png", cells_image(32, 33))
    expected["with spaces.png"] = (32, 33)
    write_png(folder / "ñoño 細胞.png", cells_image(31, 34))
    expected["ñoño 細胞.png"] = (31, 34)
    good = write_png(folder.parent / "outside.png", cells_image(50, 51))
    os.symlink(good, folder / "link.png")
    expected["link.png"] = (50, 51)

    # ignored: hidden files and sub-folders (their contents too)
    write_png(folder / ".hidden.png", cells_image(20, 20))
    (folder / "sub").mkdir()
    write_png(folder / "sub" / "inner.png", cells_image(20, 20))
    (folder / "notes.txt").write_text("not an image extension")
    return expected


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    expected = build_bad_folder(root / "in")
    return root / "in", expected


def label_name(image_name: str) -> str:
    return image_name.split(".")[0] + "_label.tiff"


# ----------------------------------------------------------------------------- reader, file by file


def test_reader_on_each_bad_file(bad_folder):
    folder, expected = bad_folder
    for name, outcome in expected.items():
        if isinstance(outcome, str):
            with pytest.raises(ImageReadError, match=outcome) as info:
                read_image(folder / name)
            assert str(info.value).startswith(f"{folder / name}: "), info.value
        else:
            image = read_image(folder / name)
            assert image.shape[:2] == outcome, name


def test_bomb_refused_before_decoding(tmp_path, monkeypatch):
    """The declared size is checked from the header: the decoder is never asked."""
    import cv2

    def no_decode(*args, **kwargs):
        raise AssertionError("decoder called on a decompression bomb")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    (tmp_path / "b.png").write_bytes(png_bomb(70_000, 60_000))  # 4.2 GB decoded, over the 3 GiB default
    with pytest.raises(ImageReadError, match="60000x70000"):
        read_image(tmp_path / "b.png")


def test_bmp_header_size_check(tmp_path):
    path = write_image(tmp_path / "x.bmp", cells_image(10, 12))
    data = bytearray(path.read_bytes())
    struct.pack_into("<ii", data, 18, 60_000, -60_000)  # width, top-down height
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="60000x60000 .* decompression bomb"):
        read_image(path)


def test_rgba_and_16bit_values_survive(bad_folder):
    folder, _ = bad_folder
    rgba = read_image(folder / "rgba.png")
    assert rgba.shape == (48, 40, 4) and (rgba[:, :, 3] == 128).all()
    np.testing.assert_array_equal(read_image(folder / "deep16.png")[:, :, 0], cells_image(40, 50, dtype=np.uint16))


# ----------------------------------------------------------------------------- the whole batch


@pytest.mark.slow
def test_batch_of_bad_inputs_end_to_end(bad_folder, tiny_weights, tmp_path):
    folder, expected = bad_folder
    out = tmp_path / "out"
    result = run_predict(["-i", str(folder), "-o", str(out), "-w", str(tiny_weights)])
    assert result.returncode == 1, result.stderr

    good = {name: shape for name, shape in expected.items() if not isinstance(shape, str)}
    bad = {name: reason for name, reason in expected.items() if isinstance(reason, str)}
    assert f"crossct: {len(good)} image(s) segmented, {len(bad)} failed, 0 skipped" in result.stderr

    failed_lines = [line for line in result.stderr.splitlines() if " FAILED " in line]
    assert len(failed_lines) == len(bad)
    for name, reason in bad.items():
        line = next((l for l in failed_lines if f"FAILED {folder / name}: " in l), None)
        assert line is not None, f"{name} not reported:\n{result.stderr}"
        assert re.search(reason, line), line

    # exactly one label file per good image, nothing else (no temporaries, nothing for ignored files)
    assert sorted(os.listdir(out)) == sorted(label_name(n) for n in good)
    for name, shape in good.items():
        labels = tifffile.imread(out / label_name(name))
        assert labels.shape == shape and labels.dtype == np.uint16, name
    assert tifffile.imread(out / "constant_label.tiff").shape == (30, 30)


def test_batch_goes_on_after_failures_in_process(bad_folder, onnx_predictor, tmp_path):
    folder, expected = bad_folder
    out = tmp_path / "out"
    out.mkdir()
    work, errors, skipped = find_work(folder, out)
    assert errors == [] and skipped == []
    names = sorted(item.image.name for item in work)
    assert names == sorted(expected)  # hidden, sub-folder and .txt ignored; the symlink listed
    small = [item for item in work if item.image.name in {"text.png", "one_pixel.png", "bomb.png", "constant.png"}]
    summary = run_batch(small, onnx_predictor)
    assert summary.done == 2
    assert sorted(Path(f).name for f, _ in summary.failed) == ["bomb.png", "text.png"]
    assert all(reason and not reason.startswith(str(folder)) for _, reason in summary.failed)
    assert sorted(os.listdir(out)) == ["constant_label.tiff", "one_pixel_label.tiff"]


def test_write_failure_leaves_nothing_and_is_reported(tmp_path, onnx_predictor, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    write_png(inp / "a.png", cells_image(40, 40))
    write_png(inp / "b.png", cells_image(40, 40, seed=1))

    real = tifffile.imwrite
    calls = []

    def half_then_fail(fh, data, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            fh.write(b"II*\0partial")
            raise OSError(28, "No space left on device")
        return real(fh, data, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", half_then_fail)
    work, _, _ = find_work(inp, out)
    summary = run_batch(work, onnx_predictor)
    assert summary.done == 1
    assert len(summary.failed) == 1 and summary.failed[0][0] == str(inp / "a.png")
    assert "No space left on device" in summary.failed[0][1]
    assert sorted(os.listdir(out)) == ["b_label.tiff"]  # no a_label.tiff, no hidden temporary


def test_labels_above_65535_written_as_uint32(tmp_path):
    labels = np.arange(300 * 300, dtype=np.int32).reshape(300, 300)  # 89999 labels
    path = write_labels(tmp_path / "many_label.tiff", labels)
    data = tifffile.imread(path)
    assert data.dtype == np.uint32 and data.max() == 89_999
    np.testing.assert_array_equal(data, labels)


def test_deterministic_labels(tmp_path, onnx_predictor):
    inp = tmp_path / "in"
    inp.mkdir()
    write_png(inp / "a.png", cells_image(100, 130, seed=4))
    write_image(inp / "b.tif", cells_image(70, 64, seed=5, dtype=np.uint16))
    results = []
    for run in ("one", "two"):
        out = tmp_path / run
        out.mkdir()
        work, _, _ = find_work(inp, out)
        assert run_batch(work, onnx_predictor).done == 2
        results.append({p.name: tifffile.imread(p) for p in sorted(out.iterdir())})
    assert results[0].keys() == results[1].keys() == {"a_label.tiff", "b_label.tiff"}
    for name in results[0]:
        np.testing.assert_array_equal(results[0][name], results[1][name])
        assert results[0][name].tobytes() == results[1][name].tobytes()
