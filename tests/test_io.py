"""crossct.io: every format and channel layout comes back (H, W, C), exact and in RGB order."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import write_image, write_png

from crossct.io import (
    ImageReadError,
    image_shape,
    label_dtype,
    list_images,
    output_name,
    read_image,
    write_labels,
)

RNG = np.random.default_rng(0)
GRAY8 = RNG.integers(0, 256, (13, 17), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, (13, 17, 3), dtype=np.uint8)
RGBA8 = RNG.integers(0, 256, (13, 17, 4), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (13, 17), dtype=np.uint16)
RGB16 = RNG.integers(0, 65536, (13, 17, 3), dtype=np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff", ".PNG", ".TIF"])
@pytest.mark.parametrize("name, array", [("gray8", GRAY8), ("rgb8", RGB8), ("rgba8", RGBA8)])
def test_lossless_8bit_roundtrip(tmp_path, suffix, name, array):
    path = write_image(tmp_path / f"img{suffix}", array)
    image = read_image(path)
    expected = array if array.ndim == 3 else array[:, :, None]
    assert image.dtype == np.uint8
    assert image.shape == expected.shape
    np.testing.assert_array_equal(image, expected)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("array", [GRAY16, RGB16], ids=["gray16", "rgb16"])
def test_16bit_roundtrip(tmp_path, suffix, array):
    image = read_image(write_image(tmp_path / f"img{suffix}", array))
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, array if array.ndim == 3 else array[:, :, None])


def test_float32_tiff_roundtrip(tmp_path):
    array = RNG.normal(size=(11, 9)).astype(np.float32)
    array[0, 0], array[1, 1], array[2, 2] = np.nan, np.inf, -np.inf
    image = read_image(write_image(tmp_path / "f.tif", array))
    assert image.dtype == np.float32 and image.shape == (11, 9, 1)
    np.testing.assert_array_equal(image[:, :, 0], array)  # NaN == NaN for assert_array_equal


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".jpg", ".jpeg"])
def test_pure_red_stays_red(tmp_path, suffix):
    """OpenCV decodes BGR: the reader must hand back RGB."""
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    image = read_image(write_png(tmp_path / "red.png", red) if suffix == ".png" else write_image(tmp_path / f"red{suffix}", red))
    assert image.shape == (16, 16, 3)
    assert image[..., 0].min() >= 250 and image[..., 1:].max() <= 5


def test_rgba_channel_order(tmp_path):
    pixel = np.array([10, 20, 30, 40], np.uint8)
    image = read_image(write_png(tmp_path / "rgba.png", np.tile(pixel, (4, 5, 1))))
    assert image.shape == (4, 5, 4)
    np.testing.assert_array_equal(image[2, 3], pixel)


def test_jpeg_is_close(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (24, 1))
    image = read_image(write_image(tmp_path / "g.jpg", smooth))
    assert image.shape == (24, 32, 1) and image.dtype == np.uint8
    assert np.abs(image[:, :, 0].astype(int) - smooth).max() <= 8


@pytest.mark.parametrize(
    "shape, options, expected",
    [
        ((2, 13, 17), {}, (13, 17, 2)),  # channel-first, written as two pages
        ((3, 13, 17), {"photometric": "minisblack"}, (13, 17, 3)),  # channel-first, three pages
        ((3, 13, 17), {"photometric": "minisblack", "planarconfig": "separate"}, (13, 17, 3)),  # planar samples
        ((13, 17, 2), {}, (13, 17, 2)),  # channel-last, 2 channels
        ((13, 17, 4), {}, (13, 17, 4)),  # channel-last, 4 channels (RGB + extra sample)
        ((13, 17, 3), {}, (13, 17, 3)),
        ((13, 17), {}, (13, 17, 1)),
        ((1, 13, 17), {}, (13, 17, 1)),  # singleton page axis dropped
    ],
)
def test_tiff_channel_layouts(tmp_path, shape, options, expected):
    array = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    tifffile.imwrite(tmp_path / "m.tif", array, **options)
    image = read_image(tmp_path / "m.tif")
    assert image.shape == expected
    if len(shape) == 3 and shape[0] < shape[-1] and expected[-1] == shape[0]:
        np.testing.assert_array_equal(image, np.moveaxis(array, 0, -1))
    else:
        np.testing.assert_array_equal(image.reshape(array.shape), array)


@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (40, 1), (3, 50), (2, 2)])
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_thin_gray_images(tmp_path, shape, suffix):
    array = RNG.integers(1, 256, shape, dtype=np.uint8)
    image = read_image(write_image(tmp_path / f"t{suffix}", array))
    assert image.shape == shape + (1,)
    np.testing.assert_array_equal(image[:, :, 0], array)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 40, 3), (3, 50, 3), (2, 2, 3), (3, 3, 4)])
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_thin_colour_images(tmp_path, shape, suffix):
    """Height or width no larger than the channel count must not be mistaken for a channel axis."""
    array = RNG.integers(0, 256, shape, dtype=np.uint8)
    image = read_image(write_image(tmp_path / f"t{suffix}", array))
    assert image.shape == shape
    np.testing.assert_array_equal(image, array)


def test_non_ascii_and_spaces_in_name(tmp_path):
    path = write_png(tmp_path / "cellules ümlaut 細胞.png", GRAY8)
    np.testing.assert_array_equal(read_image(path)[:, :, 0], GRAY8)


@pytest.mark.parametrize("content, reason", [(b"", "empty"), (b"this is not an image\n", "not a decodable")])
def test_unreadable_files_name_file_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.png")


# --------------------------------------------------------------------------- names and listing


@pytest.mark.parametrize(
    "name, expected",
    [("a.png", "a_label.tiff"), ("a.b.png", "a_label.tiff"), ("cell_01.tif", "cell_01_label.tiff"),
     ("x y.jpeg", "x y_label.tiff")],
)
def test_output_name(name, expected):
    assert output_name(name) == expected
    assert output_name(f"/some/dir/{name}") == expected


def test_list_images_skips_hidden_subfolders_and_other_files(tmp_path):
    for name in ["b.png", "a.TIF", "c.jpeg", ".hidden.png", "notes.txt", "d.bmp"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    (tmp_path / "sub.png" / "inner.png").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.TIF", "b.png", "c.jpeg", "d.bmp"]


# --------------------------------------------------------------------------- writing labels


def test_write_labels_uint16_zlib(tmp_path):
    labels = np.arange(12, dtype=np.int32).reshape(3, 4)
    path = write_labels(tmp_path / "x_label.tiff", labels)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        data = page.asarray()
    assert data.dtype == np.uint16
    np.testing.assert_array_equal(data, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_label.tiff"]


def test_write_labels_above_65535_is_uint32(tmp_path):
    labels = np.zeros((4, 5), np.int64)
    labels[0, 0], labels[3, 4] = 65535, 70000
    path = write_labels(tmp_path / "big_label.tiff", labels)
    data = tifffile.imread(path)
    assert data.dtype == np.uint32
    np.testing.assert_array_equal(data, labels)


def test_label_dtype_edges():
    assert label_dtype(0) == np.uint16
    assert label_dtype(65535) == np.uint16
    assert label_dtype(65536) == np.uint32
    with pytest.raises(ValueError):
        label_dtype(2**32)
    with pytest.raises(ValueError):
        label_dtype(-1)


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2), np.int32), np.zeros((2, 2), np.float32), -np.ones((2, 2), np.int32)])
def test_write_labels_refuses_bad_arrays_and_leaves_nothing(tmp_path, bad):
    with pytest.raises(ValueError):
        write_labels(tmp_path / "x_label.tiff", bad)
    assert list(tmp_path.iterdir()) == []


def test_write_labels_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "x_label.tiff"
    path.write_bytes(b"old")
    write_labels(path, np.ones((2, 3), np.int32))
    np.testing.assert_array_equal(tifffile.imread(path), np.ones((2, 3)))
    assert [p.name for p in tmp_path.iterdir()] == ["x_label.tiff"]


def test_write_labels_does_not_modify_argument(tmp_path):
    labels = np.array([[0, 1], [2, 3]], np.int64)
    before = labels.copy()
    write_labels(tmp_path / "l.tiff", labels)
    np.testing.assert_array_equal(labels, before)
    assert labels.dtype == np.int64


@pytest.mark.parametrize(
    "shape, options",
    [((13, 17), {}), ((1, 40), {}), ((2, 13, 17), {}), ((13, 17, 4), {}), ((20, 30, 2), {}),
     ((3, 13, 17), {"photometric": "minisblack", "planarconfig": "separate"}), ((1, 40, 3), {})],
)
def test_image_shape_agrees_with_read_image(tmp_path, shape, options):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.ones(shape, np.uint8), **options)
    assert image_shape(path) == read_image(path).shape[:2]
    png = write_png(tmp_path / "s.png", np.ones((7, 9, 3), np.uint8))
    assert image_shape(png) == (7, 9)


def test_image_shape_of_bad_tiff(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\0garbage")
    with pytest.raises(ImageReadError, match="bad.tif"):
        image_shape(tmp_path / "bad.tif")
