"""OME-Zarr (NGFF) in and out: a 2-D image at a chosen resolution level in, labels beside it out.

- :func:`read_ome_zarr`: the image of a store (any axes of ``t c z y x`` with ``t = z = 1``) as an
  (H, W, C) Dask array at one level of its pyramid, read lazily chunk by chunk (``ome-zarr``).
- :func:`write_ome_zarr_labels`: labels as the store's ``labels/<name>`` group: a multiscale
  pyramid (halved by taking every other pixel) with the NGFF ``image-label`` metadata and the image level's
  scale and translation, in the store's own NGFF version, so napari and other NGFF viewers overlay
  them.  Written to a scratch folder beside the store and moved into place at the end: a killed run
  leaves the store as it was, and an earlier ``labels/<name>`` is replaced only by a complete one.

Dask, Zarr and ome-zarr are an optional extra (``pip install 'crossct[zarr]'``).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    import dask
    import dask.array as da
    import zarr
    from ome_zarr.format import Format
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader
    from ome_zarr.writer import add_metadata, get_metadata, write_multiscale_labels
except ImportError as exc:  # pragma: no cover - exercised by a plain install
    raise ImportError(
        "OME-Zarr support needs the optional extra: pip install 'crossct[zarr]' (dask, distributed, zarr, ome-zarr)"
    ) from exc

__all__ = ["OmeZarrImage", "read_ome_zarr", "write_ome_zarr_labels", "DEFAULT_LABELS_NAME"]

logger = logging.getLogger(__name__)

DEFAULT_LABELS_NAME = "crossct"
# The labels pyramid halves its levels until one is no larger than this on its shorter side.
MIN_LEVEL_SIDE = 256


@dataclass(frozen=True)
class OmeZarrImage:
    """One resolution level of an OME-Zarr image, and what is needed to write labels beside it."""

    store: Path
    level: int
    axes: tuple[str, ...]  # of ``data``, e.g. ("c", "y", "x")
    data: Any  # the level's dask array, in the store's axes
    scale: tuple[float, ...] | None  # the level's coordinate transformations, per axis
    translation: tuple[float, ...] | None
    fmt: Format

    @property
    def image(self) -> "da.Array":
        """(H, W, C) dask array: ``t`` and ``z`` dropped, channels last (C = 1 without a ``c`` axis)."""
        data = self.data
        keep = [a for a in self.axes if a in ("c", "y", "x")]
        index = tuple(0 if a not in keep else slice(None) for a in self.axes)
        data = data[index]
        if "c" not in keep:
            data = data[None]
            keep = ["c", *keep]
        return data.transpose([keep.index("y"), keep.index("x"), keep.index("c")])


def read_ome_zarr(store: str | os.PathLike, level: int = 0) -> OmeZarrImage:
    """Open the image of an OME-Zarr store at one resolution level (0 = full resolution).

    Raises ``ValueError`` naming the store and the reason when it is not an OME-Zarr image, the
    level does not exist, or the image is not 2-D (more than one time point or z plane).
    """
    path = Path(store)
    if not path.exists():
        raise ValueError(f"{path}: no such OME-Zarr store")
    location = parse_url(str(path), mode="r")
    if location is None:
        raise ValueError(f"{path}: not a Zarr store (no .zgroup / zarr.json)")
    node = next((n for n in Reader(location)() if any(isinstance(s, Multiscales) for s in n.specs)), None)
    if node is None or not node.data:
        raise ValueError(f"{path}: not an OME-Zarr image (no multiscales metadata)")
    if not 0 <= level < len(node.data):
        raise ValueError(f"{path}: level {level} does not exist (this image has levels 0..{len(node.data) - 1})")
    data = node.data[level]
    axes = _axis_names(node.metadata.get("axes"), data.ndim)
    if "y" not in axes or "x" not in axes:
        raise ValueError(f"{path}: image axes {list(axes)} have no 'y' and 'x'")
    for name, size in zip(axes, data.shape):
        if name not in ("c", "y", "x") and size != 1:
            raise ValueError(f"{path}: axis {name!r} has {size} planes; only 2-D images (t = z = 1) are segmented")
    scale, translation = _level_transform(node.metadata.get("coordinateTransformations"), level)
    return OmeZarrImage(path, level, axes, data, scale, translation, location.fmt)


def _axis_names(axes: list | None, ndim: int) -> tuple[str, ...]:
    if axes is None:  # NGFF 0.1 / 0.2: always t c z y x
        return ("t", "c", "z", "y", "x")[-ndim:]
    return tuple(a["name"] if isinstance(a, dict) else str(a) for a in axes)


def _level_transform(transforms: list | None, level: int) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if not transforms or level >= len(transforms):
        return None, None
    scale = next((t["scale"] for t in transforms[level] if t.get("type") == "scale"), None)
    translation = next((t["translation"] for t in transforms[level] if t.get("type") == "translation"), None)
    return (tuple(map(float, scale)) if scale else None, tuple(map(float, translation)) if translation else None)


def write_ome_zarr_labels(source: OmeZarrImage, labels: "da.Array", name: str = DEFAULT_LABELS_NAME) -> int:
    """Compute ``labels`` ((H, W) of ``source.image``) into ``labels/<name>`` of the source's store.

    The pyramid halves y and x per level (every other pixel: label values are kept, never mixed)
    until a level is no larger than :data:`MIN_LEVEL_SIDE` on its shorter side; the arrays take the image's axes (``c``, ``t``, ``z`` of size 1),
    its chunk size in y and x, and its level's scale and translation.  Everything, the cell count
    included, is computed in one pass of ``labels``'s graph.  Returns the largest label.
    """
    height, width = source.image.shape[:2]
    if labels.shape != (height, width):
        raise ValueError(f"labels (shape {labels.shape}) must match the image {source.store} (shape {(height, width)})")
    chunk_y, chunk_x = (source.data.chunksize[source.axes.index(a)] for a in ("y", "x"))
    n_levels = 1
    while min(height, width) >> (n_levels - 1) > MIN_LEVEL_SIDE:
        n_levels += 1
    scratch = source.store.parent / f".{source.store.name}.{name}-partial-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        # Full resolution first, in one pass of the graph (the labels are computed once); the
        # smaller levels are then read back from it: ome-zarr would compute the graph per level.
        full = str(scratch / "full")
        stored = da.to_zarr(labels.rechunk((chunk_y, chunk_x)), full, compute=False, zarr_format=source.fmt.zarr_format)
        _, largest = dask.compute(stored, labels.max())
        base = da.from_zarr(full)
        expand = tuple(slice(None) if a in ("y", "x") else None for a in source.axes)
        pyramid = [base[:: 2**k, :: 2**k].rechunk((chunk_y, chunk_x))[expand] for k in range(n_levels)]
        root = zarr.open_group(str(scratch / "root"), mode="w", zarr_format=source.fmt.zarr_format)
        write_multiscale_labels(pyramid, root, name=name, axes=list(source.axes), fmt=source.fmt)
        _striding_transforms(root[f"labels/{name}"], source)
        _move_into_place(scratch / "root" / "labels" / name, source, name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return int(largest)


def _striding_transforms(group: "zarr.Group", source: OmeZarrImage) -> None:
    """Level k's pixel (i, j) is the labels' pixel (i 2^k, j 2^k): scale x 2^k in y and x, and the
    image level's translation unchanged (ome-zarr writes the transforms of an averaging resize)."""
    ndim = len(source.axes)
    scale = list(source.scale or [1.0] * ndim)
    translation = list(source.translation or [0.0] * ndim)
    multiscales = get_metadata(group)["multiscales"]
    for k, dataset in enumerate(multiscales[0]["datasets"]):
        level_scale = [v * 2**k if a in ("y", "x") else v for a, v in zip(source.axes, scale)]
        dataset["coordinateTransformations"] = [{"type": "scale", "scale": level_scale},
                                                {"type": "translation", "translation": translation}]
    add_metadata(group, {"multiscales": multiscales}, fmt=source.fmt)


def _move_into_place(written: Path, source: OmeZarrImage, name: str) -> None:
    labels_dir = source.store / "labels"
    target = labels_dir / name
    store_root = zarr.open_group(str(source.store), mode="r+")
    labels_group = store_root.require_group("labels")
    old = labels_dir / f".{name}-replaced-{os.getpid()}"
    if target.exists():
        target.rename(old)
    written.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    listed = list(get_metadata(labels_group).get("labels", []))
    if name not in listed:
        add_metadata(labels_group, {"labels": [*listed, name]}, fmt=source.fmt)
    logger.info("labels written to %s", target)
