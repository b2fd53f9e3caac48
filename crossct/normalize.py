"""Bring any image to the network's input: 3 channels, each scaled to [0, 1] by its percentiles.

The organisers' rule: grayscale is repeated to 3 channels, extra channels are dropped, and each
channel is rescaled from the 1st-99th percentile of its *non-zero* pixels to [0, 1] (values outside
clipped).  A channel whose range is (nearly) empty is not stretched, so noise in a blank channel is
never blown up; a channel that is all zero stays zero.
"""

from __future__ import annotations

import numpy as np

from .config import NormalizeConfig

__all__ = ["to_three_channels", "channel_bounds", "normalize_image", "sample_step", "source_channels", "bounds_of_samples"]

# Percentiles of very large images are estimated on a regular subsample: exact enough for a
# 1-99 % range and keeps normalisation linear-time on whole slides.
_MAX_PERCENTILE_SAMPLES = 4_000_000


def to_three_channels(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) -> (H, W, 3): gray repeated, channels beyond 3 dropped, a 2nd-only pair padded with zeros.

    Returns a view where possible; never modifies ``image``.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    channels = image.shape[2]
    if channels == 1:
        return np.repeat(image, 3, axis=2)
    if channels >= 3:
        return image[:, :, :3]
    pad = np.zeros(image.shape[:2] + (3 - channels,), dtype=image.dtype)
    return np.concatenate([image, pad], axis=2)


def _finite(channel: np.ndarray) -> np.ndarray:
    channel = channel.astype(np.float32, copy=False)
    if not np.isfinite(channel).all():
        finite = channel[np.isfinite(channel)]
        hi = float(finite.max()) if finite.size else 0.0
        lo = float(finite.min()) if finite.size else 0.0
        channel = np.nan_to_num(channel, nan=0.0, posinf=hi, neginf=lo)
    return channel


def sample_step(n_pixels: int) -> int:
    """Every how many pixels (in row-major order) a channel of ``n_pixels`` is sampled for its percentiles."""
    return n_pixels // _MAX_PERCENTILE_SAMPLES + 1 if n_pixels > _MAX_PERCENTILE_SAMPLES else 1


def source_channels(n_channels: int) -> list[int | None]:
    """The image channel each of the 3 model channels is measured on (None: no such channel)."""
    return [0, 0, 0] if n_channels == 1 else [c if c < n_channels else None for c in range(3)]


def bounds_of_samples(samples: np.ndarray, config: NormalizeConfig = NormalizeConfig()) -> tuple[float, float] | None:
    """(low, high) percentiles of the non-zero values of a channel's float32 samples (None: all zero)."""
    nonzero = samples[samples != 0]
    if nonzero.size == 0:
        return None
    lo, hi = np.percentile(nonzero, [config.lower_percentile, config.upper_percentile])
    return float(lo), float(hi)


def channel_bounds(image: np.ndarray, config: NormalizeConfig = NormalizeConfig()) -> list[tuple[float, float] | None]:
    """The (low, high) percentiles of each of the 3 model channels' non-zero pixels (None: all zero).

    Computed once per distinct source channel (a gray image is measured once, not three times)
    and on a regular subsample of very large images (every :func:`sample_step`-th pixel), so a
    whole slide is measured in one pass and its blocks can then be normalised alike.
    :mod:`crossct.dask_blocks` takes the same samples chunk by chunk.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    measured: dict[int, tuple[float, float] | None] = {}
    bounds: list[tuple[float, float] | None] = []
    for c in source_channels(image.shape[2]):
        if c is None:
            bounds.append(None)
            continue
        if c not in measured:
            flat = _finite(image[:, :, c]).reshape(-1)
            measured[c] = bounds_of_samples(flat[:: sample_step(flat.size)], config)
        bounds.append(measured[c])
    return bounds


def normalize_image(image: np.ndarray, config: NormalizeConfig = NormalizeConfig(),
                    bounds: list[tuple[float, float] | None] | None = None,
                    channels_first: bool = False) -> np.ndarray:
    """Normalise an image for the network.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array of any numeric dtype (NaN and inf allowed).
    config : percentiles and the minimum range that is stretched.
    bounds : per-channel (low, high) from :func:`channel_bounds`; measured on ``image`` when None
        (pass them to normalise a block of a large image like the whole).
    channels_first : return (3, H, W), the network's layout, without an extra copy.

    Returns
    -------
    (H, W, 3) float32 array in [0, 1] ((3, H, W) with ``channels_first``).

    Examples
    --------
    >>> normalize_image(np.array([[0, 10], [20, 30]], np.uint16)).shape
    (2, 2, 3)
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    if bounds is None:
        bounds = channel_bounds(image, config)
    height, width, channels = image.shape
    out = np.empty((3, height, width), dtype=np.float32)
    for c in range(3):
        src = 0 if channels == 1 else c
        if src >= channels or bounds[c] is None:
            out[c] = 0.0
            continue
        channel = _finite(image[:, :, src])
        lo, hi = bounds[c]
        if hi - lo > config.min_range:
            np.subtract(channel, np.float32(lo), out=out[c])
            out[c] *= np.float32(1.0 / (hi - lo))
            np.clip(out[c], 0.0, 1.0, out=out[c])
        else:
            # No contrast to stretch: keep where the signal is, at full scale.
            out[c] = channel != 0
    return out if channels_first else out.transpose(1, 2, 0)
