"""benchmarks.val_halves: a difference between two rows on the whole val split and on two halves."""

from __future__ import annotations

import pytest

from benchmarks.val_halves import halves, main, summary


def _csv(tmp_path):
    rows = ["method,source,name,f1"]
    # Source a: 4 images, source b: 1 image. Model B gains 0.2 on a's first and third images only.
    for method, gain in (("A", 0.0), ("B", 0.2)):
        for i, f1 in enumerate((0.5, 0.6, 0.7, 0.8)):
            rows.append(f"{method},a,a{i},{f1 + (gain if i % 2 == 0 else 0.0):.6f}")
        rows.append(f"{method},b,b0,0.9")
    path = tmp_path / "val.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_halves_alternate_within_each_source():
    scores = [("a", "a0", 0.1), ("b", "b0", 0.2), ("a", "a1", 0.3), ("a", "a2", 0.4)]
    first, second = halves(scores)
    assert [n for _, n, _ in first] == ["a0", "b0", "a2"] and [n for _, n, _ in second] == ["a1"]
    assert summary(first) == pytest.approx((0.7 / 3, ((0.1 + 0.4) / 2 + 0.2) / 2, 2))


def test_difference_on_the_whole_split_and_each_half(tmp_path, capsys):
    assert main([str(_csv(tmp_path)), "--baseline", "A"]) == 0
    out = capsys.readouterr().out
    # Whole: +0.4 over 5 images = +0.08; over sources: a +0.1, b 0 -> +0.05.
    # First half (a0, a2, b0): +0.4 / 3 = +0.1333; sources a +0.2, b 0 -> +0.1. Second half (a1, a3): 0.
    assert "| B | +0.0800 / +0.0500 (5, 2) | +0.1333 / +0.1000 (3, 2) | +0.0000 / +0.0000 (2, 1) |" in out


def test_unknown_row_is_a_clear_error(tmp_path, capsys):
    assert main([str(_csv(tmp_path)), "--baseline", "C"]) == 2
    assert "no rows ['C']" in capsys.readouterr().err
