"""What ``-i`` names -> the image files to segment.

Each input is a folder (its images, as :func:`crossct.io.list_images` lists them), an image file,
or a glob pattern (``'data/*.tif'``, for shells that do not expand it; ``**`` goes into
sub-folders).  A file named explicitly is read whatever its extension: the reader tells the
format from the content.  An input that does not exist, or a pattern that matches nothing, is an
error: a typo must not run an empty batch.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Sequence

from .io import IMAGE_EXTENSIONS, list_images

__all__ = ["InputError", "resolve_inputs"]

logger = logging.getLogger(__name__)

_GLOB_CHARS = set("*?[")


class InputError(ValueError):
    """An input that does not exist, or a pattern that matches nothing."""


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def resolve_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by ``inputs``, in the order given (each folder's and pattern's sorted),
    each file once.

    Raises
    ------
    InputError
        An input that does not exist or a pattern without a match (the message names it).
    """
    found: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            try:
                found += list_images(path)
            except OSError as exc:
                raise InputError(f"cannot list the input folder {text} ({exc.strerror or exc})") from None
        elif path.exists() or path.is_symlink():  # a file, or something to report (FIFO, device, broken link)
            found.append(path)
        elif _GLOB_CHARS & set(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            images = [m for m in matches if not m.is_dir() and _is_image_name(m)]
            if not images:
                raise InputError(f"no image matches {text!r} ({len(matches)} match(es), none an image file "
                                 f"{' '.join(IMAGE_EXTENSIONS)})")
            found += images
        else:
            raise InputError(f"input {text} does not exist (give a folder, image files or a glob pattern)")
    unique: dict[str, Path] = {}
    for path in found:
        key = os.path.normcase(os.path.abspath(path))
        if key in unique:
            logger.info("%s is named twice; segmenting it once", path)
        unique.setdefault(key, path)
    return list(unique.values())
