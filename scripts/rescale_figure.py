"""Draw the rescaling table of ``benchmarks.bench_rescale`` as a PNG: F1 against the rescale factor.

From the repository root::

    python -m benchmarks.bench_rescale --weights weights > rescale.md
    python scripts/rescale_figure.py rescale.md docs/rescale.png

Two panels, the image's own scale and the automatic cell size, one line per image (its row label,
e.g. ``dsb_07fb37aafa662660 (21 px)``), the factor on a logarithmic axis.  Pillow only, so that
the figure needs nothing beyond the inference requirements.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))
MODES = ("own scale", "automatic size")


def read_table(text: str) -> tuple[list[float], dict[str, dict[str, list[float]]]]:
    """The scales and ``{mode: {image: [F1 per scale]}}`` of a ``bench_rescale`` markdown table."""
    scales: list[float] = []
    rows: dict[str, dict[str, list[float]]] = {mode: {} for mode in MODES}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3:
            continue
        if cells[0].startswith("image"):
            scales = [float(c.rstrip("x")) for c in cells[2:-1]]
        elif cells[1] in rows and scales:
            rows[cells[1]][cells[0]] = [float(c) for c in cells[2:2 + len(scales)]]
    if not scales or not any(rows.values()):
        raise ValueError("no bench_rescale table found (expected a '| image ... | mode | 0.25x | ...' header)")
    return scales, rows


def draw_figure(scales: list[float], rows: dict[str, dict[str, list[float]]], title: str) -> Image.Image:
    """Two panels (own scale, automatic size) of F1 against the rescale factor, (H, W) RGB."""
    panel_w, panel_h, left, top, bottom, gap = 330, 230, 62, 44, 40, 24
    legend_h = 18 * len(next(iter(rows.values())))
    width, height = left + 2 * panel_w + gap + 16, top + panel_h + bottom + legend_h + 8
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    small = ImageFont.load_default(size=11)
    draw.text((left, 6), title, fill="black", font=font)
    lo, hi = math.log2(min(scales)), math.log2(max(scales))
    names = list(next(iter(rows.values())))
    for p, mode in enumerate(MODES):
        x0, y0 = left + p * (panel_w + gap), top
        def to_xy(scale: float, f1: float) -> tuple[float, float]:
            return (x0 + (math.log2(scale) - lo) / (hi - lo) * panel_w, y0 + (1 - f1) * panel_h)
        draw.text((x0, y0 - 18), mode, fill="black", font=font)
        for f1 in (0, 0.25, 0.5, 0.75, 1):
            y = to_xy(1, f1)[1]
            draw.line([(x0, y), (x0 + panel_w, y)], fill=(225, 225, 225))
            if p == 0:
                draw.text((x0 - 8, y), f"{f1:g}", fill="black", font=small, anchor="rm")
        for scale in scales:
            x = to_xy(scale, 0)[0]
            draw.line([(x, y0), (x, y0 + panel_h)], fill=(150, 150, 150) if scale == 1 else (235, 235, 235))
            draw.text((x, y0 + panel_h + 6), f"{scale:g}x", fill="black", font=small, anchor="ma")
        draw.rectangle([x0, y0, x0 + panel_w, y0 + panel_h], outline="black")
        for i, name in enumerate(names):
            points = [to_xy(s, f) for s, f in zip(scales, rows[mode][name])]
            colour = COLOURS[i % len(COLOURS)]
            draw.line(points, fill=colour, width=2, joint="curve")
            for x, y in points:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    draw.text((6, top + panel_h // 2), "F1", fill="black", font=font, anchor="lm")
    draw.text((left + panel_w + gap // 2, top + panel_h + 22), "rescale factor of the image", fill="black", font=small,
              anchor="ma")
    for i, name in enumerate(names):
        y = top + panel_h + bottom + 4 + 18 * i
        colour = COLOURS[i % len(COLOURS)]
        draw.line([(left, y + 7), (left + 24, y + 7)], fill=colour, width=2)
        draw.text((left + 32, y), name, fill="black", font=small)
    return image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("table", type=Path, help="bench_rescale's output (markdown), '-' for stdin")
    p.add_argument("out", type=Path, help="PNG to write")
    p.add_argument("--title", default="F1 at IoU 0.5 of val images rescaled (shipped weights)")
    args = p.parse_args(argv)
    text = sys.stdin.read() if str(args.table) == "-" else args.table.read_text()
    try:
        scales, rows = read_table(text)
    except ValueError as err:
        print(f"error: {args.table}: {err}", file=sys.stderr)
        return 2
    draw_figure(scales, rows, args.title).save(args.out, optimize=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
