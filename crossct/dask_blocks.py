"""Whole slides on a Dask cluster: :mod:`crossct.block_plan` as a Dask graph.

:func:`segment_dask` takes an (H, W) or (H, W, C) Dask array and returns a Dask array of labels,
identical to :func:`crossct.pipeline.segment` on the same image held in memory.  It runs wherever
Dask runs: the threads of one process, a ``dask.distributed`` ``LocalCluster``, or a cluster on
SLURM (``dask-jobqueue``) or Kubernetes; each worker process loads the network once
(:class:`PredictorLoader`) and keeps it for all its tasks.

The graph, in the plan's view coordinates (the image, or its transpose when wider than tall):

- ``bounds``: the normalisation percentiles, from the same pixels :func:`crossct.normalize.channel_bounds`
  samples, gathered chunk by chunk;
- one ``tile-row`` task per row of the whole image's tile grid: the network on every tile of it
  (each tile once), in the batches of the in-memory path, outputs weighted by the blending window;
- one ``block`` task per block: the tiles covering its extent blended in tile order (the bits of
  the in-memory canvas), post-processed, the cells whose centroid lies in its core kept;
- ``survivors`` and a chain of ``offsets`` per band: which kept cells still own a pixel after the
  blocks before, and where their numbers start; the chain only waits for the bands above, so
  memory holds a few bands of blocks, never the whole slide;
- one ``labels`` task per block core: the kept cells of every block reaching into it, pasted in
  processing order.  These are the chunks of the returned array.

Dask and Zarr are an optional extra (``pip install 'crossct[zarr]'``): nothing else imports this module.
"""

from __future__ import annotations

import operator
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .block_plan import Block, BlockPlan, cells_kept_by, needs_blocks, paste, survivors
from .config import ModelSpec, NormalizeConfig, load_spec
from .normalize import bounds_of_samples, normalize_image, sample_step, source_channels
from .postprocess import postprocess
from .predictors import SPEC_NAME, Predictor, load_predictor, resolve_weights
from .tiling import TileBlender, pad_to_tile, transposed_predict, weighted_tile_outputs
from .whole_image import tiling_for

try:
    import dask
    import dask.array as da
except ImportError as exc:  # pragma: no cover - exercised by a plain install
    raise ImportError(
        "crossct.dask_blocks needs Dask: pip install 'crossct[zarr]' (dask, distributed, zarr, ome-zarr)"
    ) from exc

__all__ = ["segment_dask", "PredictorLoader", "dask_bounds"]

Bounds = list[tuple[float, float] | None]


@dataclass(frozen=True)
class PredictorLoader:
    """How a worker loads the network: :func:`crossct.predictors.load_predictor` with these
    arguments, once per worker process (see :func:`worker_predictor`).  Small and picklable: it
    travels to the workers inside the tasks, the weights never do (they are read from ``weights``,
    a path every worker must see)."""

    weights: str | None = None
    backend: str = "auto"
    device: str = "auto"

    def __call__(self) -> Predictor:
        return load_predictor(self.weights, backend=self.backend, device=self.device)

    def spec(self) -> ModelSpec:
        """The weights' spec, read without loading the network (the client needs only this)."""
        path = resolve_weights(self.weights)
        spec_path = path / SPEC_NAME if path.is_dir() else path.with_suffix(".json")
        if spec_path.is_file():
            return load_spec(spec_path)
        return self().spec  # a .pt checkpoint carries its spec inside


_LOADED: dict[Any, Predictor] = {}
_LOAD_LOCK = threading.Lock()


def worker_predictor(loader: Callable[[], Predictor]) -> Predictor:
    """The predictor ``loader`` makes, loaded once per process and then reused by every task
    (several task threads of one worker share it; the predictors are thread-safe)."""
    import cloudpickle

    key = cloudpickle.dumps(loader)  # equal loaders unpickled in different tasks share one entry
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = loader()
        return _LOADED[key]


