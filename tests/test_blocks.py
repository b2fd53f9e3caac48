"""Block-wise segmentation of large images: cells across block borders neither cut nor duplicated."""

import numpy as np
import pytest

from crossct.blocks import block_grid, needs_blocks, segment_blocks
from crossct.config import ModelSpec, PostprocessConfig, TilingConfig
from crossct.pipeline import segment
from crossct.synthetic import synthetic_cells


class PointwiseNet:
    """A 'network' whose outputs depend on each pixel alone, so tiling cannot change them:
    foreground = intensity, cell distance = intensity, no boundaries, no neighbours."""

    def __init__(self, spec):
        self.spec = spec
        self.description = "pointwise"
        self.calls = 0

    def predict(self, batch):
        self.calls += 1
        x = batch[:, :1]
        zeros = np.zeros_like(x)
        return np.concatenate([1 - x, x, zeros, x, zeros], axis=1)


def _spec(block, margin):
    return ModelSpec(tiling=TilingConfig(tile_size=64, overlap=0.25, batch_size=16, block_size=block, block_margin=margin),
                     postprocess=PostprocessConfig(seed_threshold=0.5, mask_threshold=0.5, smooth_sigma=0.0,
                                                   min_seed_size=1, min_size=8))


def _partition(labels):
    """The set of cells as frozensets of flat pixel indices (independent of the numbering)."""
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    ids, starts = np.unique(flat[order], return_index=True)
    groups = np.split(order, starts[1:])
    return {frozenset(g.tolist()) for i, g in zip(ids, groups) if i != 0}


def test_block_grid_covers_the_axis_evenly():
    assert block_grid(1000, 256) == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    assert block_grid(100, 256) == [(0, 100)]
    spans = block_grid(4097, 2048)
    assert spans[0][0] == 0 and spans[-1][1] == 4097 and all(b - a <= 2048 for a, b in spans)


def test_blocks_give_the_same_cells_as_the_whole_image():
    image, truth = synthetic_cells(700, 900, n_cells=300, radius=(6, 14), seed=3, touching=0.0)
    whole_spec, block_spec = _spec(4096, 64), _spec(200, 48)
    assert needs_blocks(image.shape, block_spec) and not needs_blocks(image.shape, whole_spec)
    whole = segment(image, PointwiseNet(whole_spec))
    blocked = segment_blocks(image, PointwiseNet(block_spec))
    assert blocked.dtype == np.uint32
    # Cells straddle the block borders (rows 175/350/525, columns 180/360/...): the test means something.
    borders_y = [b for _, b in block_grid(700, 200)][:-1]
    straddling = {int(v) for y in borders_y for v in np.unique(truth[y - 1:y + 1]) if v}
    assert len(straddling) > 10
    assert int(blocked.max()) == len(np.unique(blocked)) - 1  # sequential, no gaps
    assert _partition(blocked) == _partition(whole)
    assert int(blocked.max()) >= 0.9 * int(truth.max())  # adjacent synthetic cells may merge


@pytest.mark.parametrize("shape", [(1, 5000), (3000, 7)])
def test_thin_images_go_through_blocks(shape):
    spec = _spec(256, 32)
    image = np.zeros(shape + (1,), np.uint8)
    image[:, ::50] = 200
    labels = segment(image, PointwiseNet(spec))
    assert labels.shape == shape


@pytest.mark.parametrize("on_gpu, expected", [(False, 3), (True, 16)])
def test_tile_batch_size_follows_the_device(on_gpu, expected):
    """CPU calls take cpu_batch_size tiles (cache-friendly), GPU calls batch_size; same labels."""
    spec = ModelSpec(tiling=TilingConfig(tile_size=64, overlap=0.25, batch_size=16, cpu_batch_size=3),
                     postprocess=_spec(4096, 64).postprocess)
    image, _ = synthetic_cells(200, 230, seed=3)
    sizes = []

    class Recording(PointwiseNet):
        def predict(self, batch):
            sizes.append(batch.shape[0])
            return super().predict(batch)

    net = Recording(spec)
    net.on_gpu = on_gpu
    labels = segment(image, net)
    assert max(sizes) == expected and sum(sizes) == 20  # 4 x 5 tiles
    reference = segment(image, PointwiseNet(spec))  # no on_gpu attribute: CPU
    np.testing.assert_array_equal(labels, reference)


