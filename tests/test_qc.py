"""crossct.qc: thumbnails with outlines, the unusual images first, one PNG for the batch."""

from __future__ import annotations

import numpy as np
import pytest

from crossct.io import read_image
from crossct.qc import (CAPTION, FLAG_Z, MARGIN, QCEntry, contact_sheet, failed_entry, qc_entry, unusualness,
                        write_contact_sheet)
from crossct.synthetic import synthetic_cells

TITLE = 28
RED = (150, 20, 20)


def entry(name: str, cells: int, area: float) -> QCEntry:
    return QCEntry(name, np.zeros((16, 16, 3), np.uint8), cells, area)


def test_unusual_counts_and_sizes_first():
    entries = [entry("a", 40, 100), entry("b", 42, 110), entry("c", 400, 105), entry("d", 41, 95),
               entry("e", 39, 900), entry("f", 40, 102), failed_entry("g", "corrupt")]
    scores = unusualness(entries)
    assert np.isinf(scores[6])  # failed: first of all
    assert scores[2] > FLAG_Z and scores[4] > FLAG_Z  # ten times the cells / nine times the area
    assert all(scores[i] < 1 for i in (0, 1, 3, 5))
    order = np.argsort(-scores, kind="stable")
    assert [entries[i].name for i in order[:3]] == ["g", "c", "e"]  # log(401/41.5) > log(901/103)


def test_small_batches_and_identical_images_flag_nothing():
    assert unusualness([entry("a", 5, 10), entry("b", 500, 10)]).tolist() == [0, 0]  # too few to judge
    same = [entry(str(i), 30, 200) for i in range(5)] + [entry("x", 32, 205)]
    assert unusualness(same).max() < FLAG_Z  # a 6 % difference is not flagged (spread floor)


def test_thumbnail_keeps_aspect_and_draws_outlines():
    image, labels = synthetic_cells(300, 150, seed=2)
    e = qc_entry("x.png", image, labels, size=100)
    assert e.thumbnail.shape == (100, 50, 3) and e.thumbnail.dtype == np.uint8
    assert e.cells == len(np.unique(labels)) - 1
    assert e.median_area == float(np.median(np.bincount(labels.ravel())[1:]))
    orange = (e.thumbnail == (255, 64, 0)).all(axis=-1)
    assert orange.any()
    empty = qc_entry("y.png", image, np.zeros_like(labels), size=100)
    assert not (empty.thumbnail == (255, 64, 0)).all(axis=-1).any()
    assert (empty.cells, empty.median_area) == (0, 0.0)
    small = qc_entry("z.png", image[:20, :30], labels[:20, :30], size=100)  # never enlarged
    assert small.thumbnail.shape == (20, 30, 3)


def test_sheet_layout_and_file(tmp_path):
    entries = [entry(f"img{i}", 40 + i % 3, 100) for i in range(7)] + [failed_entry("bad.png", "corrupt")]
    sheet = contact_sheet(entries, size=16)
    tile_w, tile_h = 16 + 2 * MARGIN, 16 + CAPTION + 2 * MARGIN
    assert sheet.shape == (TITLE + 3 * tile_h, 760, 3)  # 8 entries: 3 columns, 3 rows (min width 760)
    first, second = sheet[TITLE + 1, 1], sheet[TITLE + 1, tile_w + 1]
    assert tuple(first) == RED and tuple(second) != RED  # the failed image first, framed red
    path = write_contact_sheet(tmp_path / "qc.png", entries, size=16)
    np.testing.assert_array_equal(read_image(path), sheet)


def test_empty_batch_gives_a_title_only_sheet():
    sheet = contact_sheet([], size=16)
    assert sheet.shape[0] >= TITLE and sheet.dtype == np.uint8


@pytest.mark.parametrize("shape", [(64, 64, 4), (64, 64, 1), (64, 64)])
def test_any_channel_count(shape):
    image = np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)
    labels = np.zeros((64, 64), np.int32)
    labels[10:20, 10:20] = 1
    assert qc_entry("x", image, labels, size=32).thumbnail.shape == (32, 32, 3)
