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
