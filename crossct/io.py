"""Reading microscopy images and writing instance labels.

``read_header`` says what a file declares (format, size, channels, bytes per sample) without
decoding a pixel; ``read_image`` refuses a file whose decoded array would exceed a memory limit
before decoding it (a 600-byte JPEG can declare 30000 x 30000 pixels), then returns it as an
``(H, W, C)`` array in its own dtype.  The format is told from the file's content, not its name.
``write_labels`` writes a zlib TIFF atomically (temporary file + rename), so an interrupted run
never leaves a truncated label file behind.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_MEMORY_LIMIT",
    "ImageReadError",
    "ImageHeader",
    "read_header",
    "read_image",
    "image_shape",
    "format_bytes",
    "write_labels",
    "write_atomically",
    "temporary_owner_gone",
    "is_temporary_of",
    "label_dtype",
    "output_name",
    "list_images",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
# What one image may cost, in bytes, unless the caller says otherwise: read_image refuses files
# whose decoded array alone is larger, and the batch (crossct.budget) also counts the memory
# segmenting takes.  3 GiB keeps a 2-core / 8 GB laptop responsive and still takes a 100-megapixel
# slide (estimated 2.4 GiB with its working memory; the 64-megapixel one measured 1.4 GiB,
# benchmarks/README.md, bench_memory_image).
DEFAULT_MEMORY_LIMIT = 3 * 2**30
# TIFF segments (strips, tiles) decoded at once; each needs its own buffer.
TIFF_DECODE_WORKERS = 4

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageReadError(ValueError):
    """A file that cannot be turned into an image; the message names the file and the reason."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image file declares, read before any pixel is decoded.

    ``channels`` and ``dtype`` are those of the array :func:`read_image` returns (an upper bound
    where the decoder decides, e.g. a palette PNG may come back with 3 or 4 channels);
    ``decoder_bytes`` is the decoder's working memory beyond that array (a progressive JPEG's
    coefficients, the TIFF strips or tiles decoded at once).
    """

    format: str  # "png", "jpeg", "bmp" or "tiff"
    height: int
    width: int
    channels: int
    dtype: np.dtype
    decoder_bytes: int = 0

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def decoded_bytes(self) -> int:
        """Bytes the decoded array and the decoder need together."""
        return self.pixels * self.channels * np.dtype(self.dtype).itemsize + self.decoder_bytes

    def describe(self) -> str:
        """'30000x30000 (3 channels, uint8, JPEG)'"""
        channels = f"{self.channels} channel{'s' if self.channels > 1 else ''}"
        return f"{self.height}x{self.width} ({channels}, {np.dtype(self.dtype).name}, {self.format.upper()})"


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; binary units, as the memory limit is given."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def output_name(path: str | os.PathLike) -> str:
    """The challenge's label file name: the file name up to its first dot + ``_label.tiff``."""
    return Path(path).name.split(".")[0] + "_label.tiff"


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name.

    Hidden files, sub-folders and other extensions are skipped (and logged), never followed.
    Entries with an image extension that are not regular files (a FIFO, a device) are listed, so
    that reading them reports what they are.
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


# ----------------------------------------------------------------------------- headers