def segment_dask(image: "da.Array", loader: Callable[[], Predictor], spec: ModelSpec | None = None) -> "da.Array":
    """Segment a Dask array block-parallel; nothing runs until the result is computed or stored.

    Parameters
    ----------
    image : (H, W) or (H, W, C) Dask array, any chunking (e.g. from :func:`crossct.zarr_io.read_ome_zarr`).
    loader : makes the predictor on each worker, e.g. ``PredictorLoader("weights/")``; any
        picklable zero-argument callable (each distinct one is loaded once per worker process).
    spec : the model spec (tiling, blocks, post-processing); default ``loader.spec()``.

    Returns
    -------
    (H, W) Dask array of labels, 0 background, 1..N cells: uint32, one chunk per block core,
    identical to :func:`crossct.pipeline.segment` on ``image.compute()``.  An image small enough to
    be segmented whole (:func:`crossct.block_plan.needs_blocks`) is one int32 chunk, as there.

    Examples
    --------
    >>> labels = segment_dask(da.from_zarr("slide.zarr/0")[0].transpose(1, 2, 0),
    ...                       PredictorLoader("weights"))             # doctest: +SKIP
    >>> labels.to_zarr("labels.zarr")                                   # doctest: +SKIP
    """
    if not isinstance(image, da.Array):
        raise TypeError(f"image must be a dask array, got {type(image).__name__} (wrap it: dask.array.from_array)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    if spec is None:
        spec = getattr(loader, "spec", None) or worker_predictor(loader).spec
        spec = spec() if callable(spec) else spec
    height, width = image.shape[:2]
    token = dask.base.tokenize(image.name, loader, spec.to_dict())
    if not needs_blocks(image.shape, spec):
        whole = dask.delayed(_segment_whole, pure=True)(image, loader, spec, dask_key_name=f"crossct-whole-{token}")
        return da.from_delayed(whole, (height, width), dtype=np.int32)

    plan = BlockPlan(height, width, spec.tiling)
    bounds = dask_bounds(image, spec.normalize, token)
    view = image.transpose(1, 0, 2) if plan.transposed else image
    tile = plan.tile
    rows = [
        dask.delayed(_tile_row, pure=True)(view[start : start + tile], bounds, loader, spec, plan,
                                           dask_key_name=f"crossct-tile-row-{token}-{r}")
        for r, start in enumerate(plan.row_starts)
    ]
    kept, kept_counts, tables, counts, offsets = {}, {}, {}, {}, {}
    pieces: dict[tuple[int, int], Any] = {}
    for block in plan.blocks:
        ey0, ey1, ex0, ex1 = block.extent
        tile_rows, tile_cols = plan.tile_rows(ey0, ey1), plan.tile_columns(ex0, ex1)
        block_pieces = []
        for r in tile_rows:  # the tiles of row r this block's column needs, cut where the row was made
            if (r, block.column) not in pieces:
                pieces[r, block.column] = dask.delayed(operator.getitem, pure=True)(
                    rows[r], slice(tile_cols.start, tile_cols.stop),
                    dask_key_name=f"crossct-tiles-{token}-{r}-{block.column}")
            block_pieces.append(pieces[r, block.column])
        kept[block.order], kept_counts[block.order] = dask.delayed(_post_block, pure=True, nout=2)(
            block_pieces, plan, block, spec, dask_key_name=f"crossct-block-{token}-{block.order}")
    for block in plan.blocks:
        earlier = plan.earlier_overlapping(block)
        tables[block.order], counts[block.order] = dask.delayed(_survivors, pure=True, nout=2)(
            kept[block.order], kept_counts[block.order], block, [kept[b.order] for b in earlier], earlier,
            dask_key_name=f"crossct-survivors-{token}-{block.order}")
    start: Any = 0
    for band in range(len(plan.bands)):
        band_blocks = [b for b in plan.blocks if b.band == band]
        offsets[band] = dask.delayed(_band_offsets, pure=True)(start, [counts[b.order] for b in band_blocks],
                                                               dask_key_name=f"crossct-offsets-{token}-{band}")
        start = dask.delayed(operator.getitem, pure=True)(offsets[band], -1,
                                                          dask_key_name=f"crossct-next-offset-{token}-{band}")
    chunks = {}
    for block in plan.blocks:
        writers = plan.writers(block.core)
        parts = [(w, kept[w.order], tables[w.order], offsets[w.band]) for w in writers]
        chunk = dask.delayed(_stitch, pure=True)(block.core, parts, plan.transposed,
                                                 dask_key_name=f"crossct-labels-{token}-{block.order}")
        y0, y1, x0, x1 = block.core
        shape = (x1 - x0, y1 - y0) if plan.transposed else (y1 - y0, x1 - x0)
        chunks[block.band, block.column] = da.from_delayed(chunk, shape, dtype=np.uint32)
    n_bands, n_columns = len(plan.bands), len(plan.columns)
    if plan.transposed:  # image rows are view columns
        grid = [[chunks[i, j] for i in range(n_bands)] for j in range(n_columns)]
    else:
        grid = [[chunks[i, j] for j in range(n_columns)] for i in range(n_bands)]
    return da.block(grid)


def _segment_whole(image: np.ndarray, loader: Callable[[], Predictor], spec: ModelSpec) -> np.ndarray:
    from .pipeline import segment  # the path an image that fits takes in memory

    return segment(image, worker_predictor(loader), spec)


# ----------------------------------------------------------------------------- normalisation bounds


def dask_bounds(image: "da.Array", config: NormalizeConfig = NormalizeConfig(), token: str = "") -> "dask.delayed":
    """A delayed :func:`crossct.normalize.channel_bounds` of an (H, W, C) Dask array: the same
    pixels sampled (every ``sample_step``-th in row-major order), one task per chunk row, so the
    whole image is never gathered in one place."""
    height, width, channels = image.shape
    sources = source_channels(channels)
    measured = sorted({c for c in sources if c is not None})
    step = sample_step(height * width)
    check_finite = np.issubdtype(image.dtype, np.floating)
    parts, y = [], 0
    for i, rows in enumerate(image.chunks[0]):
        part = image[y : y + rows][:, :, measured]
        parts.append(dask.delayed(_sample_rows, pure=True)(part, y * width, step, check_finite,
                                                            dask_key_name=f"crossct-samples-{token}-{i}"))
        y += rows
    return dask.delayed(_combine_samples, pure=True)(parts, sources, measured, config,
                                                     dask_key_name=f"crossct-bounds-{token}")


def _sample_rows(rows: np.ndarray, flat_start: int, step: int, check_finite: bool) -> list[dict[str, Any]]:
    """Per measured channel of a run of whole image rows starting at flat pixel ``flat_start``:
    the sampled pixels as float32 and, for float images, the range of the finite values."""
    out = []
    first = (-flat_start) % step
    for c in range(rows.shape[2]):
        channel = rows[:, :, c].astype(np.float32).reshape(-1)
        part: dict[str, Any] = {"samples": channel[first::step].copy(), "all_finite": True, "lo": None, "hi": None}
        if check_finite:
            finite = np.isfinite(channel)
            if not finite.all():
                part["all_finite"] = False
                channel = channel[finite]
            if channel.size:
                part["lo"], part["hi"] = float(channel.min()), float(channel.max())
        out.append(part)
    return out


def _combine_samples(parts: list[list[dict[str, Any]]], sources: list[int | None], measured: list[int],
                     config: NormalizeConfig) -> Bounds:
    """The bounds :func:`crossct.normalize.channel_bounds` gives: non-finite samples replaced as
    its ``_finite`` does (NaN -> 0, +-inf -> the channel's finite max / min), then percentiles."""
    by_channel: dict[int, tuple[float, float] | None] = {}
    for k, c in enumerate(measured):
        channel_parts = [p[k] for p in parts]
        samples = np.concatenate([p["samples"] for p in channel_parts])
        if not all(p["all_finite"] for p in channel_parts):
            his = [p["hi"] for p in channel_parts if p["hi"] is not None]
            los = [p["lo"] for p in channel_parts if p["lo"] is not None]
            samples = np.nan_to_num(samples, nan=0.0, posinf=max(his) if his else 0.0, neginf=min(los) if los else 0.0)
        by_channel[c] = bounds_of_samples(samples, config)
    return [None if c is None else by_channel[c] for c in sources]


# ----------------------------------------------------------------------------- network and blocks


def _tile_row(strip: np.ndarray, bounds: Bounds, loader: Callable[[], Predictor], spec: ModelSpec,
              plan: BlockPlan) -> np.ndarray:
    """(n_columns, K, t, t) float32: the network's window-weighted outputs for every tile of one
    tile row of the view (``strip``: its (t, side, C) pixels), batched as the in-memory path does."""
    predictor = worker_predictor(loader)
    tiling = tiling_for(predictor, spec.tiling)
    x = pad_to_tile(normalize_image(strip, spec.normalize, bounds=bounds, channels_first=True), tiling.tile_size)
    tiles = [(0, c) for c in plan.col_starts]
    predict = transposed_predict(predictor.predict) if plan.transposed else predictor.predict
    outputs = [w for _, w in weighted_tile_outputs(x, tiles, predict, tiling, getattr(predictor, "concurrent_calls", 1))]
    return np.concatenate(outputs)


def _post_block(pieces: list[np.ndarray], plan: BlockPlan, block: Block, spec: ModelSpec) -> tuple[np.ndarray, int]:
    """Blend the tiles covering ``block``'s extent, post-process it and keep its core's cells:
    (extent-sized ranks 1..k, uint16 where k allows, else uint32; k)."""
    ey0, ey1, ex0, ex1 = block.extent
    tile_rows, tile_cols = plan.tile_rows(ey0, ey1), plan.tile_columns(ex0, ex1)
    top, left = plan.row_starts[tile_rows[0]], plan.col_starts[tile_cols[0]]
    shape = (plan.row_starts[tile_rows[-1]] + plan.tile - top, plan.col_starts[tile_cols[-1]] + plan.tile - left)
    blender = TileBlender(shape, spec.tiling, len(spec.output_channels))
    for r, weighted in zip(tile_rows, pieces):  # tile rows in order, each row's tiles in order
        positions = [(plan.row_starts[r], plan.col_starts[c]) for c in tile_cols]
        blender.accumulate(positions, weighted, row_offset=-top, col_offset=-left)
    outputs = blender.result(slice(ey0 - top, ey1 - top), slice(ex0 - left, ex1 - left))
    del blender
    if plan.transposed:  # post-process in the image's own orientation, as the in-memory path
        outputs = np.ascontiguousarray(outputs.transpose(0, 2, 1))
    local = postprocess(outputs, spec.postprocess)
    if plan.transposed:
        local = local.T
    kept, k = cells_kept_by(local, block.core, (ey0, ex0))
    return (kept.astype(np.uint16) if k < 2**16 else kept), k


def _survivors(kept: np.ndarray, k: int, block: Block, earlier_kept: list[np.ndarray],
               earlier: list[Block]) -> tuple[np.ndarray, int]:
    """:func:`crossct.block_plan.survivors` of one block: its pixels are claimed where a block
    before it kept a cell (all the in-memory label map holds there by then)."""
    ey0, ey1, ex0, ex1 = block.extent
    claimed = np.zeros(kept.shape, bool)
    for other, other_kept in zip(earlier, earlier_kept):
        oy0, oy1, ox0, ox1 = other.extent
        y0, y1, x0, x1 = max(ey0, oy0), min(ey1, oy1), max(ex0, ox0), min(ex1, ox1)
        claimed[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0] |= other_kept[y0 - oy0 : y1 - oy0, x0 - ox0 : x1 - ox0] > 0
    return survivors(kept, k, claimed)


def _band_offsets(start: int, counts: list[int]) -> list[int]:
    """The label offset of each block of a band (numbers go on from ``start``), then the next band's start."""
    return [int(v) for v in np.cumsum([start, *counts])]


def _stitch(core: tuple[int, int, int, int], parts: list[tuple[Block, np.ndarray, np.ndarray, list[int]]],
            transposed: bool) -> np.ndarray:
    """The final labels of one block core: every block reaching into it pastes its surviving
    cells, in processing order, where no earlier block did.  (h, w) uint32 in image orientation."""
    y0, y1, x0, x1 = core
    labels = np.zeros((y1 - y0, x1 - x0), np.uint32)
    for block, kept, table, band_offsets in parts:
        ey0, ey1, ex0, ex1 = block.extent
        a0, a1, b0, b1 = max(y0, ey0), min(y1, ey1), max(x0, ex0), min(x1, ex1)
        offset = band_offsets[block.column]
        paste(labels[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0], kept[a0 - ey0 : a1 - ey0, b0 - ex0 : b1 - ex0], table, offset)
    return np.ascontiguousarray(labels.T) if transposed else labels
