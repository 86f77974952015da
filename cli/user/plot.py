"""A line chart in the terminal from Unicode braille characters (no dependency): each character cell holds 2 × 4
dots, so a chart of W × H cells has 2W × 4H points of resolution. Consecutive points are joined by lines."""

from __future__ import annotations

import math
from collections.abc import Sequence

BRAILLE = 0x2800
# The bit of each dot of a cell, by (column 0-1, row 0-3), rows from the top.
DOT_BITS = {(0, 0): 0x01, (0, 1): 0x02, (0, 2): 0x04, (0, 3): 0x40,
            (1, 0): 0x08, (1, 1): 0x10, (1, 2): 0x20, (1, 3): 0x80}


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height  # in cells
        self.cells = [[0] * width for _ in range(height)]

    def dot(self, x: int, y: int) -> None:
        """Set the dot at pixel (x, y), y from the top; outside the canvas, nothing."""
        if 0 <= x < 2 * self.width and 0 <= y < 4 * self.height:
            self.cells[y // 4][x // 2] |= DOT_BITS[(x % 2, y % 4)]

    def line(self, x0: int, y0: int, x1: int, y1: int) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            self.dot(round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps))

    def rows(self) -> list[str]:
        return ["".join(chr(BRAILLE + bits) for bits in row) for row in self.cells]


def _label(value: float) -> str:
    return f"{value:.4g}"


def plot(points: Sequence[tuple[float, float]], *, width: int = 60, height: int = 12, title: str = "") -> list[str]:
    """The chart of (x, y) points (x ascending; NaN and infinite y are left out) as lines of text: y labels on the
    left, the x range below. Fewer than one finite point gives one line saying so."""
    finite = [(float(x), float(y)) for x, y in points if math.isfinite(y)]
    if not finite:
        return [f"{title}: no points to plot" if title else "no points to plot"]
    xs, ys = [x for x, _ in finite], [y for _, y in finite]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    if y_hi == y_lo:  # a flat series: give it a band to sit in the middle of
        y_lo, y_hi = y_lo - 0.5 * (abs(y_lo) or 1), y_hi + 0.5 * (abs(y_hi) or 1)
    canvas = Canvas(width, height)
    px_w, px_h = 2 * width - 1, 4 * height - 1

    def pixel(x: float, y: float) -> tuple[int, int]:
        col = 0 if x_hi == x_lo else round((x - x_lo) / (x_hi - x_lo) * px_w)
        return col, round((y_hi - y) / (y_hi - y_lo) * px_h)

    pixels = [pixel(x, y) for x, y in finite]
    if len(pixels) == 1:
        canvas.dot(*pixels[0])
    for (a, b), (c, d) in zip(pixels, pixels[1:], strict=False):
        canvas.line(a, b, c, d)
    labels = {0: _label(y_hi), height - 1: _label(y_lo), (height - 1) // 2: _label((y_hi + y_lo) / 2)}
    pad = max(len(text) for text in labels.values())
    lines = [title] if title else []
    lines += [f"{labels.get(i, ''):>{pad}} ┤{row}" for i, row in enumerate(canvas.rows())]
    lines.append(" " * pad + " └" + "─" * width)
    left, right = f"step {x_lo:g}", f"{x_hi:g}"
    lines.append(" " * (pad + 2) + left + " " * max(1, width - len(left) - len(right)) + right)
    return lines
