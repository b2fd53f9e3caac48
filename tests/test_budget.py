"""crossct.budget: the memory one image will need, known from its header, against one limit."""

from __future__ import annotations

import numpy as np
import pytest

from crossct.budget import DEFAULT_MEMORY_LIMIT, MemoryBudget, needed_bytes, parse_memory, working_bytes
from crossct.config import ModelSpec
from crossct.io import ImageHeader, ImageReadError


@pytest.mark.parametrize("text, expected", [("3G", 3 * 2**30), ("3GB", 3 * 2**30), ("3GiB", 3 * 2**30),
                                            ("1.5g", 1536 * 2**20), ("512M", 512 * 2**20), ("100", 100),
                                            (" 2 t ", 2 * 2**40)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "3X", "-1G", "0", ""])
def test_parse_memory_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError, match="memory size"):
        parse_memory(text)


def header(h: int, w: int, channels: int = 1, dtype=np.uint8) -> ImageHeader:
    return ImageHeader("tiff", h, w, channels, np.dtype(dtype))


def test_default_takes_a_100_megapixel_slide_and_refuses_the_issues_bombs():
    spec, budget = ModelSpec(), MemoryBudget()
    assert budget.limit == DEFAULT_MEMORY_LIMIT == 3 * 2**30
    for ok in (header(10_000, 10_000, 3), header(2_560, 2_560, 3, np.float32), header(3_000, 40_000)):
        budget.check("ok.tif", ok, spec)
    for bomb in (header(30_000, 30_000, 3), header(46_000, 46_000, 3), header(20_000, 20_000, 4, np.uint16)):
        with pytest.raises(ImageReadError, match="over the memory limit of 3.0 GiB"):
            budget.check("bomb.tif", bomb, spec)


def test_estimate_grows_with_every_dimension_of_the_decoded_array():
    spec = ModelSpec()
    base = needed_bytes(header(1000, 1000), spec)
    assert needed_bytes(header(1000, 1000, 3), spec) - base == 2 * 10**6
    assert needed_bytes(header(1000, 1000, 1, np.float64), spec) - base == 7 * 10**6
    assert needed_bytes(ImageHeader("tiff", 1000, 1000, 1, np.dtype(np.uint8), 5 * 10**6), spec) - base == 5 * 10**6
    assert needed_bytes(header(1000, 1000), spec, overlay=True) > base
    # the block path streams along the longer axis: a wide strip costs about what the tall one does
    tall, wide = working_bytes(20_000, 3_000, spec), working_bytes(3_000, 20_000, spec)
    assert 0.8 < tall / wide < 1.25
    # an image just over the fast path costs less than four times one just under it
    limit = spec.tiling.block_size + 2 * spec.tiling.block_margin
    assert working_bytes(limit + 1, limit + 1, spec) < 4 * working_bytes(limit, limit, spec)


def test_refusal_names_the_file_the_numbers_and_the_way_out():
    with pytest.raises(ImageReadError) as info:
        MemoryBudget(2**30).check("/data/slide.tif", header(20_000, 20_000, 3), ModelSpec())
    message = str(info.value)
    assert message.startswith("/data/slide.tif: declared size 20000x20000 (3 channels, uint8, TIFF) needs about ")
    assert "over the memory limit of 1.0 GiB; refused before decoding" in message
    needed = needed_bytes(header(20_000, 20_000, 3), ModelSpec())
    suggested = float(message.rsplit("--max-memory ", 1)[1].rstrip("G")) * 2**30
    assert needed <= suggested < needed * 1.1 + 2**30 / 10
