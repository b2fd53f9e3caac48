"""crossct.tiling: a "network" returning its input + 1 must come back stitched exactly."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from crossct.config import TilingConfig
from crossct.tiling import blending_window, sliding_window, tile_grid, tile_starts


def plus_one(batch: np.ndarray) -> np.ndarray:
    assert batch.dtype == np.float32 and batch.ndim == 4
    return batch + 1


SIZES = [(1, 1), (3, 500), (500, 3), (17, 64), (64, 64), (63, 65), (64, 200), (300, 1000)]


@pytest.mark.parametrize("blending", ["gaussian", "constant"])
@pytest.mark.parametrize("height, width", SIZES)
def test_identity_plus_one_is_exact(height, width, blending):
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.random((3, height, width), dtype=np.float32)
    config = TilingConfig(tile_size=64, overlap=0.25, blending=blending, batch_size=7)
    out = sliding_window(image, plus_one, config)
    assert out.shape == (3, height, width) and out.dtype == np.float32
    np.testing.assert_allclose(out, image + 1, atol=1e-6, rtol=0)


# At 90 % overlap ~100 tiles are summed per pixel in float32: rounding reaches a few 1e-6.
@pytest.mark.parametrize("overlap, atol", [(0.0, 1e-6), (0.5, 1e-6), (0.9, 1e-5)])
def test_other_overlaps(overlap, atol):
    image = np.random.default_rng(0).random((2, 150, 97), dtype=np.float32)
    out = sliding_window(image, plus_one, TilingConfig(tile_size=32, overlap=overlap, batch_size=3))
    np.testing.assert_allclose(out, image + 1, atol=atol, rtol=0)


def test_more_output_channels_than_input():
    def five(batch):
        return np.concatenate([batch, batch[:, :2] * 2], axis=1)

    image = np.random.default_rng(0).random((3, 70, 90), dtype=np.float32)
    out = sliding_window(image, five, TilingConfig(tile_size=32), out_channels=5)
    assert out.shape == (5, 70, 90)
    np.testing.assert_allclose(out[3:], image[:2] * 2, atol=1e-6)


def test_input_not_modified_and_every_tile_full_size():
    image = np.random.default_rng(0).random((3, 40, 130), dtype=np.float32)
    before = image.copy()
    seen = []

    def record(batch):
        seen.append(batch.shape)
        return batch.copy()

    sliding_window(image, record, TilingConfig(tile_size=32, batch_size=2))
    np.testing.assert_array_equal(image, before)
    assert all(s[1:] == (3, 32, 32) and 1 <= s[0] <= 2 for s in seen)


def test_predictor_returning_wrong_shape_is_reported():
    with pytest.raises(ValueError, match="predictor returned shape"):
        sliding_window(np.zeros((3, 40, 40), np.float32), lambda b: b[:, :, :10], TilingConfig(tile_size=32))


@pytest.mark.parametrize("length", [1, 63, 64, 65, 100, 128, 129, 1000])
@pytest.mark.parametrize("stride", [1, 16, 48, 64])
def test_tile_starts_cover_every_pixel(length, stride):
    tile = 64
    starts = tile_starts(length, tile, stride)
    assert starts[0] == 0
    assert starts == sorted(set(starts))  # increasing, no duplicates
    covered = np.zeros(max(length, tile), bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    assert starts[-1] == max(length - tile, 0)  # last tile flush with the end
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_tile_starts_known_values():
    assert tile_starts(64, 64, 48) == [0]
    assert tile_starts(100, 64, 48) == [0, 36]
    assert tile_starts(160, 64, 48) == [0, 48, 96]
    # 136 px to cover in steps of at most 48: 4 tiles, evenly 45-46 px apart (not 48, 48, 40).
    assert tile_starts(200, 64, 48) == [0, 45, 91, 136]
    starts = tile_starts(1000, 256, 192)
    assert len(starts) == 5 and max(b - a for a, b in zip(starts, starts[1:])) <= 192


@pytest.mark.parametrize("height, width", [(64, 64), (300, 1000), (65, 129)])
def test_grid_covers_every_pixel(height, width):
    tile, stride = 64, 48
    count = np.zeros((height, width), int)
    for y, x in tile_grid(height, width, tile, stride):
        assert 0 <= y <= height - tile and 0 <= x <= width - tile
        count[y : y + tile, x : x + tile] += 1
    assert count.min() >= 1


@pytest.mark.parametrize("tile", [16, 64, 256])
def test_gaussian_window(tile):
    window = blending_window(tile, "gaussian", 0.125)
    assert window.shape == (tile, tile) and window.dtype == np.float32
    assert window.min() > 0
    assert window.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(window, window.T)
    np.testing.assert_array_equal(window, window[::-1, ::-1])
    centre = tile // 2
    assert window[centre, centre] > window[centre, 0] >= window[0, 0]
    assert not window.flags.writeable


def test_constant_window_and_bad_mode():
    np.testing.assert_array_equal(blending_window(32, "constant"), np.ones((32, 32), np.float32))
    with pytest.raises(ValueError, match="gaussian"):
        blending_window(32, "cosine")


def test_blending_favours_tile_centres():
    """Where two tiles overlap, the Gaussian gives the tile whose centre is nearer the larger weight."""
    tile = 32
    image = np.zeros((1, 32, 56), np.float32)  # two tiles: x = 0 and x = 24

    def tile_id(batch):
        # first tile of the batch returns 0, second returns 1
        return np.arange(len(batch), dtype=np.float32)[:, None, None, None] * np.ones_like(batch)

    out = sliding_window(image, tile_id, TilingConfig(tile_size=tile, overlap=0.25, batch_size=2))[0]
    assert out[16, 5] == pytest.approx(0.0) and out[16, 50] == pytest.approx(1.0)
    assert out[16, 25] < 0.5 < out[16, 30]  # left of the overlap's centre leans to tile 0
    flat = sliding_window(image, tile_id, TilingConfig(tile_size=tile, overlap=0.25, blending="constant", batch_size=2))[0]
    assert flat[16, 25] == pytest.approx(0.5) and flat[16, 30] == pytest.approx(0.5)


def test_rejects_non_chw():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        sliding_window(np.zeros((10, 10), np.float32), plus_one)


@pytest.mark.parametrize("kwargs, match", [({"tile_size": 40}, "multiple of 16"), ({"overlap": 1.0}, "overlap"),
                                           ({"blending": "cosine"}, "gaussian"), ({"batch_size": 0}, "batch_size")])
def test_tiling_config_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TilingConfig(**kwargs)


class OutOfOrder:
    """A "network" (input + 1) whose calls finish in scrambled order, recording how many overlap."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()
        self.running = self.most_running = self.calls = 0

    def __call__(self, batch):
        with self.lock:
            self.running += 1
            self.calls += 1
            self.most_running = max(self.most_running, self.running)
            delay = float(self.rng.uniform(0, 0.004))
        time.sleep(delay)
        with self.lock:
            self.running -= 1
        return batch + 1


