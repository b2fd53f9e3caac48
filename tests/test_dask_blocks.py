"""The block plan on Dask: labels identical to the in-memory block path, cells across block borders
kept whole, labels unique across blocks, each tile through the network once, the model loaded
once per worker; OME-Zarr stores in and out."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr.writer import write_image

from crossct import cli
from crossct.block_plan import BlockPlan
from crossct.blocks import segment_blocks
from crossct.config import ModelSpec, PostprocessConfig, TilingConfig
from crossct.dask_blocks import PredictorLoader, dask_bounds, segment_dask
from crossct.normalize import channel_bounds
from crossct.pipeline import segment
from crossct.synthetic import synthetic_cells
from crossct.zarr_io import read_ome_zarr, write_ome_zarr_labels

# The test networks below travel to the cluster's worker processes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _spec(block: int = 200, margin: int = 48) -> ModelSpec:
    return ModelSpec(tiling=TilingConfig(tile_size=64, overlap=0.25, batch_size=3, cpu_batch_size=3,
                                         block_size=block, block_margin=margin),
                     postprocess=PostprocessConfig(seed_threshold=0.5, mask_threshold=0.5, smooth_sigma=0.0,
                                                   min_seed_size=1, min_size=8))


class ContextNet:
    """Outputs that depend on the whole tile (its mean) and on the position within it, so a tile cut
    elsewhere, run in another batch position or blended in another order would show."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec, self.description, self.tiles = spec, "context", 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.tiles += batch.shape[0]
        ramp = np.linspace(0, 0.05, batch.shape[-1], dtype=np.float32)
        x = batch[:, :1] * 0.9 + 0.1 * batch[:, :1].mean(axis=(2, 3), keepdims=True) + ramp
        zeros = np.zeros_like(x)
        return np.concatenate([1 - x, x, zeros, x, zeros], axis=1).astype(np.float32)


@dataclass(frozen=True)
class ContextNetLoader:
    """Makes a ContextNet on a worker and notes the worker's process id in ``log`` each time."""

    block: int = 200
    margin: int = 48
    log: str | None = None

    def __call__(self) -> ContextNet:
        if self.log:
            with open(self.log, "a") as fh:
                fh.write(f"{os.getpid()}\n")
        return ContextNet(self.spec())

    def spec(self) -> ModelSpec:
        return _spec(self.block, self.margin)


def _partition(labels: np.ndarray) -> set[frozenset[int]]:
    """The set of cells as frozensets of flat pixel indices (independent of the numbering)."""
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    ids, starts = np.unique(flat[order], return_index=True)
    return {frozenset(g.tolist()) for i, g in zip(ids, np.split(order, starts[1:])) if i != 0}


def _ome_zarr(path: Path, image: np.ndarray, fmt=FormatV04(), axes: str = "cyx", chunk: int = 256) -> Path:
    """An OME-Zarr store holding ``image`` ((H, W) or (C, H, W)) with ome-zarr's own writer."""
    data = image if image.ndim == len(axes) else image.reshape((1,) * (len(axes) - image.ndim) + image.shape)
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_image(data, group, axes=axes, fmt=fmt,
                storage_options={"chunks": tuple(1 if a not in "yx" else chunk for a in axes)})
    return path


@pytest.fixture(scope="module")
def cluster_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            yield client


# ----------------------------------------------------------------------------- on a cluster


