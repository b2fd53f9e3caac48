"""Hostile inputs: no file can exhaust memory, no run can hurt another.

A generated folder holds, for every format the reader accepts, an image just under the memory
budget (segmented, in bounded memory) and files that declare just over it, or far over it, from a
few hundred bytes (refused from the header, naming the file, before anything is decoded): a
631-byte JPEG declaring 30000 x 30000, a multi-page TIFF bomb, a 46000 x 46000 RGB TIFF, tiles
larger than memory, 16-bit and float samples, pages read as channels; and odd files (a FIFO, a
device, a broken link, empty and truncated files).  ``predict.py`` runs on it in a child process
whose peak memory (``ru_maxrss`` from ``wait4``) must stay under the budget plus what the same
command takes for one tiny image (the interpreter, the libraries and the model).  Several
processes writing one output folder at once all finish every image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import REPO, run_predict, write_png
from test_bad_inputs import png_bomb

from crossct import io
from crossct.budget import MemoryBudget, needed_bytes
from crossct.config import load_spec
from crossct.io import ImageHeader, ImageReadError, read_header, read_image
from crossct.synthetic import synthetic_cells

BUDGET = 100 * 2**20


# ----------------------------------------------------------------------------- file factories


def patch_jpeg_size(data: bytes, height: int, width: int) -> bytes:
    """The JPEG with its frame header (SOF0/SOF2) declaring height x width."""
    data = bytearray(data)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            struct.pack_into(">HH", data, at + 5, height, width)
            return bytes(data)
    raise AssertionError("no frame header")


def jpeg_bomb(height: int, width: int, progressive: bool = False, colour: bool = False) -> bytes:
    """An 8 x 8 JPEG whose header declares height x width: a few hundred bytes (the decoder fills the rest)."""
    image = np.full((8, 8, 3) if colour else (8, 8), 128, np.uint8)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return patch_jpeg_size(data.tobytes(), height, width)


def tiff_patched(path: Path, array: np.ndarray, size: tuple[int, int] | None = None,
                 patch_tile: tuple[int, int] | None = None, **options) -> Path:
    """Write ``array`` as TIFF (``options`` go to tifffile), then patch every page's
    ImageLength/ImageWidth to ``size`` and its TileLength/TileWidth to ``patch_tile``: a file of a few
    hundred bytes declaring what they say."""
    tifffile.imwrite(path, array, **options)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            for name, value in ((("ImageLength", "ImageWidth"), size), (("TileLength", "TileWidth"), patch_tile)):
                if value is None:
                    continue
                for tag_name, v in zip(name, value):
                    tag = page.tags[tag_name]
                    struct.pack_into("<I" if tag.dtype in (4, 16) else "<H", data, tag.valueoffset, v)
    path.write_bytes(bytes(data))
    return path


def largest_side_under(budget: int, spec, channels: int, dtype, decoder: int = 0, fraction: float = 0.95) -> int:
    """The largest square side whose estimate stays under ``fraction`` of the budget."""
    lo, hi = 1, 1 << 16
    while lo < hi:
        mid = (lo + hi + 1) // 2
        header = ImageHeader("tiff", mid, mid, channels, np.dtype(dtype), decoder)
        lo, hi = (mid, hi) if needed_bytes(header, spec) <= fraction * budget else (lo, mid - 1)
    return lo


def gray_field(side: int, dtype=np.uint8) -> np.ndarray:
    """A side x side field of synthetic cells (a 256 x 256 tile repeated: compresses well)."""
    tile = synthetic_cells(256, 256, seed=3)[0]
    field = np.tile(tile, (-(-side // 256), -(-side // 256)))[:side, :side]
    if dtype == np.uint8:
        return field
    return field.astype(dtype) * (257 if dtype == np.uint16 else 1 / 255)


def build_hostile_folder(folder: Path, spec, budget: int) -> tuple[list[str], dict[str, str]]:
    """(good image names, {bad name: expected reason}) of a generated hostile folder."""
    folder.mkdir()
    good: list[str] = []
    bad: dict[str, str] = {}
    over = "over the memory limit"

    # Just under the budget, one per format (small files for large images), through the block path.
    side = largest_side_under(budget, spec, 1, np.uint8)
    write_png(folder / "under_png.png", gray_field(side))
    side3 = largest_side_under(budget, spec, 3, np.uint8)
    rgb = np.repeat(gray_field(side3)[:, :, None], 3, axis=2)
    ok, data = cv2.imencode(".bmp", rgb)
    bmp_side = largest_side_under(budget, spec, 3, np.uint8, decoder=len(data.tobytes()))
    ok, data = cv2.imencode(".bmp", rgb[:bmp_side, :bmp_side])
    (folder / "under_bmp.bmp").write_bytes(data.tobytes())
    (folder / "under_jpeg_bomb.jpg").write_bytes(jpeg_bomb(side, side))  # a few hundred bytes; decoded gray
    tifffile.imwrite(folder / "under_tiff16.tif", gray_field(largest_side_under(budget, spec, 1, np.uint16), np.uint16),
                     compression="zlib")
    good += ["under_png.png", "under_bmp.bmp", "under_jpeg_bomb.jpg", "under_tiff16.tif"]
    # ... and ordinary small images, through the fast path.
    for i in range(2):
        write_png(folder / f"small_{i}.png", synthetic_cells(96, 128, seed=i)[0])
        good.append(f"small_{i}.png")

    # Just over: one pixel wider than the largest gray uint8 image that fits, or that largest size with
    # more channels, pages or bytes per sample, or a progressive JPEG's coefficients.
    fits = largest_side_under(budget, spec, 1, np.uint8, fraction=1.0)
    fits3 = largest_side_under(budget, spec, 3, np.uint8, fraction=1.0)
    s = fits + 1
    (folder / "over_png.png").write_bytes(png_bomb(s, s))
    (folder / "over_jpeg.jpg").write_bytes(jpeg_bomb(s, s))
    (folder / "over_jpeg_progressive.jpg").write_bytes(jpeg_bomb(side3, side3, progressive=True, colour=True))
    bmp = bytearray(cv2.imencode(".bmp", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    struct.pack_into("<ii", bmp, 18, fits3 + 1, -(fits3 + 1))
    (folder / "over_bmp.bmp").write_bytes(bytes(bmp))
    tiff_patched(folder / "over_tiff_float64.tif", np.zeros((16, 16), np.float64), size=(fits, fits))
    tiff_patched(folder / "over_tiff_rgb16.tif", np.zeros((16, 16, 3), np.uint16), size=(fits3, fits3),
                 photometric="rgb")
    tiff_patched(folder / "over_tiff_pages_as_channels.tif", np.zeros((3, 16, 16), np.uint8), size=(fits, fits))
    # A 64 x 64 image in tiles declared 16384 x 16384: each tile's buffer is over the budget.
    tiff_patched(folder / "over_tiff_tiles.tif", np.zeros((64, 64), np.uint8), patch_tile=(16384, 16384), tile=(16, 16))
    for name in ["over_png.png", "over_jpeg.jpg", "over_jpeg_progressive.jpg", "over_bmp.bmp", "over_tiff_float64.tif",
                 "over_tiff_rgb16.tif", "over_tiff_pages_as_channels.tif", "over_tiff_tiles.tif"]:
        bad[name] = over

    # Far over, from the issue: a 631-byte JPEG declaring 30000 x 30000, 200 pages of 4000 x 4000,
    # a 46000 x 46000 RGB TIFF.
    (folder / "bomb_jpeg_30000.jpg").write_bytes(jpeg_bomb(30000, 30000, colour=True))
    bad["bomb_jpeg_30000.jpg"] = r"declared size 30000x30000 \(3 channels, uint8, JPEG\) needs about .* GiB to segment"
    tiff_patched(folder / "bomb_200_pages.tif", np.zeros((200, 16, 16), np.uint8), size=(4000, 4000))
    bad["bomb_200_pages.tif"] = r"shape \(200, 4000, 4000\) .* stacks and volumes are not 2-D images"
    tiff_patched(folder / "bomb_46000_rgb.tif", np.zeros((16, 16, 3), np.uint8), size=(46000, 46000), photometric="rgb")
    bad["bomb_46000_rgb.tif"] = r"declared size 46000x46000 \(3 channels, uint8, TIFF\) needs about"

    # Odd files.
    os.mkfifo(folder / "pipe.png")
    bad["pipe.png"] = r"is a FIFO \(named pipe\), not an image file"
    os.symlink("/dev/zero", folder / "device.png")
    bad["device.png"] = "is a character device, not an image file"
    os.symlink(folder / "gone.png", folder / "dangling.png")
    bad["dangling.png"] = "a broken symbolic link"
    (folder / "empty.tif").write_bytes(b"")
    bad["empty.tif"] = r"file is empty \(0 bytes\)"
    (folder / "text.jpg").write_text("not a JPEG\n")
    bad["text.jpg"] = "not a decodable .jpg image"
    (folder / "folder.png").mkdir()  # a sub-folder: skipped, never read
    return good, bad


@pytest.fixture(scope="module")
def hostile_weights(tiny_weights, tmp_path_factory) -> Path:
    """The tiny weights with small blocks, so images of a few megapixels take the whole-slide path."""
    weights = tmp_path_factory.mktemp("hostile_weights")
    for name in ("model.onnx", "model.json"):
        shutil.copy(tiny_weights / name, weights / name)
    spec = json.loads((weights / "model.json").read_text())
    spec["tiling"].update(block_size=512, block_margin=64)  # model.json is not checksummed, the model is
    (weights / "model.json").write_text(json.dumps(spec))
    return weights


def run_measured(args: list[str], timeout: float = 300) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in bytes) of ``python predict.py ARGS`` in a child process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    env.pop("CROSSCT_WEIGHTS", None)
    with open(os.devnull, "w") as devnull, subprocess.Popen(
            [sys.executable, str(REPO / "predict.py"), *args], cwd=REPO, env=env, stdout=devnull,
            stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + timeout
        err = proc.stderr.read()  # until the child closes it (exits)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(err)
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err, usage.ru_maxrss * 1024


# ----------------------------------------------------------------------------- the hostile folder


@pytest.mark.slow  # about 30-60 s: two predict.py processes, four images of a few megapixels
def test_hostile_folder(hostile_weights, tmp_path):
    spec = load_spec(hostile_weights / "model.json")
    folder = tmp_path / "in"
    good, bad = build_hostile_folder(folder, spec, BUDGET)
    budget = MemoryBudget(BUDGET)
    for name in good:  # the folder is what it claims: under the budget ...
        budget.check(folder / name, read_header(folder / name), spec)
    for name in bad:  # ... and over it, or not readable at all
        with pytest.raises(ImageReadError):
            budget.check(folder / name, read_header(folder / name), spec)
    assert max(os.path.getsize(folder / n) for n in bad if n.startswith(("over_", "bomb_"))) < 100_000  # small files

    # What the command takes for one tiny image: interpreter, libraries, model.
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    write_png(tiny / "t.png", synthetic_cells(64, 64, seed=0)[0])
    code, err, model_peak = run_measured(["-i", str(tiny), "-o", str(tmp_path / "tiny_out"), "-w", str(hostile_weights)])
    assert code == 0, err

    out = tmp_path / "out"
    code, err, peak = run_measured(["-i", str(folder), "-o", str(out), "-w", str(hostile_weights),
                                    "--max-memory", str(BUDGET)])
    assert code == 1, err  # README: 1 = some images failed, the others written
    failed = {line.split(" FAILED ", 1)[1].split(": ", 1)[0]: line for line in err.splitlines() if " FAILED " in line}
    assert sorted(failed) == sorted(str(folder / name) for name in bad), err
    for name, reason in bad.items():
        assert re.search(reason, failed[str(folder / name)]), failed[str(folder / name)]
    assert f"crossct: {len(good)} image(s) segmented, {len(bad)} failed, 0 skipped" in err
    assert len(err.splitlines()) < 3 * (len(good) + len(bad)), err  # no per-page noise from the TIFF bombs
    assert sorted(os.listdir(out)) == sorted(n.split(".")[0] + "_label.tiff" for n in good)
    for name in good:
        assert tifffile.imread(out / (name.split(".")[0] + "_label.tiff")).shape == read_image(folder / name).shape[:2]
    assert peak <= model_peak + BUDGET, (
        f"peak RSS {peak / 2**20:.0f} MiB > model {model_peak / 2**20:.0f} MiB + budget {BUDGET / 2**20:.0f} MiB")


def test_bombs_from_the_issue_refused_from_the_header(tmp_path, monkeypatch):
    """The three files of the issue are refused without the decoder ever being called, naming the file."""
    import tifffile as tf

    def no_decoding(*args, **kwargs):
        raise AssertionError("a decoder was called")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    monkeypatch.setattr(tf.TiffPageSeries, "asarray", no_decoding)
    jpeg = tmp_path / "bomb.jpg"
    jpeg.write_bytes(jpeg_bomb(30000, 30000, colour=True))
    assert jpeg.stat().st_size < 700
    pages = tiff_patched(tmp_path / "pages.tif", np.zeros((200, 16, 16), np.uint8), size=(4000, 4000))
    slide = tiff_patched(tmp_path / "slide.tif", np.zeros((16, 16, 3), np.uint8), size=(46000, 46000),
                         photometric="rgb")
    spec = load_spec(REPO / "weights" / "model.json") if (REPO / "weights" / "model.json").is_file() else None
    for path, reason in [(jpeg, "30000x30000 (3 channels, uint8, JPEG) needs 2.5 GiB decoded"),
                         (pages, "(200, 4000, 4000)"),
                         (slide, "46000x46000 (3 channels, uint8, TIFF) needs 5.9 GiB decoded")]:
        with pytest.raises(ImageReadError) as info:
            read_image(path, max_bytes=2 * 2**30)
        assert str(info.value).startswith(f"{path}: ") and reason in str(info.value), info.value
    if spec is not None:  # with the default budget, segmenting them is refused too
        with pytest.raises(ImageReadError, match="needs about 15.0 GiB to segment .* --max-memory 15G"):
            MemoryBudget().check(jpeg, read_header(jpeg), spec)


def test_bit_depth_channels_and_pages_are_counted(tmp_path):
    """The same height x width costs more with more channels, bytes per sample, pages or bigger tiles."""
    tifffile.imwrite(tmp_path / "gray8.tif", np.zeros((64, 64), np.uint8))
    tifffile.imwrite(tmp_path / "rgb16.tif", np.zeros((64, 64, 3), np.uint16), photometric="rgb")
    tifffile.imwrite(tmp_path / "f64.tif", np.zeros((64, 64), np.float64))
    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((4, 64, 64), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "tiled.tif", np.zeros((64, 64), np.uint8), tile=(32, 32), compression="zlib")
    cases = {"gray8.tif": (1, "uint8"), "rgb16.tif": (3, "uint16"), "f64.tif": (1, "float64"), "pages.tif": (4, "uint8")}
    for name, (channels, dtype) in cases.items():
        header = read_header(tmp_path / name)
        array = read_image(tmp_path / name)
        assert (header.height, header.width, header.channels, header.dtype.name) == (64, 64, channels, dtype)
        assert array.shape == (64, 64, channels) and array.dtype == header.dtype
        assert header.decoded_bytes >= array.nbytes
    tiled = read_header(tmp_path / "tiled.tif")
    assert tiled.decoder_bytes == 2 * 32 * 32 * min(4, io.TIFF_DECODE_WORKERS)


@pytest.mark.parametrize("make, channels, dtype", [
    (lambda p: write_png(p, np.zeros((20, 30), np.uint8)), 1, np.uint8),
    (lambda p: write_png(p, np.zeros((20, 30, 3), np.uint16)), 3, np.uint16),
    (lambda p: write_png(p, np.zeros((20, 30, 4), np.uint8)), 4, np.uint8),
    (lambda p: p.write_bytes(jpeg_bomb(20, 30)), 1, np.uint8),
    (lambda p: p.write_bytes(jpeg_bomb(20, 30, progressive=True, colour=True)), 3, np.uint8),
    (lambda p: p.write_bytes(cv2.imencode(".bmp", np.zeros((20, 30, 3), np.uint8))[1].tobytes()), 3, np.uint8),
], ids=["png-gray", "png-rgb16", "png-rgba", "jpeg-gray", "jpeg-progressive-rgb", "bmp"])
def test_headers_agree_with_what_is_decoded(tmp_path, make, channels, dtype):
    path = tmp_path / "x.img"
    make(path)
    header = read_header(path)
    image = read_image(path)
    assert (header.height, header.width) == image.shape[:2] == (20, 30)
    assert header.channels == image.shape[2] == channels and header.dtype == image.dtype == dtype
    assert header.decoded_bytes >= image.nbytes


def test_content_decides_the_format_not_the_name(tmp_path):
    """A JPEG named .png (or a TIFF named .jpg) is read by what it is, and checked by its own header."""
    (tmp_path / "jpeg.png").write_bytes(jpeg_bomb(30000, 30000))
    with pytest.raises(ImageReadError, match="JPEG"):
        read_image(tmp_path / "jpeg.png", max_bytes=2**29)
    tifffile.imwrite(tmp_path / "tiff.jpg", np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert read_image(tmp_path / "tiff.jpg")[:, :, 0].tolist() == np.arange(12).reshape(3, 4).tolist()
    (tmp_path / "gif.png").write_bytes(b"GIF89a" + bytes(20))
    with pytest.raises(ImageReadError, match="its content is not PNG, JPEG, BMP or TIFF"):
        read_image(tmp_path / "gif.png")


@pytest.mark.parametrize("kind", ["fifo", "device", "dangling", "folder"])
def test_special_files_reported_for_what_they_are(tmp_path, kind):
    path = tmp_path / "x.png"
    expected = {"fifo": "is a FIFO (named pipe)", "device": "is a character device", "dangling": "a broken symbolic link",
                "folder": "is a folder"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.symlink("/dev/null", path)
    elif kind == "dangling":
        os.symlink(tmp_path / "gone", path)
    else:
        path.mkdir()
    with pytest.raises(ImageReadError, match=re.escape(expected)) as info:
        read_image(path)  # a FIFO must not be opened: that would block forever
    assert str(info.value).startswith(f"{path}: ")