@pytest.mark.parametrize("concurrency", [2, 3, 8])
def test_concurrent_calls_give_the_same_bits_as_serial(concurrency):
    """Blending happens in grid order on the caller's thread: the result does not depend on which call ends first."""
    image = np.random.default_rng(1).random((3, 300, 410), dtype=np.float32)
    config = TilingConfig(tile_size=64, overlap=0.25, batch_size=2)
    serial = sliding_window(image, plus_one, config)
    net = OutOfOrder(seed=concurrency)
    concurrent = sliding_window(image, net, config, concurrency=concurrency)
    np.testing.assert_array_equal(concurrent, serial)
    assert net.calls == -(-len(tile_grid(300, 410, 64, config.stride)) // 2)
    assert 2 <= net.most_running <= concurrency  # calls did overlap, never more than asked


def test_concurrent_call_error_reaches_the_caller_and_stops_the_rest():
    calls = []

    def failing(batch):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("network failed on batch 3")
        time.sleep(0.002)
        return batch + 1

    image = np.zeros((3, 640, 640), np.float32)  # 13 x 13 tiles of 64 px at stride 48
    with pytest.raises(RuntimeError, match="batch 3"):
        sliding_window(image, failing, TilingConfig(tile_size=64, batch_size=1), concurrency=2)
    assert len(calls) < 10  # queued batches were dropped, not all 169 run


def test_concurrency_must_be_positive():
    with pytest.raises(ValueError, match="concurrency"):
        sliding_window(np.zeros((1, 8, 8), np.float32), plus_one, TilingConfig(tile_size=32), concurrency=0)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_worker_pools_work_in_a_forked_child():
    """A child forked after the pools exist gets its own (its parent's threads are not in it)."""
    import multiprocessing

    image = np.random.default_rng(2).random((3, 200, 200), dtype=np.float32)
    config = TilingConfig(tile_size=64, batch_size=1)
    expected = sliding_window(image, plus_one, config, concurrency=2)  # the parent's pool now exists
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(sliding_window, (image, plus_one, config, None, 2)).get(timeout=60)
    np.testing.assert_array_equal(got, expected)