@pytest.mark.slow
def test_cluster_gives_the_in_memory_block_labels(tmp_path, cluster_client):
    """A synthetic OME-Zarr slide on a LocalCluster of 2 workers: the same labels, bit for bit, as
    the in-memory block path; the same cells as the whole image segmented in one piece (so no cell
    is cut by a block border and none is counted twice); every tile through the network once; the
    network loaded once per worker process."""
    image, truth = synthetic_cells(760, 1100, n_cells=400, radius=(6, 14), seed=8, touching=0.0)
    store = _ome_zarr(tmp_path / "slide.zarr", image)
    log = tmp_path / "loads.txt"
    loader = ContextNetLoader(log=str(log))

    labels = segment_dask(read_ome_zarr(store).image, loader)
    got = labels.compute()  # on the cluster: the client is the default scheduler

    in_memory = segment_blocks(image, ContextNet(loader.spec()))
    np.testing.assert_array_equal(got, in_memory)
    plan = BlockPlan(*image.shape, loader.spec().tiling)
    assert plan.transposed and got.dtype == np.uint32
    assert labels.chunks == (tuple(b - a for a, b in plan.columns), tuple(b - a for a, b in plan.bands))  # block cores
    whole = segment(image, ContextNet(_spec(4096, 64)))
    assert whole.dtype == np.int32  # in one piece: the reference
    assert _partition(got) == _partition(whole)
    np.testing.assert_array_equal(np.unique(got), np.arange(int(got.max()) + 1))  # unique, 1..N, no gaps
    # Cells straddle the block borders (view = transposed image: its column borders are band borders).
    borders = [b for _, b in plan.bands[:-1]]
    assert len({int(v) for x in borders for v in np.unique(truth[:, x - 1 : x + 1]) if v}) > 10

    pids = log.read_text().split()
    assert len(pids) == len(set(pids)) == 2, pids  # each worker loaded the network once
    tiles = cluster_client.run(lambda: sum(getattr(p, "tiles", 0) for p in __import__("crossct.dask_blocks").dask_blocks._LOADED.values()))
    assert sum(tiles.values()) == len(plan.row_starts) * len(plan.col_starts)  # each tile once


@pytest.mark.slow
def test_cluster_with_onnx_weights_matches_in_memory(tmp_path, cluster_client, tiny_weights):
    """The real loader: ONNX Runtime in each worker, weights read from the folder by path."""
    from crossct.predictors import load_predictor

    predictor = load_predictor(tiny_weights, backend="onnx", device="cpu")
    spec = predictor.spec.replace(tiling=TilingConfig(tile_size=64, overlap=0.25, batch_size=4, block_size=192,
                                                      block_margin=32),
                                  postprocess=PostprocessConfig(method="threshold", interior_threshold=0.2, min_size=4))
    rgb = np.stack([synthetic_cells(500, 430, seed=s)[0] for s in (1, 2, 3)], axis=-1)
    store = _ome_zarr(tmp_path / "rgb.zarr", rgb.transpose(2, 0, 1), fmt=FormatV05())
    got = segment_dask(read_ome_zarr(store).image, PredictorLoader(str(tiny_weights), "onnx", "cpu"), spec).compute()
    np.testing.assert_array_equal(got, segment_blocks(rgb, predictor, spec))
    assert got.max() > 0


# ----------------------------------------------------------------------------- in this process


@pytest.mark.parametrize("shape", [(700, 900), (900, 700), (2000, 40), (40, 2000)])
def test_any_shape_and_chunking_gives_the_in_memory_labels(shape):
    image, _ = synthetic_cells(*shape, n_cells=shape[0] * shape[1] // 1600, radius=(6, 14), seed=5)
    chunks = (173, 311)  # chunks unrelated to blocks or tiles
    with dask.config.set(scheduler="sync"):
        got = segment_dask(da.from_array(image, chunks=chunks), ContextNetLoader()).compute()
    np.testing.assert_array_equal(got, segment_blocks(image, ContextNet(_spec())))


def test_an_image_that_fits_goes_whole_as_in_memory():
    image, _ = synthetic_cells(250, 280, seed=2)
    with dask.config.set(scheduler="sync"):
        got = segment_dask(da.from_array(image, chunks=100), ContextNetLoader()).compute()
    want = segment(image, ContextNet(_spec()))
    assert got.dtype == want.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_dask_bounds_are_channel_bounds_on_a_sampled_float_image():
    """Above 4 M pixels both sample every k-th pixel; NaN and inf are replaced alike."""
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 50.0, size=(2100, 2003, 2)).astype(np.float32)
    image[rng.random(image.shape[:2]) < 0.3] = 0
    image[5, 7, 0], image[1000, 1, 0], image[17, 3, 1] = np.nan, np.inf, -np.inf
    image[::97, ::89, 1] = np.inf  # some land on sampled pixels
    want = channel_bounds(image)
    got = dask_bounds(da.from_array(image, chunks=(333, 700, 2))).compute(scheduler="sync")
    assert got == want and want[2] is None
    gray = rng.integers(0, 4000, size=(300, 200), dtype=np.uint16)
    assert dask_bounds(da.from_array(gray[:, :, None], chunks=77)).compute(scheduler="sync") == channel_bounds(gray)


