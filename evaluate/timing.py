"""Running time as the challenge measured and ranked it.

The organisers ran the team's container once per image, with an input folder holding that one
image, and timed the whole command (container start-up included). The rank time of an image is the
wall time beyond a size-dependent tolerance (paper, equation 13)::

    tolerance(h, w) = 10 s                          if h * w <= 1,000,000
                    = h * w / 1,000,000 * 10 s      otherwise
    rank_time       = max(0, T - tolerance)

:func:`time_command` reproduces the protocol for any command: ``python predict.py -i {in} -o {out}``
or ``docker run --rm -v {in}:/workspace/inputs -v {out}:/workspace/outputs crossct``.
"""

from __future__ import annotations

import csv
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "IMAGE_EXTENSIONS",
    "TIMING_FIELDS",
    "tolerance",
    "rank_time",
    "image_hw",
    "list_images",
    "label_name",
    "time_command",
    "timing_totals",
    "write_timing_csv",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
TIMING_FIELDS = ("image", "height", "width", "real_time_s", "tolerance_s", "rank_time_s", "status", "returncode", "message")


def tolerance(h: int, w: int) -> float:
    """Time allowance in seconds for an ``h`` x ``w`` image (challenge, equation 13).

    Examples
    --------
    >>> tolerance(1000, 1000), tolerance(2000, 3000)
    (10.0, 60.0)
    """
    if h < 0 or w < 0:
        raise ValueError(f"image size must be non-negative, got {h}x{w}")
    pixels = int(h) * int(w)
    return 10.0 if pixels <= 1_000_000 else pixels / 1_000_000 * 10.0


def rank_time(seconds: float, h: int, w: int) -> float:
    """Running time that counts for the ranking: ``max(0, seconds - tolerance(h, w))``."""
    return max(0.0, float(seconds) - tolerance(h, w))


def label_name(image: str | os.PathLike) -> str:
    """The challenge's output name: image file name up to its first dot + ``_label.tiff``."""
    return Path(image).name.split(".")[0] + "_label.tiff"


def image_hw(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file, from the header where possible.

    TIFF: the first series' Y and X axes (tifffile). Other formats: Pillow's header, else a full
    decode with OpenCV.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, series.shape
            if "Y" in axes and "X" in axes:
                return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
            page = tif.pages[0]
            return int(page.imagelength), int(page.imagewidth)
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            return int(h), int(w)
    except Exception as exc:  # Pillow missing or format it cannot parse: decode fully instead
        logger.debug("%s: Pillow header read failed (%s); decoding with OpenCV", path, exc)
    import cv2
    import numpy as np

    array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError(f"{path}: cannot read the image size (not a decodable image)")
    return int(array.shape[0]), int(array.shape[1])


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by extension) directly inside ``folder``, sorted; hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a directory")
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _substitute(command: Sequence[str], inputs: Path, outputs: Path) -> list[str]:
    return [arg.replace("{in}", str(inputs)).replace("{out}", str(outputs)) for arg in command]


def _run(argv: list[str], timeout: float | None) -> tuple[int | None, float, str]:
    """Run ``argv`` in its own process group; (returncode or None on timeout, seconds, output tail)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        returncode: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: a shell's children too
        output, _ = proc.communicate()
        returncode = None
    elapsed = time.perf_counter() - start
    tail = output.decode(errors="replace")[-2000:] if output else ""
    return returncode, elapsed, tail


def time_command(
    images: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    command: str | Sequence[str],
    *,
    timeout: float | None = None,
    work_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Run ``command`` once per image, each time with a fresh input folder holding only that image.

    Parameters
    ----------
    images : a folder of images, or an iterable of image paths.
    out_dir : folder given to the command as ``{out}`` (created if needed); the command must write
        ``<stem>_label.tiff`` there (stem = image name up to its first dot).
    command : argument list (or a string, split with :func:`shlex.split`); every ``{in}`` and
        ``{out}`` inside an argument is replaced by the absolute input / output folder. Run without
        a shell.
    timeout : seconds after which a run is killed (with its whole process group) and marked
        ``"timeout"``; None waits forever.
    work_dir : where the per-image input folders are created (default: the system temp dir).

    Returns
    -------
    list of dict, one per image, with keys :data:`TIMING_FIELDS`: ``image`` (file name),
    ``height``, ``width``, ``real_time_s`` (wall time around the command), ``tolerance_s``,
    ``rank_time_s``, ``status`` (``"ok"``, ``"failed"``: non-zero exit, ``"timeout"``, or
    ``"missing_output"``: exit 0 but no new ``<stem>_label.tiff``), ``returncode`` and ``message``.
    """
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise ValueError("command is empty")
    if isinstance(images, (str, os.PathLike)):
        paths = list_images(images)
        if not paths:
            raise FileNotFoundError(f"{images}: no images with extensions {IMAGE_EXTENSIONS}")
    else:
        paths = [Path(p) for p in images]
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    for path in paths:
        h, w = image_hw(path)
        expected = out / label_name(path)
        before = expected.stat().st_mtime_ns if expected.exists() else None
        inputs = Path(tempfile.mkdtemp(prefix="crossct-timing-", dir=work_dir)).resolve()
        try:
            os.chmod(inputs, 0o755)  # mkdtemp makes it 0700; a container may run as another user
            copied = inputs / path.name
            shutil.copyfile(path, copied)
            os.chmod(copied, 0o644)
            cmd = _substitute(argv, inputs, out)
            logger.info("%s (%dx%d): %s", path.name, h, w, shlex.join(cmd))
            returncode, seconds, tail = _run(cmd, timeout)
        finally:
            shutil.rmtree(inputs, ignore_errors=True)
        if returncode is None:
            status, message = "timeout", f"killed after {timeout} s"
        elif returncode != 0:
            status, message = "failed", f"exit code {returncode}: {tail.strip()[-500:]}"
        elif not expected.exists() or expected.stat().st_mtime_ns == before:
            status, message = "missing_output", f"{expected} was not written"
        else:
            status, message = "ok", ""
        if status != "ok":
            logger.warning("%s: %s", path.name, message)
        rows.append(
            {
                "image": path.name,
                "height": h,
                "width": w,
                "real_time_s": seconds,
                "tolerance_s": tolerance(h, w),
                "rank_time_s": rank_time(seconds, h, w),
                "status": status,
                "returncode": returncode,
                "message": message,
            }
        )
    return rows


def timing_totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sums of real, tolerance and rank time, and the number of images that were not ``"ok"``."""
    return {
        "images": len(rows),
        "not_ok": sum(r["status"] != "ok" for r in rows),
        "real_time_s": sum(float(r["real_time_s"]) for r in rows),
        "tolerance_s": sum(float(r["tolerance_s"]) for r in rows),
        "rank_time_s": sum(float(r["rank_time_s"]) for r in rows),
    }


def write_timing_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write the rows and a final ``TOTAL`` row (sums of the three times) as CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    totals = timing_totals(rows)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TIMING_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in TIMING_FIELDS})
        writer.writerow(
            {
                "image": "TOTAL",
                "real_time_s": totals["real_time_s"],
                "tolerance_s": totals["tolerance_s"],
                "rank_time_s": totals["rank_time_s"],
                "status": "ok" if totals["not_ok"] == 0 else f"{totals['not_ok']} not ok",
            }
        )
    return path