class ContextNet(PointwiseNet):
    """Outputs that depend on the whole tile (its mean, like an instance norm) and on the position
    within it, so a tile cut elsewhere or run twice would show; counts the tiles it sees."""

    def __init__(self, spec):
        super().__init__(spec)
        self.tiles = []

    def predict(self, batch):
        self.tiles.append(batch.shape[0])
        ramp = np.linspace(0, 0.05, batch.shape[-1], dtype=np.float32)
        x = batch[:, :1] * 0.9 + 0.1 * batch[:, :1].mean(axis=(2, 3), keepdims=True) + ramp
        zeros = np.zeros_like(x)
        return np.concatenate([1 - x, x, zeros, x, zeros], axis=1).astype(np.float32)


@pytest.mark.parametrize("shape", [(900, 700), (700, 900), (2000, 40), (40, 2000)])
def test_streamed_outputs_are_the_whole_image_sliding_window(shape):
    """Every tile of the whole image's grid runs once, and the canvas gives sliding_window's outputs:
    the same bits when streaming down the rows, float32 rounding when streaming a wide image's columns."""
    from crossct.blocks import _OutputStream, _transposed
    from crossct.normalize import channel_bounds, normalize_image
    from crossct.pipeline import Timings
    from crossct.tiling import sliding_window, tile_grid

    spec = _spec(200, 48)
    image, _ = synthetic_cells(*shape, n_cells=100, radius=(6, 14), seed=5)
    image = image[:, :, None]
    net = ContextNet(spec)
    whole = sliding_window(normalize_image(image, spec.normalize, channels_first=True), net.predict, spec.tiling,
                           out_channels=5)
    n_whole = sum(net.tiles)
    assert n_whole == len(tile_grid(max(shape[0], 64), max(shape[1], 64), 64, spec.tiling.stride))
    net.tiles.clear()
    transposed = shape[1] > shape[0]
    view = image.transpose(1, 0, 2) if transposed else image
    stream = _OutputStream(view, channel_bounds(image, spec.normalize), spec,
                           _transposed(net.predict) if transposed else net.predict, spec.tiling,
                           span=200 + 2 * 48, concurrency=2, timings=Timings())
    length, side = view.shape[:2]
    for y0, y1 in block_grid(length, 200):
        ey0, ey1 = max(0, y0 - 48), min(length, y1 + 48)
        stream.rows(ey0, ey1)
        for x0, x1 in block_grid(side, 200):
            ex0, ex1 = max(0, x0 - 48), min(side, x1 + 48)
            got = stream.outputs(ey0, ey1, ex0, ex1)
            want = whole[:, ey0:ey1, ex0:ex1] if not transposed else whole[:, ex0:ex1, ey0:ey1].transpose(0, 2, 1)
            if transposed:
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
            else:
                np.testing.assert_array_equal(got, want)
    assert sum(net.tiles) == n_whole  # no tile run twice


def test_whole_slide_runs_each_tile_once_and_matches_the_whole_image_cells():
    image, _ = synthetic_cells(760, 1100, n_cells=400, radius=(6, 14), seed=8, touching=0.0)
    whole_net, block_net = ContextNet(_spec(4096, 64)), ContextNet(_spec(200, 48))
    whole = segment(image, whole_net)
    blocked = segment(image, block_net)
    assert blocked.dtype == np.uint32 and whole.dtype == np.int32  # the second went through blocks
    assert sum(block_net.tiles) == sum(whole_net.tiles)
    assert _partition(blocked) == _partition(whole)


def test_canvas_requests_cannot_go_back():
    from crossct.blocks import _OutputStream
    from crossct.pipeline import Timings

    spec = _spec(200, 48)
    image = np.zeros((1000, 100, 1), np.uint8)
    stream = _OutputStream(image, [(0.0, 1.0)] * 3, spec, ContextNet(spec).predict, spec.tiling, span=296,
                           concurrency=1, timings=Timings())
    stream.rows(0, 248)
    stream.rows(152, 448)
    with pytest.raises(ValueError, match="moved on"):
        stream.rows(100, 300)


def test_blocks_post_processed_side_by_side_give_the_same_labels(monkeypatch):
    import crossct.blocks as blocks

    image, _ = synthetic_cells(700, 900, n_cells=300, radius=(6, 14), seed=3)
    spec = _spec(200, 48)
    monkeypatch.setattr(blocks, "available_cpus", lambda: 4)
    side_by_side = segment_blocks(image, ContextNet(spec))
    monkeypatch.setattr(blocks, "MAX_POST_WORKERS", 1)
    one_by_one = segment_blocks(image, ContextNet(spec))
    np.testing.assert_array_equal(side_by_side, one_by_one)
