"""The memory budget: what segmenting one image will cost, known from its header before decoding.

One limit (``--max-memory``, default :data:`~crossct.io.DEFAULT_MEMORY_LIMIT`) covers everything
an image needs beyond the loaded model: the decoded array and the decoder's buffers, the network's
blended outputs, post-processing, the label map, writing, and the overlay when one is asked for.
An image whose estimate is over the limit is refused from its header, in milliseconds, naming the
file; the batch never holds two images in flight whose estimates add up to more than the limit.

The estimate is built from costs measured with ``python -m benchmarks.bench_memory_image`` (peak
RSS above the loaded model while ``run_batch`` reads, segments and writes one image, 256 x 256 to
8000 x 8000; the table is in benchmarks/README.md, section ``bench_memory_image``), rounded up:

- every image: 32 MiB (thread stacks, allocator arenas, tile buffers; measured 31 MiB at 512 x 512);
- images up to ``block_size + 2 * block_margin`` a side (the fast path): 64 bytes a pixel more
  (measured in all 76 MiB at 1 megapixel, 385-402 MiB at 6.6 megapixels);
- larger images (the bounded-memory block path, :mod:`crossct.blocks`): 12 bytes a pixel for the
  label map, its relabelling and writing (measured 6-9), the canvas of blended outputs
  (``(K + 1) x 4`` bytes x ``block + 2 margins + tile`` rows x the shorter side, exact), and per
  post-processing worker 42 bytes a pixel of one block with its margins (measured 36; 64 when
  the image is wider than high and blocks are transposed, measured 57);
- the overlay: 4 bytes a pixel (its 3-byte canvas; drawn after post-processing has freed more,
  it did not raise the measured peak).

The estimates came out 1.17 to 1.52 times the measured peaks from 1 megapixel up.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from .config import ModelSpec
from .io import DEFAULT_MEMORY_LIMIT, ImageHeader, ImageReadError, format_bytes

__all__ = ["MemoryBudget", "parse_memory", "working_bytes", "needed_bytes", "DEFAULT_MEMORY_LIMIT"]

PER_IMAGE_BYTES = 32 * 2**20
FAST_BYTES_PER_PIXEL = 64
BLOCK_BYTES_PER_PIXEL = 12
POST_BYTES_PER_BLOCK_PIXEL = 42
POST_BYTES_PER_BLOCK_PIXEL_TRANSPOSED = 64
OVERLAY_BYTES_PER_PIXEL = 4

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory(text: str | int) -> int:
    """'3G', '3GB', '3GiB', '1.5g', '512M', '2000000000' -> bytes (binary units: 1G = 2**30)."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
        if not match:
            raise ValueError(f"{text!r} is not a memory size (examples: 3G, 512M, 1.5GiB, 2000000000)")
        value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value <= 0:
        raise ValueError(f"memory size {text!r} must be positive")
    return value


def _size_arg(n: int) -> str:
    """A --max-memory value at or above ``n`` bytes: '3.4G' or '700M'."""
    if n >= 2**30:
        return f"{math.ceil(n / 2**30 * 10) / 10:g}G"
    return f"{math.ceil(n / 2**20)}M"


def _post_workers(blocks_per_band: int) -> int:
    from .blocks import MAX_POST_WORKERS
    from .predictors import available_cpus

    return max(1, min(available_cpus(), MAX_POST_WORKERS, blocks_per_band))


def working_bytes(height: int, width: int, spec: ModelSpec, overlay: bool = False) -> int:
    """Memory segmenting an (H, W) image needs beyond the decoded array and the loaded model."""
    from .blocks import block_grid, needs_blocks

    tiling = spec.tiling
    extra = OVERLAY_BYTES_PER_PIXEL * height * width if overlay else 0
    if not needs_blocks((height, width), spec):
        padded = max(height, tiling.tile_size) * max(width, tiling.tile_size)
        return PER_IMAGE_BYTES + FAST_BYTES_PER_PIXEL * padded + extra
    length, side = max(height, width), min(height, width)  # blocks stream along the longer axis
    canvas = (len(spec.output_channels) + 1) * 4 * (tiling.block_size + 2 * tiling.block_margin + tiling.tile_size) * side

    def block_extent(n: int) -> int:
        core = max(b - a for a, b in block_grid(n, tiling.block_size))
        return min(n, core + 2 * tiling.block_margin)

    per_block = POST_BYTES_PER_BLOCK_PIXEL_TRANSPOSED if width > height else POST_BYTES_PER_BLOCK_PIXEL
    post = _post_workers(len(block_grid(side, tiling.block_size))) * per_block * block_extent(length) * block_extent(side)
    return PER_IMAGE_BYTES + BLOCK_BYTES_PER_PIXEL * height * width + canvas + post + extra


def needed_bytes(header: ImageHeader, spec: ModelSpec, overlay: bool = False) -> int:
    """The whole estimate for one image: decoded array + decoder buffers + :func:`working_bytes`."""
    return header.decoded_bytes + working_bytes(header.height, header.width, spec, overlay)


@dataclass(frozen=True)
class MemoryBudget:
    """The most memory one image (or the images in flight together) may need, in bytes."""

    limit: int = DEFAULT_MEMORY_LIMIT

    def check(self, path: str | Path, header: ImageHeader, spec: ModelSpec, overlay: bool = False) -> int:
        """The estimate for ``path``; raises :class:`~crossct.io.ImageReadError` when it is over the limit."""
        needed = needed_bytes(header, spec, overlay)
        if needed > self.limit:
            raise ImageReadError(
                f"{path}: declared size {header.describe()} needs about {format_bytes(needed)} to segment "
                f"({format_bytes(header.decoded_bytes)} decoded + {format_bytes(needed - header.decoded_bytes)} "
                f"working memory), over the memory limit of {format_bytes(self.limit)}; refused before decoding "
                f"(possible decompression bomb). If the image is real and the memory is there: --max-memory {_size_arg(needed)}"
            )
        return needed
