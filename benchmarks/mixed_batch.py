"""A 200-image batch as a real lab might send it: 188 good images in assorted formats, dtypes and sizes,
and a dozen bad files.  Runs ``predict.py`` once on it and prints, per file, what was expected and what
happened, then the counts and the exit code.

From the repository root::

    python -m benchmarks.mixed_batch                  # tiny untrained weights, exported to a temp dir
    python -m benchmarks.mixed_batch --weights path/to/weights --keep /tmp/mixed

Exits 1 when a good image has no label, a bad file has a label or is not reported (with the expected
reason), an ignored entry gets a label, or predict.py's exit code is not 1 (some images failed).
Timing is not measured here.
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

N_IMAGES, N_BAD = 200, 12


@dataclass
class Entry:
    name: str
    kind: str
    expected: str  # "written", "reported" or "ignored"
    reason: str = ""  # for "reported": a regex the reported reason must match
    shape: tuple[int, int] | None = None  # for "written": the label's (H, W)


# ----------------------------------------------------------------------------- writers


def _encode(path: Path, array: np.ndarray) -> Path:
    """Write with OpenCV (RGB(A) in, RGB(A) in the file) or tifffile, by suffix."""
    import cv2
    import tifffile

    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
        return path
    if array.ndim == 3 and array.shape[2] >= 3:
        array = array[:, :, [2, 1, 0, *range(3, array.shape[2])]]
    ok, data = cv2.imencode(path.suffix, array)
    if not ok:
        raise RuntimeError(f"cannot encode {path.name}")
    path.write_bytes(data.tobytes())
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_bomb(size: int = 100_000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _tiff_bomb(path: Path, size: int = 100_000) -> None:
    import tifffile

    tifffile.imwrite(path, np.zeros((16, 16), np.uint8))
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offsets = [tif.pages[0].tags[tag].valueoffset for tag in ("ImageWidth", "ImageLength")]
    for offset in offsets:
        struct.pack_into("<I", data, offset, size)
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ----------------------------------------------------------------------------- the folder


def _cells(h: int, w: int, seed: int) -> np.ndarray:
    from crossct.synthetic import synthetic_cells

    return synthetic_cells(h, w, seed=seed)[0]


def _variants(image: np.ndarray, rng: np.random.Generator) -> list[tuple[str, str, np.ndarray, dict]]:
    """(suffix, kind, array, tifffile options) for one synthetic uint8 gray image."""
    gray16 = image.astype(np.uint16) * 257
    rgb = np.stack([image, (image * 0.6).astype(np.uint8), (image * 0.3).astype(np.uint8)], -1)
    return [
        (".png", "PNG gray 8-bit", image, {}),
        (".png", "PNG RGB 8-bit", rgb, {}),
        (".png", "PNG gray 16-bit", gray16, {}),
        (".png", "PNG RGBA", np.dstack([rgb, np.full(image.shape, 255, np.uint8)]), {}),
        (".tif", "TIFF gray 16-bit", gray16, {}),
        (".tif", "TIFF float32", image.astype(np.float32) / 255, {}),
        (".tiff", "TIFF RGB 8-bit", rgb, {}),
        (".tif", "TIFF RGB planar (C, H, W)", np.moveaxis(rgb, -1, 0), {"photometric": "rgb", "planarconfig": "separate"}),
        (".TIF", "TIFF gray 8-bit, upper-case suffix", image, {}),
        (".bmp", "BMP gray 8-bit", image, {}),
        (".jpg", "JPEG gray", image, {}),
        (".jpeg", "JPEG RGB", rgb, {}),
    ]


def build_folder(root: Path, seed: int = 0) -> list[Entry]:
    """Write ``root/in`` (200 images + ignored entries) and return what each entry should give."""
    import tifffile

    folder = root / "in"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    entries: list[Entry] = []

    def good(name: str, kind: str, array: np.ndarray, **options) -> None:
        path = folder / name
        if options:
            tifffile.imwrite(path, array, **options)
        else:
            _encode(path, array)
        from crossct.io import read_image  # the shape the reader gives (channel-first -> H, W)

        entries.append(Entry(name, kind, "written", shape=read_image(path).shape[:2]))

    def bad(name: str, kind: str, reason: str) -> None:
        entries.append(Entry(name, kind, "reported", reason=reason))

    # Odd but valid: each once.
    good("one_pixel.png", "1x1 pixel", np.array([[200]], np.uint8))
    good("thin.png", "3x5000 strip", _cells(3, 5000, 1))
    good("constant.png", "constant image", np.full((80, 90), 77, np.uint8))
    floats = _cells(120, 100, 2).astype(np.float32)
    floats[0, :5], floats[1, :5], floats[2, :5] = np.nan, np.inf, -np.inf
    good("float_nan.tif", "float32 with NaN / inf", floats)
    good("two_pages.tif", "2-page TIFF (2 channels)", np.stack([_cells(90, 70, 3), _cells(90, 70, 4)]))
    good("with spaces.png", "spaces in the name", _cells(64, 80, 5))
    good("ñoño 細胞.png", "non-ASCII name", _cells(70, 64, 6))
    good("a.b.c.png", "dots in the name", _cells(64, 64, 7))
    good("slide.tif", "2700x400: block-by-block path", _cells(2700, 400, 8))
    outside = _encode(root / "outside.png", _cells(100, 120, 9))
    os.symlink(outside, folder / "link.png")
    entries.append(Entry("link.png", "symlink to a file outside", "written", shape=(100, 120)))

    # Ordinary images, cycling through formats and dtypes.
    sizes = [(64, 64), (96, 160), (200, 150), (256, 256), (300, 220), (48, 400), (180, 180)]
    n_plain = N_IMAGES - N_BAD - len(entries)
    for i in range(n_plain):
        h, w = sizes[i % len(sizes)]
        image = _cells(h, w, 100 + i)
        variants = _variants(image, rng)
        suffix, kind, array, options = variants[i % len(variants)]
        good(f"cell_{i:03d}{suffix}", kind, array, **options)

    # A dozen bad files.
    (folder / "empty.png").write_bytes(b"")
    bad("empty.png", "zero bytes", "file is empty")
    _truncate(_encode(folder / "truncated_png.png", _cells(128, 128, 11)))
    bad("truncated_png.png", "PNG cut in half", "not a decodable .png image")
    _truncate(_encode(folder / "truncated_tif.tif", _cells(128, 128, 12).astype(np.float32)))
    bad("truncated_tif.tif", "TIFF cut in half", "cannot read image")
    _truncate(_encode(folder / "truncated_jpg.jpg", _cells(128, 128, 13)))
    bad("truncated_jpg.jpg", "JPEG cut in half", "not a decodable .jpg image")
    (folder / "notes.png").write_text("Plate 3, well B4: re-image tomorrow\n")
    bad("notes.png", "text file named .png", "not a decodable .png image")
    (folder / "bomb_png.png").write_bytes(_png_bomb())
    bad("bomb_png.png", "PNG declaring 100000x100000", "decompression bomb")
    _tiff_bomb(folder / "bomb_tif.tif")
    bad("bomb_tif.tif", "TIFF declaring 100000x100000", "decompression bomb")
    bmp = _encode(folder / "bomb_bmp.bmp", _cells(10, 12, 14))
    data = bytearray(bmp.read_bytes())
    struct.pack_into("<ii", data, 18, 60_000, -60_000)
    bmp.write_bytes(bytes(data))
    bad("bomb_bmp.bmp", "BMP declaring 60000x60000", "decompression bomb")
    tifffile.imwrite(folder / "zstack.tif", rng.integers(0, 255, (6, 64, 64), dtype=np.uint8))
    bad("zstack.tif", "6-plane z-stack", "cannot tell the channel axis")
    tifffile.imwrite(folder / "timelapse.tif", rng.integers(0, 255, (2, 3, 64, 64), dtype=np.uint8),
                     photometric="minisblack")
    bad("timelapse.tif", "4-D TIFF (T, C, Y, X)", "4-D data")
    _encode(folder / "well_A1.png", _cells(64, 64, 15))
    _encode(folder / "well_A1.tif", _cells(64, 64, 16))
    bad("well_A1.png", "same label name as well_A1.tif", "output name well_A1_label.tiff is shared")
    bad("well_A1.tif", "same label name as well_A1.png", "output name well_A1_label.tiff is shared")

    # Not images: never read, never reported.
    _encode(folder / ".hidden.png", _cells(32, 32, 17))
    entries.append(Entry(".hidden.png", "hidden file", "ignored"))
    (folder / "README.txt").write_text("acquisition notes\n")
    entries.append(Entry("README.txt", "not an image extension", "ignored"))
    (folder / "old").mkdir()
    _encode(folder / "old" / "cell_old.png", _cells(32, 32, 18))
    entries.append(Entry("old/cell_old.png", "inside a sub-folder", "ignored"))

    n_images = sum(e.expected != "ignored" for e in entries)
    n_bad = sum(e.expected == "reported" for e in entries)
    assert (n_images, n_bad) == (N_IMAGES, N_BAD), (n_images, n_bad)
    return entries


# ----------------------------------------------------------------------------- run and report


def _label_name(name: str) -> str:
    return Path(name).name.split(".")[0] + "_label.tiff"


def _export_tiny(folder: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "crossct.export", "--tiny-untrained", str(folder)], cwd=REPO, env=env,
                   check=True, capture_output=True)
    return folder


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def run(root: Path, weights: Path | None) -> int:
    import tifffile

    entries = build_folder(root)
    weights = weights or _export_tiny(root / "tiny_weights")
    inp, out = root / "in", root / "out"
    command = [sys.executable, str(REPO / "predict.py"), "-i", str(inp), "-o", str(out), "-w", str(weights), "-q"]
    print(f"$ python {' '.join(command[1:])}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    failed_lines = [line.split(" FAILED ", 1)[1] for line in result.stderr.splitlines() if " FAILED " in line]

    rows, problems = [], []
    for e in entries:
        label = out / _label_name(e.name)
        has_label = label.is_file()
        prefix = f"{inp / e.name}: "
        reported = next((line.removeprefix(prefix) for line in failed_lines if line.startswith(prefix)), None)
        if has_label:
            shape = tifffile.imread(label).shape
            happened = f"label {shape[0]}x{shape[1]}"
        elif reported is not None:
            happened = f"reported: {reported}"
        else:
            happened = "nothing"
        if e.expected == "written":
            ok = has_label and shape == tuple(e.shape) and reported is None
        elif e.expected == "reported":
            ok = not has_label and reported is not None and re.search(e.reason, reported) is not None
        else:
            ok = not has_label and reported is None
        if not ok:
            problems.append(e.name)
        rows.append(f"| {_cell(e.name)} | {e.kind} | {e.expected} | {_cell(happened)} | {'ok' if ok else '**NO**'} |")

    # Files in the output that no entry accounts for (temporaries, labels for ignored files).
    expected_labels = {_label_name(e.name) for e in entries if e.expected == "written"}
    stray = sorted(p.name for p in out.iterdir() if p.name not in expected_labels) if out.is_dir() else []

    print("| file | kind | expected | what happened | ok |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    n_good = sum(e.expected == "written" for e in entries)
    n_written = sum(1 for e in entries if e.expected == "written" and e.name not in problems)
    n_bad = sum(e.expected == "reported" for e in entries)
    n_reported = sum(1 for e in entries if e.expected == "reported" and e.name not in problems)
    summary = next((line for line in result.stderr.splitlines() if line.startswith("crossct: ")), "(no summary line)")
    print()
    print(f"- images: {N_IMAGES} ({n_good} good, {n_bad} bad) + {len(entries) - N_IMAGES} ignored entries")
    print(f"- good images with a whole label of the right size: {n_written} / {n_good}")
    print(f"- bad files reported with the expected reason and no label: {n_reported} / {n_bad}")
    print(f"- FAILED lines on stderr: {len(failed_lines)}; stray files in the output folder: {stray or 'none'}")
    print(f"- predict.py summary: {summary}")
    print(f"- predict.py exit code: {result.returncode} (expected 1: some images failed, the rest written)")
    if problems or stray or result.returncode != 1 or len(failed_lines) != N_BAD:
        print(f"\nPROBLEMS: {problems} stray={stray} exit={result.returncode}\n{result.stderr[-3000:]}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=Path, default=None,
                   help="weights folder for predict.py; default: the tiny untrained model, exported to a temp dir")
    p.add_argument("--keep", type=Path, default=None,
                   help="build the batch in this (new) folder and keep it, instead of a temp dir")
    args = p.parse_args(argv)
    if args.keep is not None:
        return run(args.keep, args.weights)
    with tempfile.TemporaryDirectory(prefix="crossct-mixed-") as tmp:
        return run(Path(tmp), args.weights)


if __name__ == "__main__":
    sys.exit(main())
