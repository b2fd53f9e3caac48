"""The whole-slide block plan: which blocks, which tiles feed each, which block keeps which cell,
and how the kept cells are stitched into one label map with globally unique labels.

Pure geometry and NumPy, no execution: :mod:`crossct.blocks` follows the plan in one process
(streaming the network over the image), :mod:`crossct.dask_blocks` as a Dask graph over a
cluster, and both give the same labels because every rule lives here.

Coordinates are those of the *view*: the image itself, or its transpose when it is wider than
tall, so that tile rows run along the longer axis and a streamed canvas spans the shorter one.

- Blocks: :func:`block_grid` cores of at most ``block_size`` along both view axes, each
  post-processed with ``block_margin`` pixels of context on every side (its *extent*).
- Network: the tile grid of the whole image (:func:`crossct.tiling.tile_starts`), run once per
  tile, one tile row at a time; each tile's outputs are blended in row-major tile order, so any
  part of the canvas has the bits of :func:`crossct.tiling.sliding_window` on the whole view.
- Keeping: a block keeps the cells of its extent whose centroid lies in its core, with their full
  extent (:func:`cells_kept_by`), so a cell smaller than the margin is neither cut nor duplicated.
- Stitching: blocks in order (band by band, then along the band); a pixel already given to a cell
  by an earlier block stays with it; a kept cell left with no pixel of its own is dropped; the
  rest are numbered on from the earlier blocks' (:func:`survivors`, :func:`paste`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .config import ModelSpec, TilingConfig
from .tiling import tile_starts

__all__ = ["needs_blocks", "block_grid", "Block", "BlockPlan", "cells_kept_by", "survivors", "paste"]


def needs_blocks(shape: tuple[int, ...], spec: ModelSpec) -> bool:
    """Whether an image of ``shape`` (H, W[, C]) is segmented block by block rather than whole."""
    limit = spec.tiling.block_size + 2 * spec.tiling.block_margin
    return shape[0] > limit or shape[1] > limit


def block_grid(length: int, block: int) -> list[tuple[int, int]]:
    """Core intervals [start, stop) of one axis, as even as possible, none longer than ``block``."""
    n = max(1, -(-length // block))
    edges = np.linspace(0, length, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


Box = tuple[int, int, int, int]  # (y0, y1, x0, x1) in view coordinates, stops excluded


@dataclass(frozen=True)
class Block:
    """One block of the plan: its place in the processing order, its core and its extent."""

    order: int
    band: int
    column: int
    core: Box
    extent: Box


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


@dataclass(frozen=True)
class BlockPlan:
    """The plan for one (height, width) image under ``tiling``; see the module docstring.

    Examples
    --------
    >>> plan = BlockPlan(3000, 5000, TilingConfig())
    >>> plan.transposed, (plan.length, plan.side), len(plan.blocks)
    (True, (5000, 3000), 6)
    """

    height: int
    width: int
    tiling: TilingConfig

    @property
    def transposed(self) -> bool:
        return self.width > self.height

    @property
    def length(self) -> int:
        """Rows of the view (the longer image axis): tile rows and block bands run along it."""
        return max(self.height, self.width)

    @property
    def side(self) -> int:
        return min(self.height, self.width)

    @property
    def tile(self) -> int:
        return self.tiling.tile_size

    @cached_property
    def row_starts(self) -> list[int]:
        """View row of each tile row (the image is at least one tile long: it needs blocks)."""
        return tile_starts(max(self.length, self.tile), self.tile, self.tiling.stride)

    @cached_property
    def col_starts(self) -> list[int]:
        """View column of the tiles of every row (a side shorter than a tile is zero-padded to one)."""
        return tile_starts(max(self.side, self.tile), self.tile, self.tiling.stride)

    @cached_property
    def bands(self) -> list[tuple[int, int]]:
        return block_grid(self.length, self.tiling.block_size)

    @cached_property
    def columns(self) -> list[tuple[int, int]]:
        return block_grid(self.side, self.tiling.block_size)

    def band_extent(self, band: int) -> tuple[int, int]:
        y0, y1 = self.bands[band]
        margin = self.tiling.block_margin
        return max(0, y0 - margin), min(self.length, y1 + margin)

    def column_extent(self, column: int) -> tuple[int, int]:
        x0, x1 = self.columns[column]
        margin = self.tiling.block_margin
        return max(0, x0 - margin), min(self.side, x1 + margin)

    @cached_property
    def blocks(self) -> list[Block]:
        """Every block, in the processing order that decides who keeps a contested pixel."""
        out = []
        for i, (y0, y1) in enumerate(self.bands):
            for j, (x0, x1) in enumerate(self.columns):
                out.append(Block(len(out), i, j, (y0, y1, x0, x1), self.band_extent(i) + self.column_extent(j)))
        return out

    def tile_rows(self, start: int, stop: int) -> range:
        """Indices into :attr:`row_starts` of the tile rows that cover view rows [start, stop)."""
        return _covering(self.row_starts, self.tile, start, stop)

    def tile_columns(self, start: int, stop: int) -> range:
        """Indices into :attr:`col_starts` of the tiles that cover view columns [start, stop)."""
        return _covering(self.col_starts, self.tile, start, stop)

    def earlier_overlapping(self, block: Block) -> list[Block]:
        """Blocks before ``block`` whose extent overlaps its extent: the ones that may have
        claimed some of its pixels first."""
        return [b for b in self.blocks[: block.order] if _overlaps(b.extent, block.extent)]

    def writers(self, box: Box) -> list[Block]:
        """Blocks whose extent overlaps ``box``, in processing order: all that may paste into it."""
        return [b for b in self.blocks if _overlaps(b.extent, box)]


def _covering(starts: list[int], tile: int, start: int, stop: int) -> range:
    first = next(k for k, s in enumerate(starts) if s + tile > start)
    last = max(k for k, s in enumerate(starts) if s < stop)
    return range(first, last + 1)


def centroids(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n + 1,) row and column centroids of labels 0..n (NaN where a label has no pixel)."""
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs]
    counts = np.bincount(ids, minlength=n + 1).astype(np.float64)
    with np.errstate(invalid="ignore"):
        cy = np.bincount(ids, weights=ys, minlength=n + 1) / counts
        cx = np.bincount(ids, weights=xs, minlength=n + 1) / counts
    return cy, cx