def _file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def _check_regular_file(path: Path) -> None:
    """Refuse anything that is not a non-empty regular file, before opening it (a FIFO would block)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        kind = "a broken symbolic link" if path.is_symlink() else None
        raise ImageReadError(f"{path}: {kind or 'no such file'}") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot access ({exc.strerror or exc})") from None
    kind = _file_kind(st.st_mode)
    if kind:
        raise ImageReadError(f"{path}: is {kind}, not an image file")
    if st.st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")


def _sniff(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    return None


def _need(data: bytes, n: int, path: Path, what: str) -> bytes:
    if len(data) < n:
        raise ImageReadError(f"{path}: not a decodable {path.suffix.lower() or 'image'} file (truncated {what})")
    return data


def _png_header(path: Path) -> ImageHeader:
    with open(path, "rb") as fh:
        head = _need(fh.read(33), 33, path, "PNG header")
        if head[12:16] != b"IHDR":
            raise ImageReadError(f"{path}: not a decodable .png image (no IHDR chunk)")
        width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
        # cv2 adds an alpha channel to RGB and palette images with a tRNS chunk: look for one.
        transparency = False
        fh.seek(33)
        for _ in range(1000):  # the chunks before the image data
            chunk = fh.read(8)
            if len(chunk) < 8 or chunk[4:8] in (b"IDAT", b"IEND"):
                break
            transparency |= chunk[4:8] == b"tRNS"
            fh.seek(struct.unpack(">I", chunk[:4])[0] + 4, os.SEEK_CUR)
    channels = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}.get(colour)
    if channels is None:
        raise ImageReadError(f"{path}: not a decodable .png image (colour type {colour})")
    if colour in (2, 3) and transparency:
        channels = 4
    return ImageHeader("png", height, width, channels, np.dtype(np.uint16 if depth == 16 else np.uint8))


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}


def _jpeg_header(path: Path) -> ImageHeader:
    """Walk the JPEG markers (skipping their payloads) to the frame header (SOFn)."""
    with open(path, "rb") as fh:
        fh.seek(2)
        for _ in range(10_000):
            byte = fh.read(1)
            while byte == b"\xff":  # fill bytes
                byte = fh.read(1)
            if not byte:
                break
            marker = byte[0]
            if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no payload
                continue
            if marker in (0xD9, 0xDA):  # end of image, or a scan before any frame header
                break
            length = struct.unpack(">H", _need(fh.read(2), 2, path, "JPEG marker"))[0]
            if marker in _SOF:
                precision, height, width, components = struct.unpack(">BHHB", _need(fh.read(6), 6, path, "JPEG frame header"))
                if height == 0:
                    raise ImageReadError(f"{path}: not a decodable JPEG (height defined by a DNL marker)")
                channels = 1 if components == 1 else 3  # OpenCV turns YCbCr, RGB and CMYK into BGR
                dtype = np.dtype(np.uint16 if precision > 8 else np.uint8)
                # A progressive JPEG keeps every DCT coefficient (2 bytes a sample) until the last scan.
                coefficients = 2 * height * width * components if marker in _PROGRESSIVE else 0
                return ImageHeader("jpeg", height, width, channels, dtype, coefficients)
            fh.seek(length - 2, os.SEEK_CUR)
    raise ImageReadError(f"{path}: not a decodable JPEG (no frame header)")


def _bmp_header(path: Path) -> ImageHeader:
    with open(path, "rb") as fh:
        head = _need(fh.read(30), 26, path, "BMP header")
    if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height, _, bits = struct.unpack("<HHHH", head[18:26])
    else:
        width, height, _, bits = struct.unpack("<iiHH", _need(head, 30, path, "BMP header")[18:30])
    # Palette images come back gray (1 channel) or BGR (3); 32-bit ones may keep their alpha.
    return ImageHeader("bmp", abs(height), abs(width), 4 if bits == 32 else 3, np.dtype(np.uint8))


def _tiff_header(path: Path) -> ImageHeader:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError(f"{path}: TIFF holds no image")
        series = tif.series[0]
        dtype = np.dtype(series.dtype)
        # A zero-strided stand-in goes through read_image's layout rules without reading pixels,
        # so pages, samples and channels are counted as the decoded (H, W, C) array will hold them,
        # and stacks are refused here, from the header.
        stand_in = np.broadcast_to(np.zeros((), dtype), series.shape)
        height, width, channels = _to_hwc(path, stand_in, series.axes).shape
        page = series.keyframe
        samples = page.samplesperpixel if page.planarconfig == 1 else 1  # contiguous samples share a segment
        if page.is_tiled:
            segment, segments = page.tilewidth * page.tilelength * max(page.tiledepth, 1), len(page.dataoffsets)
        else:
            rows = min(page.rowsperstrip or page.imagelength, page.imagelength)
            segment, segments = page.imagewidth * rows, len(page.dataoffsets)
        decoder = 2 * segment * samples * dtype.itemsize * min(max(segments, 1), TIFF_DECODE_WORKERS)
    return ImageHeader("tiff", int(height), int(width), int(channels), dtype, int(decoder))


_HEADERS = {"png": _png_header, "jpeg": _jpeg_header, "bmp": _bmp_header, "tiff": _tiff_header}


def read_header(path: str | os.PathLike) -> ImageHeader:
    """What ``path`` declares: format (from the content), height, width, channels, dtype.

    Reads a few hundred bytes (a TIFF's directory); never decodes pixels.

    Raises
    ------
    ImageReadError
        Missing, empty or non-regular files (a FIFO, a device), unknown or corrupt headers,
        TIFF stacks and volumes, images without pixels; the message names the file.
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        kind = _sniff(path)
        if kind is None:
            if path.suffix.lower() in (".tif", ".tiff"):
                kind = "tiff"  # let tifffile say what is wrong with it
            else:
                raise ImageReadError(
                    f"{path}: not a decodable {path.suffix.lower()} image (corrupt, truncated or not an image: "
                    "its content is not PNG, JPEG, BMP or TIFF)")
        header = _HEADERS[kind](path)
        if kind != "tiff":  # OpenCV decodes from the whole file, held in memory
            header = replace(header, decoder_bytes=header.decoder_bytes + path.stat().st_size)
    except ImageReadError:
        raise
    except Exception as exc:  # parsers raise many types for corrupt files; report, don't crash
        raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    if header.height < 1 or header.width < 1 or header.channels < 1:
        raise ImageReadError(f"{path}: image has no pixels ({header.describe()})")
    return header


def _check_limit(path: Path, header: ImageHeader, max_bytes: int | None) -> None:
    if max_bytes is not None and header.decoded_bytes > max_bytes:
        raise ImageReadError(
            f"{path}: declared size {header.describe()} needs {format_bytes(header.decoded_bytes)} "
            f"decoded, over the memory limit of {format_bytes(max_bytes)} (possible decompression bomb; "
            "a real image this large needs a higher --max-memory)"
        )


# ----------------------------------------------------------------------------- decoding


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


def _decode_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if len(tif.series) > 1:
            logger.warning("%s: multi-series TIFF, reading the first series only", path)
        series = tif.series[0]
        array = series.asarray(maxworkers=TIFF_DECODE_WORKERS)
    return _to_hwc(path, array, series.axes)


def _decode_with_cv2(path: Path, header: ImageHeader) -> np.ndarray:
    import cv2

    data = np.fromfile(path, dtype=np.uint8)  # np.fromfile copes with any file name; cv2.imread may not
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    del data
    if array is None:
        raise ImageReadError(f"{path}: not a decodable {path.suffix.lower()} image (corrupt, truncated or not an image)")
    if array.shape[:2] != (header.height, header.width):
        raise ImageReadError(f"{path}: decoded size {array.shape[:2]} differs from the declared {header.height}x{header.width}")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        # OpenCV decodes to BGR(A); the rest of the pipeline expects RGB(A).  In place: no second copy.
        cv2.cvtColor(array, cv2.COLOR_BGR2RGB if array.shape[2] == 3 else cv2.COLOR_BGRA2RGBA, dst=array)
    # OpenCV always decodes to (H, W) or (H, W, C): no layout to guess (guessing broke 3x3 RGB).
    return array[:, :, None] if array.ndim == 2 else array


def read_image(path: str | os.PathLike, max_bytes: int | None = DEFAULT_MEMORY_LIMIT,
               header: ImageHeader | None = None) -> np.ndarray:
    """Read a microscopy image.

    Parameters
    ----------
    path : a PNG, JPEG, BMP or TIFF file (the format is told from the content).
    max_bytes : refuse, before decoding, a file whose decoded array (and decoder buffers) would
        take more memory than this (None: no limit).
    header : the file's :func:`read_header`, when the caller has it already.

    Returns
    -------
    image : (H, W, C) ndarray in the file's own dtype, C >= 1, RGB channel order.

    Raises
    ------
    ImageReadError
        Empty, truncated, undecodable, oversized, non-2-D or non-regular files, with the file and
        the reason.
    """
    path = Path(path)
    header = header or read_header(path)
    _check_limit(path, header, max_bytes)
    try:
        if header.format == "tiff":
            return _decode_tiff(path)
        return _decode_with_cv2(path, header)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{path}: not enough memory to decode this image") from None
    except Exception as exc:  # decoders raise many types for corrupt files; report, don't crash
        raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc


def image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image, from its header."""
    header = read_header(path)
    return header.height, header.width


# ----------------------------------------------------------------------------- writing


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


# A temporary is ".<name>.tmp-<pid>-<random>": unique even for processes with the same pid in
# different containers writing one shared folder.  Its writer holds an exclusive flock on it until
# the rename, so a temporary whose lock can be taken was left by a process that died (the kernel
# drops a dead process's locks) and is safe to remove; pids alone cannot say that (reuse, namespaces).
_TEMP_MARK = ".tmp-"


def _lock(fd: int, block: bool) -> bool:
    """Take an exclusive flock; False when another process holds it (or locks are not supported)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no way to tell a live owner, so temporaries are never removed by others
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except OSError:  # held by a live writer (EWOULDBLOCK), or a file system without locks
        return False
    return True


def is_temporary_of(entry: Path, names: set[str]) -> bool:
    """Whether ``entry`` is named like a :func:`write_atomically` temporary of one of ``names``."""
    stem, sep, owner = entry.name.rpartition(_TEMP_MARK)
    pid, _, token = owner.partition("-")
    return bool(sep and stem.startswith(".") and stem[1:] in names and pid.isdigit()
                and all(c in "0123456789abcdef" for c in token))


def temporary_owner_gone(entry: Path) -> bool:
    """Remove the temporary ``entry`` when no live process holds it; True when it was removed.

    The check and the removal happen under the temporary's own lock, so a writer that is alive,
    or that creates the file at this moment (it sees the file unlinked and starts over), never
    loses it.
    """
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _lock(fd, block=False):
            return False
        try:
            if os.stat(entry).st_ino != st.st_ino:  # renamed or replaced meanwhile: not ours to judge
                return False
        except FileNotFoundError:
            return False
        os.unlink(entry)
        return True
    finally:
        os.close(fd)  # also drops the lock


def _open_owned_temporary(path: Path) -> tuple[Path, BinaryIO]:
    """Create and lock a fresh temporary beside ``path`` (see :func:`temporary_owner_gone`)."""
    while True:
        tmp = path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
        fh = open(tmp, "xb")
        _lock(fh.fileno(), block=True)  # waits only while a cleaner inspects the new file
        if os.fstat(fh.fileno()).st_nlink > 0:
            return tmp, fh
        fh.close()  # a cleaner took it for abandoned between creation and locking: start over


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a hidden temporary beside ``path``, sync it, and rename it onto ``path``.

    Readers see either the old file (or none) or the whole new one; on any error the temporary is
    removed and the error raised.  The temporary is locked by this process until the rename, so
    another process cleaning up after a killed run never removes it.
    """
    path = Path(path)
    tmp, fh = _open_owned_temporary(path)
    try:
        with fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, path)  # while still locked
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