def test_segment_dask_takes_only_dask_arrays():
    with pytest.raises(TypeError, match="dask array"):
        segment_dask(np.zeros((10, 10)), ContextNetLoader())


# ----------------------------------------------------------------------------- OME-Zarr in and out


@pytest.mark.parametrize("fmt", [FormatV04(), FormatV05()], ids=["ngff-0.4", "ngff-0.5"])
def test_labels_group_opens_with_the_ome_zarr_reader(tmp_path, fmt, monkeypatch):
    import crossct.dask_blocks as dask_blocks

    rows = []
    real_row = dask_blocks._tile_row
    monkeypatch.setattr(dask_blocks, "_tile_row", lambda *a: rows.append(1) or real_row(*a))
    image, _ = synthetic_cells(1200, 1000, seed=3)
    store = _ome_zarr(tmp_path / "img.zarr", image, fmt=fmt, axes="tczyx", chunk=200)
    source = read_ome_zarr(store, level=1)
    assert source.image.shape == (600, 500, 1) and source.axes == ("t", "c", "z", "y", "x")
    with dask.config.set(scheduler="sync"):
        labels = segment_dask(source.image, ContextNetLoader())
        cells = write_ome_zarr_labels(source, labels)
        assert len(rows) == len(BlockPlan(600, 500, _spec().tiling).row_starts)  # the whole pyramid in one pass
        want = labels.compute()
    assert cells == int(want.max()) > 0

    nodes = list(Reader(parse_url(str(store / "labels" / "crossct")))())
    node = nodes[0]
    assert any(isinstance(s, Label) for s in node.specs) and any(isinstance(s, Multiscales) for s in node.specs)
    assert [d.shape for d in node.data] == [(1, 1, 1, 600, 500), (1, 1, 1, 300, 250)]
    np.testing.assert_array_equal(node.data[0][0, 0, 0].compute(), want)
    np.testing.assert_array_equal(node.data[1][0, 0, 0].compute(), want[::2, ::2])
    # The labels sit on the level they were made from: its scale and translation; then every other pixel.
    transforms = [{t["type"]: t[t["type"]] for t in level} for level in node.metadata["coordinateTransformations"]]
    assert transforms == [{"scale": [1.0, 1.0, 1.0, 2.0, 2.0], "translation": [0.0, 0.0, 0.0, 0.5, 0.5]},
                          {"scale": [1.0, 1.0, 1.0, 4.0, 4.0], "translation": [0.0, 0.0, 0.0, 0.5, 0.5]}]
    root = zarr.open_group(str(store), mode="r")
    attrs = root["labels"].attrs.asdict()
    assert (attrs.get("ome", attrs))["labels"] == ["crossct"]
    assert "image-label" in (root["labels/crossct"].attrs.asdict().get("ome", root["labels/crossct"].attrs.asdict()))