def cells_kept_by(local: np.ndarray, core: Box, origin: tuple[int, int]) -> tuple[np.ndarray, int]:
    """The cells a block keeps.

    Parameters
    ----------
    local : (h, w) integer labels of the block's extent, whose top-left pixel is at ``origin``.
    core : the block's core (y0, y1, x0, x1).

    Returns
    -------
    (h, w) uint32 ``kept``: 1..k for the cells whose centroid lies in the core (numbered in the
    order of their labels in ``local``), 0 elsewhere; and k.
    """
    n = int(local.max()) if local.size else 0
    if not n:
        return np.zeros(local.shape, np.uint32), 0
    y0, y1, x0, x1 = core
    cy, cx = centroids(local, n)
    cy, cx = cy + origin[0], cx + origin[1]
    keep = (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)  # False for absent labels (NaN)
    keep[0] = False
    ranks = np.zeros(n + 1, np.uint32)
    kept = np.flatnonzero(keep)
    ranks[kept] = np.arange(1, kept.size + 1, dtype=np.uint32)
    return ranks[local], int(kept.size)


def survivors(kept: np.ndarray, k: int, claimed: np.ndarray) -> tuple[np.ndarray, int]:
    """Which kept cells still own a pixel once earlier blocks have claimed theirs.

    ``kept`` as from :func:`cells_kept_by`; ``claimed`` (same shape, bool): pixels an earlier
    block already gave a cell.  Returns a (k + 1,) uint32 table from each kept cell's number to its
    number among the survivors (1..s, in the same order; 0 for a cell with nothing left), and s.
    """
    owns = np.zeros(k + 1, bool)
    owns[kept[(kept > 0) & ~claimed]] = True
    owns[0] = False
    table = np.cumsum(owns, dtype=np.uint32)
    table[~owns] = 0
    return table, int(owns.sum())


def paste(region: np.ndarray, kept: np.ndarray, table: np.ndarray, offset: int) -> None:
    """Give the unclaimed pixels (0 in ``region``) of each surviving kept cell its global label
    ``offset + table[cell]``; ``region`` (the label map under the block's extent) is written in place."""
    ids = np.where(table > 0, table + np.uint32(offset), 0).astype(region.dtype, copy=False)
    mapped = ids[kept]
    np.copyto(region, mapped, where=(mapped > 0) & (region == 0))
