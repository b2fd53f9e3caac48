"""Reading microscopy images and writing instance labels.

``read_image`` returns every supported file as an ``(H, W, C)`` array in its own dtype;
``write_labels`` writes a zlib TIFF atomically (temporary file + rename), so an interrupted
run never leaves a truncated label file behind.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "MAX_PIXELS",
    "read_image",
    "image_shape",
    "write_labels",
    "write_atomically",
    "label_dtype",
    "output_name",
    "list_images",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
# Larger declared sizes are refused before decoding: a tiny file can declare gigapixels
# (decompression bomb).  2**31 pixels is a 46k x 46k slide, far above any challenge image.
MAX_PIXELS = 2**31
_TIFF = (".tif", ".tiff")


class ImageReadError(ValueError):
    """A file that cannot be turned into an image; the message names the file and the reason."""


def output_name(path: str | os.PathLike) -> str:
    """The challenge's label file name: the file name up to its first dot + ``_label.tiff``."""
    return Path(path).name.split(".")[0] + "_label.tiff"


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name.

    Hidden files, sub-folders and other extensions are skipped (and logged), never followed.
    """
    folder = Path(folder)
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            logger.info("skipping hidden entry %s", entry)
        elif entry.is_dir():
            logger.info("skipping sub-folder %s", entry)
        elif entry.suffix.lower() in IMAGE_EXTENSIONS:
            found.append(entry)
        else:
            logger.info("skipping %s: not an image extension %s", entry, IMAGE_EXTENSIONS)
    return found


def _check_size(path: Path, shape: tuple[int, ...]) -> None:
    pixels = int(np.prod([int(s) for s in shape[:2]], dtype=np.int64)) if len(shape) >= 2 else 0
    if len(shape) < 2 or min(shape[:2]) < 1:
        raise ImageReadError(f"{path}: image has no pixels (shape {tuple(shape)})")
    if pixels > MAX_PIXELS:
        raise ImageReadError(
            f"{path}: declared size {shape[0]}x{shape[1]} ({pixels:,} pixels) exceeds the limit of "
            f"{MAX_PIXELS:,} pixels (possible decompression bomb)"
        )


def _to_hwc(path: Path, array: np.ndarray, axes: str | None = None) -> np.ndarray:
    """Bring a decoded TIFF array to (H, W, C): channel-last or channel-first, singleton axes dropped.

    ``axes`` are tifffile's axis codes; where they name the image plane (Y, X) and the channel
    axis (S samples or C channels) they are trusted, so a 1-pixel-high or 3x3 RGB image is not
    mistaken for something else.  Otherwise the layout is guessed from the shape.
    """
    array = np.asarray(array)
    if axes is not None and len(axes) == array.ndim and "Y" in axes and "X" in axes:
        keep = [i for i, (a, s) in enumerate(zip(axes, array.shape)) if a in "YX" or s != 1]
        array = array.reshape([array.shape[i] for i in keep])
        axes = "".join(axes[i] for i in keep)
        if axes == "YX":
            return array[:, :, None]
        if len(axes) == 3 and axes[:2] == "YX" and axes[2] in "SC":
            return array
        if len(axes) == 3 and axes[1:] == "YX" and axes[0] in "SC":
            return np.moveaxis(array, 0, -1)
    if array.ndim > 2:
        array = array.reshape([s for s in array.shape if s != 1] or [1, 1])
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3:
        if array.shape[-1] <= 4 and array.shape[-1] < min(array.shape[:2]):
            return array
        if array.shape[0] <= 4 and array.shape[0] < min(array.shape[1:]):
            return np.moveaxis(array, 0, -1)
        raise ImageReadError(
            f"{path}: cannot tell the channel axis of an array of shape {array.shape} "
            "(expected (H, W, C) or (C, H, W) with C <= 4; stacks and volumes are not 2-D images)"
        )
    raise ImageReadError(f"{path}: {array.ndim}-D data of shape {array.shape} is not a 2-D image")


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError(f"{path}: TIFF holds no image")
        series = tif.series[0]
        axes = series.axes
        if "Y" in axes and "X" in axes:
            _check_size(path, (series.shape[axes.index("Y")], series.shape[axes.index("X")]))
        else:
            squeezed = [s for s in series.shape if s != 1]
            _check_size(path, tuple(sorted(squeezed, reverse=True)[:2]) if len(squeezed) >= 2 else tuple(squeezed))
        if len(tif.series) > 1:
            logger.warning("%s: multi-series TIFF, reading the first series only", path)
        array = series.asarray()
    return _to_hwc(path, array, series.axes)


def _declared_shape(data: np.ndarray) -> tuple[int, int] | None:
    """(H, W) from a PNG or BMP header, read before decoding; None for other formats."""
    head = data[:26].tobytes()
    if len(head) >= 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    if len(head) >= 26 and head[:2] == b"BM":
        if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            width, height = struct.unpack("<HH", head[18:22])
        else:
            width, height = struct.unpack("<ii", head[18:26])
        return abs(height), abs(width)
    return None


def _read_with_cv2(path: Path) -> np.ndarray:
    import cv2

    data = np.fromfile(path, dtype=np.uint8)  # np.fromfile copes with any file name; cv2.imread may not
    if data.size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    declared = _declared_shape(data)
    if declared is not None:  # refuse a decompression bomb before the decoder allocates for it
        _check_size(path, declared)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError(f"{path}: not a decodable {path.suffix.lower()} image (corrupt, truncated or not an image)")
    _check_size(path, array.shape)
    if array.ndim == 3 and array.shape[2] >= 3:
        # OpenCV decodes to BGR(A); the rest of the pipeline expects RGB(A).
        array = array[:, :, [2, 1, 0, *range(3, array.shape[2])]]
    # OpenCV always decodes to (H, W) or (H, W, C): no layout to guess (guessing broke 3x3 RGB).
    return array[:, :, None] if array.ndim == 2 else array


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a microscopy image.

    Parameters
    ----------
    path : path to a .png, .bmp, .jpg/.jpeg or .tif/.tiff file.

    Returns
    -------
    image : (H, W, C) ndarray in the file's own dtype, C >= 1, RGB channel order.

    Raises
    ------
    ImageReadError
        Empty, truncated, undecodable, oversized or non-2-D files, with the file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    try:
        if path.suffix.lower() in _TIFF:
            return _read_tiff(path)
        return _read_with_cv2(path)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{path}: not enough memory to decode this image") from None
    except Exception as exc:  # decoders raise many types for corrupt files; report, don't crash
        raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc


def image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image, reading only the header where the format allows it."""
    path = Path(path)
    if path.suffix.lower() in _TIFF:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise ImageReadError(f"{path}: TIFF holds no image")
                series = tif.series[0]
                # A zero-strided stand-in goes through read_image's layout rules without reading
                # pixels, so both agree on which axes are H and W (the first page's size may not).
                stand_in = np.broadcast_to(np.zeros((), series.dtype), series.shape)
                shape = _to_hwc(path, stand_in, series.axes).shape
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
        return int(shape[0]), int(shape[1])
    image = read_image(path)
    return int(image.shape[0]), int(image.shape[1])


def label_dtype(n_max: int) -> np.dtype:
    """uint16 when every label fits, uint32 otherwise (never silently capped at 65535)."""
    if n_max < 0:
        raise ValueError(f"labels must be >= 0, got max {n_max}")
    if n_max <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if n_max <= np.iinfo(np.uint32).max:
        return np.dtype(np.uint32)
    raise ValueError(f"{n_max} labels do not fit in uint32")


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an instance label map as a zlib-compressed TIFF, atomically.

    Parameters
    ----------
    path : destination, conventionally ``<stem>_label.tiff``.
    labels : (H, W) integer array, 0 background, 1..N cells.

    The data go to a hidden temporary file in the same folder, are flushed to disk, and the file
    is renamed onto ``path``: readers see either nothing or the whole file.
    """
    import tifffile

    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (H, W), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    n_max = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        raise ValueError("labels must be >= 0")
    out = labels.astype(label_dtype(n_max), copy=False)
    return write_atomically(path, lambda fh: tifffile.imwrite(fh, out, compression="zlib"))


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a hidden temporary beside ``path``, sync it, and rename it onto ``path``.

    Readers see either the old file (or none) or the whole new one; on any error the temporary is
    removed and the error raised.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
