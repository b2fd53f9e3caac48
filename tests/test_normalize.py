"""crossct.normalize: 3 channels, per-channel 1-99 percentile of non-zero pixels -> [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from crossct.config import NormalizeConfig
from crossct.normalize import normalize_image, to_three_channels


def hand_normalise(channel: np.ndarray, lower: float = 1, upper: float = 99) -> np.ndarray:
    nonzero = channel[channel != 0].astype(np.float64)
    lo, hi = np.percentile(nonzero, [lower, upper])
    return np.clip((channel - lo) / (hi - lo), 0, 1)


def test_gray_is_repeated_to_three():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = to_three_channels(gray)
    assert rgb.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], gray)
    np.testing.assert_array_equal(to_three_channels(gray[:, :, None]), rgb)


def test_extra_channels_dropped_and_missing_padded_with_zero():
    rgba = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    np.testing.assert_array_equal(to_three_channels(rgba), rgba[:, :, :3])
    two = np.arange(1, 13).reshape(2, 3, 2)
    three = to_three_channels(two)
    np.testing.assert_array_equal(three[:, :, :2], two)
    np.testing.assert_array_equal(three[:, :, 2], 0)


def test_bad_ndim_rejected_with_shape():
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5\)"):
        to_three_channels(np.zeros((2, 3, 4, 5)))


def test_matches_hand_computation_per_channel():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 1000, (20, 30, 3)).astype(np.uint16)
    image[:5, :, 1] = 0  # zeros must not take part in the percentiles
    image[:, :, 2] *= 7  # each channel has its own range
    out = normalize_image(image)
    assert out.shape == (20, 30, 3) and out.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(out[:, :, c], hand_normalise(image[:, :, c]), atol=1e-6)


def test_small_exact_example():
    # Non-zero values 1..100: percentiles 1 and 99 are 1.99 and 99.01 (linear interpolation).
    channel = np.arange(0, 101, dtype=np.float32).reshape(1, 101)
    out = normalize_image(channel)[0, :, 0]
    lo, hi = 1.99, 99.01
    assert out[0] == 0.0 and out[1] == 0.0 and out[100] == 1.0
    np.testing.assert_allclose(out[50], (50 - lo) / (hi - lo), atol=1e-6)
    np.testing.assert_allclose(out[2], (2 - lo) / (hi - lo), atol=1e-6)


def test_custom_percentiles():
    channel = np.arange(1, 101, dtype=np.float32).reshape(10, 10)
    out = normalize_image(channel, NormalizeConfig(lower_percentile=10, upper_percentile=90))
    np.testing.assert_allclose(out[:, :, 0], hand_normalise(channel, 10, 90), atol=1e-6)


def test_empty_channel_stays_zero_and_gray_two_channel_pad():
    image = np.zeros((8, 9, 3), np.uint8)
    image[:, :, 0] = np.arange(72).reshape(8, 9)
    out = normalize_image(image)
    assert out[:, :, 1].max() == 0 and out[:, :, 2].max() == 0
    assert out[:, :, 0].max() == 1.0
    two = np.stack([np.arange(72).reshape(8, 9)] * 2, axis=-1).astype(np.uint16)
    assert normalize_image(two)[:, :, 2].max() == 0


def test_values_are_in_unit_range():
    rng = np.random.default_rng(2)
    out = normalize_image(rng.normal(0, 100, (30, 40, 3)).astype(np.float32))
    assert out.min() >= 0 and out.max() <= 1


def test_nan_and_inf():
    image = np.arange(1, 101, dtype=np.float32).reshape(10, 10)
    image[0, 0], image[0, 1], image[0, 2] = np.nan, np.inf, -np.inf
    out = normalize_image(image)
    assert np.isfinite(out).all()
    assert out[0, 0, 0] == 0.0  # NaN -> 0
    assert out[0, 1, 0] == 1.0  # +inf -> brightest
    assert out[0, 2, 0] == 0.0  # -inf -> darkest
    finite = image.copy()
    finite[0, :3] = [0, 100, 4]  # what the non-finite values are replaced by
    np.testing.assert_allclose(out[:, :, 0], hand_normalise(finite), atol=1e-6)


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_all_non_finite(fill):
    out = normalize_image(np.full((4, 5), fill, np.float32))
    assert np.isfinite(out).all()
    assert out.shape == (4, 5, 3)


@pytest.mark.parametrize("value, expected", [(0, 0.0), (7, 1.0), (0.25, 1.0)])
def test_constant_image(value, expected):
    out = normalize_image(np.full((6, 7), value, np.float32))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, expected)


def test_input_not_modified():
    image = np.arange(1, 61, dtype=np.float32).reshape(4, 5, 3)
    image[0, 0, 0] = np.nan
    image[1, 1, 1] = np.inf
    before = image.copy()
    normalize_image(image)
    to_three_channels(image)
    np.testing.assert_array_equal(image, before)
    gray = np.arange(20, dtype=np.uint16).reshape(4, 5)
    gray_before = gray.copy()
    normalize_image(gray)
    np.testing.assert_array_equal(gray, gray_before)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64, bool])
def test_any_dtype(dtype):
    image = (np.arange(48).reshape(4, 4, 3) % 5).astype(dtype)
    out = normalize_image(image)
    assert out.dtype == np.float32 and out.shape == (4, 4, 3)
    assert out.min() >= 0 and out.max() <= 1


def test_bad_config():
    with pytest.raises(ValueError, match="percentiles"):
        NormalizeConfig(lower_percentile=99, upper_percentile=1)
