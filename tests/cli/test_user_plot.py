"""The terminal plotter (cli/user/plot.py), read back dot by dot: a falling loss draws a curve that starts at the
top left and ends at the bottom right, joined without gaps, with the range on the axis."""

from __future__ import annotations

import math

from cli.user.plot import BRAILLE, DOT_BITS, plot


def dots(lines: list[str]) -> set[tuple[int, int]]:
    """The (x, y) pixels set in the braille part of the chart's lines (y from the top)."""
    found = set()
    for row, line in enumerate(lines):
        cells = [c for c in line if BRAILLE <= ord(c) <= BRAILLE + 0xFF]
        for col, cell in enumerate(cells):
            bits = ord(cell) - BRAILLE
            found |= {(2 * col + dx, 4 * row + dy) for (dx, dy), bit in DOT_BITS.items() if bits & bit}
    return found


def chart_rows(lines: list[str]) -> list[str]:
    return [line for line in lines if "┤" in line]


def test_falling_losses_draw_a_falling_curve() -> None:
    losses = [(step, 2.5 * math.exp(-step / 15) + 0.2) for step in range(1, 61)]
    lines = plot(losses, width=40, height=10, title="loss")
    pixels = dots(chart_rows(lines))
    columns = sorted({x for x, _ in pixels})
    assert columns == list(range(80)), "every column of the chart has a dot: the curve is joined"
    top_of = {x: min(y for px, y in pixels if px == x) for x in columns}
    assert top_of[0] == 0 and max(y for _, y in pixels) == 39, "it spans the chart from top to bottom"
    assert top_of[0] < top_of[20] < top_of[40] < top_of[79], "it falls from left to right"
    labels = [row.split("┤")[0].strip() for row in chart_rows(lines)]
    assert (labels[0], labels[-1]) == (f"{losses[0][1]:.4g}", f"{losses[-1][1]:.4g}"), "the y axis shows the range"
    assert lines[-1].split() == ["step", "1", "60"]


def test_a_rising_curve_is_the_mirror() -> None:
    pixels = dots(chart_rows(plot([(s, float(s)) for s in range(10)], width=10, height=5)))
    assert (0, 19) in pixels and (19, 0) in pixels


def test_no_finite_point_says_so_and_one_point_is_a_dot() -> None:
    assert plot([(1, math.nan)], title="loss") == ["loss: no points to plot"]
    assert len(dots(chart_rows(plot([(3, 1.0)], width=5, height=2)))) == 1
