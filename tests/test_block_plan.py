"""The block plan's rules on small hand-made cases with known answers."""

import numpy as np

from crossct.block_plan import BlockPlan, cells_kept_by, paste, survivors
from crossct.config import TilingConfig


def test_plan_geometry():
    plan = BlockPlan(300, 500, TilingConfig(tile_size=64, overlap=0.25, block_size=200, block_margin=20))
    assert plan.transposed and (plan.length, plan.side) == (500, 300)
    assert plan.bands == [(0, 167), (167, 333), (333, 500)] and plan.columns == [(0, 150), (150, 300)]
    assert [b.extent for b in plan.blocks[:3]] == [(0, 187, 0, 170), (0, 187, 130, 300), (147, 353, 0, 170)]
    # Tile rows 0..k start every <= 48 px; the ones covering rows [147, 353) are exactly those overlapping it.
    starts = plan.row_starts
    covering = plan.tile_rows(147, 353)
    assert all(starts[r] < 353 and starts[r] + 64 > 147 for r in covering)
    assert all(not (s < 353 and s + 64 > 147) for r, s in enumerate(starts) if r not in covering)
    third = plan.blocks[2]  # band 1, column 0
    assert [b.order for b in plan.earlier_overlapping(third)] == [0, 1]
    assert [b.order for b in plan.writers(third.core)] == [0, 1, 2, 3, 4, 5]


def test_a_block_keeps_the_cells_whose_centroid_is_in_its_core():
    local = np.zeros((10, 10), np.int32)
    local[0:4, 0:4] = 5  # centroid (1.5, 1.5) + origin (20, 30) -> (21.5, 31.5): in the core
    local[6:10, 6:10] = 2  # centroid (27.5, 37.5): outside
    local[3:9, 0:2] = 7  # centroid (25.5, 30.5): in the core, numbered after label 5
    kept, k = cells_kept_by(local, core=(20, 26, 30, 36), origin=(20, 30))
    assert k == 2 and kept.dtype == np.uint32
    assert (kept[local == 5] == 1).all() and (kept[local == 7] == 2).all() and (kept[local == 2] == 0).all()


def test_survivors_are_the_kept_cells_with_an_unclaimed_pixel_numbered_in_order():
    kept = np.array([[1, 1, 2, 2, 3, 3]], np.uint32)
    claimed = np.array([[True, False, True, True, False, False]])
    table, n = survivors(kept, 3, claimed)
    assert table.tolist() == [0, 1, 0, 2] and n == 2  # cell 2 lost every pixel to earlier blocks


def test_paste_keeps_what_earlier_blocks_gave_and_numbers_on():
    region = np.array([[9, 0, 0, 0, 0, 0]], np.uint32)
    kept = np.array([[1, 1, 2, 2, 3, 3]], np.uint32)
    paste(region, kept, np.array([0, 1, 0, 2], np.uint32), offset=10)
    assert region.tolist() == [[9, 11, 0, 0, 12, 12]]
