"""crossct.overlay: outlines that can be seen on any background, drawn band by band like the whole."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import cells_image, two_touching_disks

from crossct import overlay
from crossct.normalize import normalize_image
from crossct.overlay import OUTLINE_CORE_RGB, OUTLINE_EDGE_RGB, draw_outlines, overlay_image


def luminance(rgb) -> float:
    """WCAG relative luminance of an sRGB colour."""
    c = np.asarray(rgb, np.float64) / 255
    c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(c @ [0.2126, 0.7152, 0.0722])


def contrast(a, b) -> float:
    la, lb = sorted((luminance(a), luminance(b)))
    return (lb + 0.05) / (la + 0.05)


BACKGROUNDS = {
    "black (fluorescence)": (0, 0, 0),
    "white (brightfield)": (255, 255, 255),
    "H&E pink": (232, 160, 200),
    "H&E purple": (120, 60, 140),
    "orange": (255, 64, 0),
    "yellow": (255, 255, 0),
    "mid gray": (128, 128, 128),
}


@pytest.mark.parametrize("background", BACKGROUNDS.values(), ids=BACKGROUNDS.keys())
def test_outlines_stand_out_on_any_background(background):
    """Around every cell, one of the two tones has at least the WCAG contrast asked of large text (3:1)
    against the background; a single outline colour fails this on some background."""
    labels = two_touching_disks()
    rgb = np.empty(labels.shape + (3,), np.uint8)
    rgb[:] = background
    drawn = draw_outlines(rgb, labels)
    colours = {tuple(c) for c in drawn.reshape(-1, 3)} - {tuple(background)}
    assert colours <= {OUTLINE_CORE_RGB, OUTLINE_EDGE_RGB}
    assert max(contrast(c, background) for c in colours) >= 3, colours
    for value in (1, 2):  # both cells are outlined all round in the core colour, edged on both sides
        cell = labels == value
        border = cell & (drawn == OUTLINE_CORE_RGB).all(axis=2)
        assert border.sum() > 20
    assert ((drawn == OUTLINE_EDGE_RGB).all(axis=2) & (labels == 0)).any()  # outside the cells
    assert ((drawn == OUTLINE_EDGE_RGB).all(axis=2) & (labels > 0)).any()  # and inside


def test_one_colour_would_vanish():
    """Why two tones: the previous orange outline has contrast under 2:1 on H&E pink."""
    assert contrast((255, 64, 0), BACKGROUNDS["H&E pink"]) < 2
    assert min(max(contrast(OUTLINE_CORE_RGB, b), contrast(OUTLINE_EDGE_RGB, b)) for b in BACKGROUNDS.values()) >= 4.5  # WCAG AA, body text


def test_bands_give_the_same_picture_as_one_piece(monkeypatch):
    image = np.dstack([cells_image(150, 90, seed=s) for s in range(3)])
    labels = np.zeros((150, 90), np.int32)
    labels[10:60, 10:50], labels[58:120, 20:80], labels[119:150, 0:30] = 1, 2, 3  # across band edges
    whole = draw_outlines((normalize_image(image) * 255).astype(np.uint8), labels)
    monkeypatch.setattr(overlay, "BAND_ROWS", 17)
    banded = overlay_image(image, labels)
    np.testing.assert_array_equal(banded, whole)
    assert image.shape == (150, 90, 3)  # the argument is not modified
