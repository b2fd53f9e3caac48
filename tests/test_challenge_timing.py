"""The challenge's own timing rule, checked in CI: one process per image, wall time around it,
and no image's rank running time (time above its tolerance) may exceed zero.

Uses the shipped weights when present (what users run), else the tiny test model.
"""

import sys
from pathlib import Path

import pytest

from crossct.synthetic import synthetic_cells
from evaluate.timing import time_command, timing_totals

REPO = Path(__file__).resolve().parent.parent
# 0.25, 1 and 4 megapixels, with a non-square one among them.
SIZES = [(500, 500), (1000, 1000), (1600, 2500)]


@pytest.mark.slow
def test_no_image_exceeds_its_time_tolerance(tmp_path, tiny_weights):
    import cv2

    shipped = REPO / "weights"
    weights = shipped if (shipped / "model.json").is_file() else tiny_weights
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate(SIZES):
        image, _ = synthetic_cells(h, w, seed=i)
        cv2.imwrite(str(images / f"cell_{i:05d}.png"), image)
    rows = time_command(images, tmp_path / "out",
                        [sys.executable, str(REPO / "predict.py"), "-i", "{in}", "-o", "{out}", "-w", str(weights), "-q"],
                        timeout=600)
    table = "\n".join(f"{r['image']} {r['height']}x{r['width']}: {r['real_time_s']:.2f} s "
                      f"(tolerance {r['tolerance_s']:.0f} s, rank {r['rank_time_s']:.2f} s, {r['status']})" for r in rows)
    print(f"weights: {weights}\n{table}")
    assert all(r["status"] == "ok" for r in rows), table
    assert timing_totals(rows)["rank_time_s"] == 0.0, table