def test_failed_run_leaves_earlier_labels_and_no_scratch(tmp_path):
    image, _ = synthetic_cells(300, 260, seed=3)
    store = _ome_zarr(tmp_path / "img.zarr", image)
    source = read_ome_zarr(store)
    with dask.config.set(scheduler="sync"):
        write_ome_zarr_labels(source, da.ones((300, 260), dtype=np.uint32, chunks=100))

        def fail(block):
            raise RuntimeError("worker lost")

        broken = da.zeros((300, 260), dtype=np.uint32, chunks=100).map_blocks(fail, dtype=np.uint32)
        with pytest.raises(RuntimeError, match="worker lost"):
            write_ome_zarr_labels(source, broken)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["img.zarr"]  # no scratch folder left
        assert int(da.from_zarr(str(store / "labels" / "crossct" / "s0")).min().compute()) == 1  # the old labels
        write_ome_zarr_labels(source, da.full((300, 260), 2, dtype=np.uint32, chunks=100))  # a rerun replaces them
        assert int(da.from_zarr(str(store / "labels" / "crossct" / "s0")).max().compute()) == 2
    assert zarr.open_group(str(store), mode="r")["labels"].attrs["labels"] == ["crossct"]  # listed once


def test_bad_stores_are_reported_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="no such OME-Zarr store"):
        read_ome_zarr(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a Zarr store"):
        read_ome_zarr(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "bare.zarr"), mode="w", zarr_format=2)
    with pytest.raises(ValueError, match="not an OME-Zarr image"):
        read_ome_zarr(tmp_path / "bare.zarr")
    stack = np.zeros((3, 64, 64), np.uint8)
    _ome_zarr(tmp_path / "stack.zarr", stack, axes="zyx", chunk=64)
    with pytest.raises(ValueError, match="axis 'z' has 3 planes"):
        read_ome_zarr(tmp_path / "stack.zarr")
    _ome_zarr(tmp_path / "img.zarr", np.zeros((64, 64), np.uint8), chunk=64)
    with pytest.raises(ValueError, match=r"level 9 does not exist \(this image has levels 0..4\)"):
        read_ome_zarr(tmp_path / "img.zarr", level=9)


# ----------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_cli_segments_a_store_on_a_local_cluster(tmp_path, tiny_weights, capsys):
    image, _ = synthetic_cells(300, 340, seed=4)
    store = _ome_zarr(tmp_path / "img.zarr", image)
    code = cli.main(["--zarr", str(store), "-w", str(tiny_weights), "--workers", "1", "--postprocess", "threshold", "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "segmented" in err and str(store / "labels" / "crossct") in err
    labels = zarr.open_array(str(store / "labels" / "crossct" / "s0"))
    assert labels.shape == (1, 300, 340)


def test_cli_reports_unusable_stores_and_weights(tmp_path, caplog):
    assert cli.main(["--zarr", str(tmp_path / "missing.zarr")]) == 2
    assert "missing.zarr: no such OME-Zarr store" in caplog.text
    store = _ome_zarr(tmp_path / "img.zarr", np.zeros((64, 64), np.uint8), chunk=64)
    assert cli.main(["--zarr", str(store), "-w", str(tmp_path / "no-weights")]) == 2
    assert "no model weights found" in caplog.text
    assert not (store / "labels").exists()


def test_cells_larger_than_the_margin_are_stitched_as_in_memory(monkeypatch):
    """Cells up to 90 px across with a 16 px margin: neighbouring blocks segment them differently
    near their extents' edges and claim the same pixels; the first block in order keeps them, on
    Dask as in memory."""
    import crossct.blocks as blocks

    contested = []
    real = blocks.survivors

    def spy(kept, k, claimed):
        contested.append(int(((kept > 0) & claimed).sum()))
        return real(kept, k, claimed)

    monkeypatch.setattr(blocks, "survivors", spy)
    image, _ = synthetic_cells(600, 700, n_cells=150, radius=(15, 45), seed=0, touching=0.5)
    want = segment_blocks(image, ContextNet(_spec(200, 16)))
    assert sum(contested) > 1000
    with dask.config.set(scheduler="sync"):
        got = segment_dask(da.from_array(image, chunks=256), ContextNetLoader(200, 16)).compute()
    np.testing.assert_array_equal(got, want)


def test_cli_without_the_extra_says_what_to_install(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as on a plain install
    assert cli.main(["--zarr", str(tmp_path / "slide.zarr")]) == 2
    assert "pip install 'crossct[zarr]'" in caplog.text
