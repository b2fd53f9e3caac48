"""Training targets from instance labels, and an on-disk cache of them.

Two representations are computed from one ``(H, W)`` instance label map:

- the organisers' 3-class map: 0 background, 1 interior, 2 boundary, where boundary is the inner
  boundary of every cell (``find_boundaries(mode='inner')``) dilated by ``disk(1)`` - so it also
  takes the one-pixel ring of background around each cell - and interior is every other cell pixel;
- Scherr et al. 2020 (PLoS One 15:e0243219) distance maps: the *cell distance* (each cell's
  Euclidean distance transform divided by its own maximum, 1 at the centre) and the *neighbour
  distance* (for each cell pixel, ``1 - d / d_max`` with ``d`` the distance to the nearest pixel of
  another cell and ``d_max`` its maximum over the cell; grey closing 3x3, cubed, min-max
  normalised).  Both are per cell, so touching cells stay separable.

Objects smaller than :data:`MIN_OBJECT_SIZE` pixels are removed first, as the organisers do.

:class:`TargetCache` stores the result once per label *content* (sha256 of the file's bytes and
:data:`TARGETS_VERSION`): ``uint8`` class maps and ``float16`` distance maps, one ``.npz`` each,
written atomically.  :func:`prepare_all` fills the cache in parallel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import edt
import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

from .records import read_label_file, read_record_label

__all__ = [
    "TARGETS_VERSION",
    "MIN_OBJECT_SIZE",
    "NEIGHBOUR_MARGIN",
    "BACKGROUND",
    "INTERIOR",
    "BOUNDARY",
    "make_targets",
    "class_map",
    "distance_maps",
    "remove_small_objects",
    "TargetCache",
    "prepare_all",
]

logger = logging.getLogger(__name__)

# Bump whenever the targets change (any constant below, or the algorithm): old cache entries are
# then simply never looked up again.
TARGETS_VERSION: int = 1
MIN_OBJECT_SIZE: int = 16  # organisers: objects under 16 px are removed before the targets
# Neighbours are searched in a window around each cell: its bounding box grown on every side by
# this many times the box's longer side (at least _MIN_MARGIN px).  Scherr et al. use one fixed,
# data-set wide search radius; with microscopy of every scale mixed, a radius relative to the cell
# plays the same role (cells further away than about one diameter are not neighbours).
NEIGHBOUR_MARGIN: float = 1.0
_MIN_MARGIN = 3

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
_CROSS = ndimage.generate_binary_structure(2, 1)  # == skimage.morphology.disk(1)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D (H, W) array, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0, got minimum {int(labels.min())}")
    return labels


def remove_small_objects(labels: np.ndarray, min_size: int = MIN_OBJECT_SIZE) -> np.ndarray:
    """Drop objects under ``min_size`` pixels and renumber the rest 1..N (order kept).

    Parameters
    ----------
    labels : (H, W) non-negative integer array, 0 background.
    min_size : objects with fewer pixels become background.

    Returns
    -------
    (H, W) int32 array (a new array; ``labels`` is not modified).
    """
    labels = _check_labels(labels)
    if labels.dtype == bool:  # a bool array would index the lookup table as a mask
        labels = labels.astype(np.uint8)
    flat = labels.reshape(-1)
    if flat.size == 0:
        return np.zeros(labels.shape, np.int32)
    top = int(flat.max())
    if top <= 4 * flat.size + 1024:
        # Ids are dense enough for a lookup table: linear time, no sort.
        counts = np.bincount(flat, minlength=top + 1)
        keep = counts >= min_size
        keep[0] = False
        lut = np.where(keep, np.cumsum(keep), 0).astype(np.int32)
        return lut[labels]
    ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    keep = (counts >= min_size) & (ids != 0)
    lut = np.where(keep, np.cumsum(keep), 0).astype(np.int32)
    return lut[inverse].reshape(labels.shape)


def class_map(labels: np.ndarray) -> np.ndarray:
    """The organisers' 3-class map of already cleaned labels.

    Parameters
    ----------
    labels : (H, W) integer instance labels, 0 background.

    Returns
    -------
    (H, W) uint8: 0 background, 1 interior, 2 boundary (inner boundaries dilated by ``disk(1)``,
    so the ring is 3 px wide across a cell edge: 2 inside the cell, 1 outside).
    """
    labels = _check_labels(labels)
    boundary = ndimage.binary_dilation(find_boundaries(labels, mode="inner"), structure=_CROSS)
    classes = np.zeros(labels.shape, np.uint8)
    classes[labels > 0] = INTERIOR
    classes[boundary] = BOUNDARY
    return classes


def _neighbour_raw(labels: np.ndarray, n: int) -> np.ndarray:
    """Per-cell ``1 - d / d_max`` (before smoothing), 0 for cells with no neighbour in reach."""
    out = np.zeros(labels.shape, np.float32)
    height, width = labels.shape
    for i, box in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        if box is None:
            continue
        ys, xs = box
        margin = max(_MIN_MARGIN, int(np.ceil(NEIGHBOUR_MARGIN * max(ys.stop - ys.start, xs.stop - xs.start))))
        window = (slice(max(ys.start - margin, 0), min(ys.stop + margin, height)),
                  slice(max(xs.start - margin, 0), min(xs.stop + margin, width)))
        crop = labels[window]
        cell = crop == i
        other = (crop != 0) & ~cell
        if not other.any():
            continue  # isolated: no neighbour, neighbour distance stays 0
        # Distance of every pixel to the nearest pixel of another cell (through the cell and the
        # background alike: Scherr et al. turn the background into the cell before the transform).
        dist = edt.edt(np.ascontiguousarray(~other), black_border=False)[cell]
        out[window][cell] = 1.0 - dist / dist.max()
    return out


def distance_maps(labels: np.ndarray) -> np.ndarray:
    """Scherr et al. 2020 cell and neighbour distances of already cleaned labels.

    Parameters
    ----------
    labels : (H, W) integer instance labels numbered 1..N (see :func:`remove_small_objects`).

    Returns
    -------
    (2, H, W) float32 in [0, 1], 0 on background: ``[0]`` cell distance (1 at each cell's centre),
    ``[1]`` neighbour distance (high where a cell touches another, 0 for isolated cells).
    """
    labels = _check_labels(labels)
    out = np.zeros((2, *labels.shape), np.float32)
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return out
    lab = labels if labels.dtype == np.int32 else labels.astype(np.int32)
    lab = np.ascontiguousarray(lab)
    # One pass for every cell: edt measures each pixel's distance to the nearest pixel of any other
    # value, i.e. the cell's own distance transform (the image edge does not count as outside).
    dt = edt.edt(lab, black_border=False).astype(np.float32, copy=False)
    if not np.isfinite(dt).all():
        # Only a single cell filling the whole image has no outside: call it flat (all 1).
        dt = np.where(np.isfinite(dt), dt, np.float32(1.0))
    peak = np.zeros(n + 1, np.float32)
    np.maximum.at(peak, lab.reshape(-1), dt.reshape(-1))
    peak[peak == 0] = 1.0
    out[0] = dt / peak[lab]
    out[0][lab == 0] = 0.0

    neighbour = _neighbour_raw(lab, n)
    # Scherr et al.'s smoothing: grey closing fills the thin gaps of the per-cell maps, cubing
    # sharpens the peak at the contact, then min-max to [0, 1].  The closing may spill into
    # background gaps between cells; those pixels are zeroed so background is 0 in every target.
    neighbour = ndimage.grey_closing(neighbour, size=(3, 3))
    neighbour[lab == 0] = 0.0
    neighbour **= 3
    lo, hi = float(neighbour.min()), float(neighbour.max())
    if hi - lo > 0:
        neighbour = (neighbour - lo) / (hi - lo)
    out[1] = neighbour
    np.clip(out, 0.0, 1.0, out=out)
    return out


def make_targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All training targets of one instance label map.

    Parameters
    ----------
    labels : (H, W) non-negative integer array, 0 background, any ids (not modified).

    Returns
    -------
    classes : (H, W) uint8 in {0 background, 1 interior, 2 boundary}.
    distances : (2, H, W) float32 in [0, 1], 0 on background: cell distance, neighbour distance.

    Objects under :data:`MIN_OBJECT_SIZE` pixels are treated as background in both.

    Examples
    --------
    >>> lab = np.zeros((9, 9), np.uint16); lab[2:7, 2:7] = 1
    >>> classes, distances = make_targets(lab)
    >>> int(classes[4, 4]), float(distances[0, 4, 4]), float(distances[1].max())
    (1, 1.0, 0.0)
    """
    cleaned = remove_small_objects(labels)
    return class_map(cleaned), distance_maps(cleaned)


# ----------------------------------------------------------------------------- cache
class TargetCache:
    """Targets computed once per label file content and kept as ``.npz`` files.

    Parameters
    ----------
    root : cache folder (created on first write).  Entries live in ``root/v<TARGETS_VERSION>/``
        and are named by the sha256 of the label file's bytes, so renaming or moving a label file
        is still a hit, and changing its content is a miss.

    Attributes
    ----------
    hits, misses : int
        Look-ups answered from disk / computed, since construction.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.folder = self.root / f"v{TARGETS_VERSION}"
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"TargetCache({str(self.root)!r})"

    def key(self, data: bytes) -> str:
        """Cache key of a label file's bytes: sha256 over the version and the content."""
        h = hashlib.sha256(f"crossct-targets-v{TARGETS_VERSION}\n".encode())
        h.update(data)
        return h.hexdigest()

    def entry(self, label_path: str | os.PathLike) -> Path:
        """Where the targets of ``label_path`` (as it is now) are or would be stored."""
        return self.folder / f"{self.key(Path(label_path).read_bytes())}.npz"

    def _load(self, entry: Path) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(entry) as npz:
                classes, distances = npz["classes"], npz["distances"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            # A damaged entry (disk full, killed copy) is recomputed, never trusted.
            logger.warning("target cache entry %s is unreadable (%s); recomputing", entry, exc)
            return None
        return classes, distances

    def _store(self, entry: Path, classes: np.ndarray, distances: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # Unique temporary name: several processes may fill the same cache at once; the last
        # rename wins and every reader sees a complete file.
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, classes=classes, distances=distances)
            os.replace(tmp, entry)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _compute(self, label_path: Path, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        classes, distances = make_targets(read_label_file(label_path, data))
        return classes.astype(np.uint8), distances.astype(np.float16)

    def get(self, label_path: str | os.PathLike, data: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Targets of one label file, from the cache or computed and stored.

        Parameters
        ----------
        label_path : instance label image (its suffix tells the format).
        data : the file's bytes when already in memory (e.g. from a training pack).

        Returns
        -------
        classes : (H, W) uint8 in {0, 1, 2}.
        distances : (2, H, W) float16 in [0, 1] - the stored precision, also on a miss, so a
            first and a second run see identical values.
        """
        label_path = Path(label_path)
        data = label_path.read_bytes() if data is None else data
        entry = self.folder / f"{self.key(data)}.npz"
        cached = self._load(entry)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        classes, distances = self._compute(label_path, data)
        self._store(entry, classes, distances)
        return classes, distances

    def ensure(self, label_path: str | os.PathLike, data: bytes | None = None) -> bool:
        """Compute and store the targets of ``label_path`` (or of its bytes ``data``) unless
        present; True if they were."""
        label_path = Path(label_path)
        data = label_path.read_bytes() if data is None else data
        entry = self.folder / f"{self.key(data)}.npz"
        if entry.is_file():
            self.hits += 1
            return True
        self.misses += 1
        self._store(entry, *self._compute(label_path, data))
        return False


def _ensure_one(args: tuple[str, Any]) -> bool:
    root, record = args
    if getattr(record, "archive", None) is not None:  # a training pack's member
        return TargetCache(root).ensure(record.label, read_record_label(record)[1])
    return TargetCache(root).ensure(record.label)


def prepare_all(records: Iterable[Any], cache_root: str | os.PathLike, workers: int | None = None) -> dict[str, int]:
    """Pre-compute the targets of every labelled record into the cache.

    Parameters
    ----------
    records : objects with a ``label`` attribute (path or None, e.g. :class:`crossct.train.records.Record`);
        records without a label are skipped.
    cache_root : :class:`TargetCache` folder.
    workers : processes (default: all CPUs; 0 or 1 computes in this process).

    Returns
    -------
    ``{"labels": n, "cached": already present, "computed": newly computed}``.
    """
    unique = {(str(getattr(r, "archive", None)), str(r.label)): r for r in records if getattr(r, "label", None) is not None}
    workers = (os.cpu_count() or 1) if workers is None else workers
    jobs = [(str(cache_root), unique[key]) for key in sorted(unique)]
    if workers <= 1 or len(jobs) <= 1:
        found = [_ensure_one(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            found = list(pool.map(_ensure_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
    summary = {"labels": len(jobs), "cached": int(sum(found)), "computed": len(found) - int(sum(found))}
    logger.info("target cache %s: %s", cache_root, summary)
    return summary
