"""Small charts as SVG text: histograms, bars, horizontal bars and scatters, in small multiples.

What the steps draw (load's distributions, tune's loss history and hyperparameters against the loss,
evaluate's permutation importance, monitor's training-against-batch distributions and PSI) is rectangles,
dots, a line and text. matplotlib drew tune's two figures in 1.1 s in a process that had not loaded it
(0.5 s once loaded), and load's 30 histograms in ~3 s of CPU at 1,000,000 rows, beside the trials and the
data work that need the cores; here each takes a few milliseconds. An SVG file shows in the MLflow UI's
artifact viewer and inside a card (as a data: URI). Every text comes from the data (column names, levels,
labels) and is escaped.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

BLUE, ORANGE, GREEN, RED, GREY, INK = "#4c72b0", "#dd8452", "#55a868", "#c0392b", "#8c959f", "#1b1f24"
FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"
CHAR_WIDTH = 0.6  # of the font size: a label's width, roughly, to keep it inside its panel
MARGIN = {"left": 46, "right": 12, "top": 24, "bottom": 30}
HEADROOM = 1.08  # the tallest bar ends a little under the top of its panel
ROW_HEIGHT = 20  # pixels per bar of a horizontal bar chart


@dataclass
class Series:
    """One set of values of a panel: a histogram's heights per bin, or one value per level."""

    name: str
    values: Sequence[float]
    colour: str = BLUE


@dataclass
class Panel:
    """One chart of a grid, one of four kinds:

    - a histogram: `edges` (bin edges) and `series` (heights per bin; two series overlap, half transparent);
    - bars per level: `levels` and `series` (one value per level; two series side by side);
    - horizontal bars: `rows`, (label, value, error or 0, colour) from the top down;
    - a scatter: `points`, with an optional step line `line` through its own points.
    """

    title: str
    edges: np.ndarray | None = None
    levels: list[str] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    rows: list[tuple[str, float, float, str]] = field(default_factory=list)
    points: list[tuple[float, float]] = field(default_factory=list)
    line: list[tuple[float, float]] = field(default_factory=list)
    log_x: bool = False
    x_label: str = ""
    y_label: str = ""
    legend: list[tuple[str, str, str]] = field(default_factory=list)  # (name, colour, "dot" | "line" | "box")
    note: str = ""  # shown instead of a chart, e.g. "no values"
    title_colour: str = INK

    def __post_init__(self) -> None:
        """Only finite numbers are drawn (a metric can be undefined: NaN); on a log axis, only positive x."""

        def drawable(x: float, y: float) -> bool:
            return math.isfinite(x) and math.isfinite(y) and (x > 0 or not self.log_x)

        self.points = [(x, y) for x, y in self.points if drawable(x, y)]
        self.line = [(x, y) for x, y in self.line if drawable(x, y)]
        self.rows = [
            (label, value if math.isfinite(value) else 0.0, error if math.isfinite(error) else 0.0, colour)
            for label, value, error, colour in self.rows
        ]


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About `count` round numbers (1, 2, 2.5 or 5 times a power of ten apart) from low to high."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(low / step - 1e-9)
    digits = max(0, 3 - math.floor(math.log10(step)))  # what the step needs, and no float noise (0.30000000000000004)
    return [round((first + i) * step, digits) for i in range(math.floor(high / step + 1e-9) - first + 1)]


def tick_label(value: float) -> str:
    """A short label: 0, 0.25, 1,500, 3e+06, 1e-05."""
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1e6 or magnitude < 1e-3:
        return f"{value:.2g}"
    if magnitude >= 1e3:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def fitted(text: str, width: float, size: float) -> str:
    """`text` cut (with an ellipsis) to what fits `width` pixels at font size `size`."""
    room = max(1, int(width / (size * CHAR_WIDTH)))
    return text if len(text) <= room else text[: max(1, room - 1)] + "…"


# Characters XML does not allow (a level may hold any): one of them would make the whole file unreadable.
NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(
    x: float, y: float, text: str, size: float = 10, anchor: str = "middle", extra: str = "", colour: str = INK
) -> str:
    shown = html.escape(NOT_IN_XML.sub("\ufffd", text))
    where = f'x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{colour}"'
    return f"<text {where}{extra}>{shown}</text>"


def _rect(x: float, y: float, width: float, height: float, colour: str, opacity: float = 1.0) -> str:
    shade = f' fill-opacity="{opacity}"' if opacity < 1 else ""
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(width, 0.5):.1f}" height="{max(height, 0):.1f}" '
        f'fill="{colour}"{shade}/>'
    )


class _Scale:
    """Data to pixels along one axis (linear, or log10 for positive values)."""

    def __init__(
        self, low: float, high: float, start: float, end: float, log: bool = False, counts: bool = False
    ) -> None:
        self.log, self.counts = log, counts
        low, high = (math.log10(low), math.log10(high)) if log else (low, high)
        if high <= low:
            low, high = low - 0.5, high + 0.5
        self.low, self.high, self.start, self.end = low, high, start, end

    def __call__(self, value: float) -> float:
        value = math.log10(value) if self.log else value
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)

    def ticks(self) -> list[float]:
        if self.log:
            return [10.0**p for p in range(math.ceil(self.low - 1e-9), math.floor(self.high + 1e-9) + 1)]
        ticks = nice_ticks(self.low, self.high)
        return [t for t in ticks if t == int(t)] if self.counts else ticks


def _tallest(series: list[Series]) -> float:
    return max((float(max(s.values, default=0)) for s in series), default=0.0) or 1.0


@dataclass
class _Box:
    """Where a panel's plot area lies (pixels): its axes and their scales once drawn."""

    x0: float
    y0: float
    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float
    xs: _Scale | None = None
    ys: _Scale | None = None


def _panel(panel: Panel, x0: float, y0: float, width: float, height: float) -> list[str]:
    """The SVG elements of one panel whose top left corner is (x0, y0)."""
    title = fitted(panel.title, width - 8, 11)
    parts = [_text(x0 + width / 2, y0 + 14, title, 11, extra=' font-weight="600"', colour=panel.title_colour)]
    if panel.note or not (panel.edges is not None or panel.levels or panel.rows or panel.points or panel.line):
        return [*parts, _text(x0 + width / 2, y0 + height / 2, panel.note or "no values", 10, extra=_FAINT)]
    left = x0 + MARGIN["left"]
    if panel.rows:  # room for the row labels, up to a third of the panel
        longest = max(len(label) for label, *_ in panel.rows)
        left = x0 + min(width / 3, 10 + longest * 9 * CHAR_WIDTH)
    bottom = y0 + height - MARGIN["bottom"] - (16 if panel.levels else 0)
    box = _Box(x0, y0, width, height, left, x0 + width - MARGIN["right"], y0 + MARGIN["top"], bottom)
    if panel.edges is not None:
        parts += _histogram(panel, box)
    elif panel.levels:
        parts += _level_bars(panel, box)
    elif panel.rows:
        parts += _row_bars(panel, box)
    else:
        parts += _scatter(panel, box)
    return parts + _axes(panel, box)


_FAINT = ' fill-opacity="0.6"'


def _is_counts(panel: Panel) -> bool:
    return all(float(v).is_integer() for s in panel.series for v in s.values)


def _histogram(panel: Panel, box: _Box) -> list[str]:
    edges, parts = panel.edges, []
    box.xs = _Scale(float(edges[0]), float(edges[-1]), box.left, box.right)
    box.ys = _Scale(0.0, _tallest(panel.series) * HEADROOM, box.bottom, box.top, counts=_is_counts(panel))
    opacity = 1.0 if len(panel.series) == 1 else 0.55  # two series overlap
    for series in panel.series:
        for lo, hi, value in zip(edges[:-1], edges[1:], series.values, strict=True):
            if value:
                x, y = box.xs(lo), box.ys(value)
                parts.append(_rect(x, y, box.xs(hi) - x - 0.5, box.bottom - y, series.colour, opacity))
    return parts


def _level_bars(panel: Panel, box: _Box) -> list[str]:
    parts = []
    box.ys = _Scale(0.0, _tallest(panel.series) * HEADROOM, box.bottom, box.top, counts=_is_counts(panel))
    slot = (box.right - box.left) / len(panel.levels)
    bar = slot * 0.8 / max(1, len(panel.series))  # the series side by side
    for index, level in enumerate(panel.levels):
        x = box.left + index * slot + slot * 0.1
        for number, series in enumerate(panel.series):
            y = box.ys(series.values[index])
            parts.append(_rect(x + number * bar, y, bar, box.bottom - y, series.colour))
        cx, ty = x + slot * 0.4, box.bottom + 10
        parts.append(_text(cx, ty, fitted(level, 40, 8), 8, "end", f' transform="rotate(-40 {cx:.1f} {ty:.1f})"'))
    return parts


def _row_bars(panel: Panel, box: _Box) -> list[str]:
    parts = []
    ends = [v + e for _, v, e, _ in panel.rows] + [v - e for _, v, e, _ in panel.rows] + [0.0]
    box.xs = xs = _Scale(min(ends), max(ends) * (HEADROOM if max(ends) > 0 else 1), box.left, box.right)
    step = (box.bottom - box.top) / len(panel.rows)
    for index, (label, value, error, colour) in enumerate(panel.rows):
        y, zero = box.top + index * step, xs(0.0)
        parts.append(_rect(min(zero, xs(value)), y + step * 0.15, abs(xs(value) - zero), step * 0.7, colour))
        if error:
            parts.append(
                f'<path d="M{xs(value - error):.1f},{y + step / 2:.1f}H{xs(value + error):.1f}" stroke="{INK}"/>'
            )
        parts.append(_text(box.left - 4, y + step / 2 + 3, fitted(label, box.left - box.x0 - 8, 9), 9, "end"))
    parts.append(f'<path d="M{xs(0.0):.1f},{box.top}V{box.bottom}" stroke="{GREY}"/>')
    return parts


def _scatter(panel: Panel, box: _Box) -> list[str]:
    parts = []
    every = panel.points + panel.line
    x_values, y_values = [p[0] for p in every], [p[1] for p in every]
    box.xs = xs = _Scale(min(x_values), max(x_values), box.left + 6, box.right - 6, panel.log_x)
    box.ys = ys = _Scale(min(y_values), max(y_values), box.bottom - 6, box.top + 6)
    for x, y in panel.points:
        parts.append(f'<circle cx="{xs(x):.1f}" cy="{ys(y):.1f}" r="3" fill="{BLUE}" fill-opacity="0.8"/>')
    if panel.line:
        path = [f"M{xs(panel.line[0][0]):.1f},{ys(panel.line[0][1]):.1f}"]
        for (_, y_before), (x, y) in zip(panel.line, panel.line[1:], strict=False):
            path.append(f"H{xs(x):.1f}V{ys(y):.1f}" if y != y_before else f"H{xs(x):.1f}")
        parts.append(f'<path d="{"".join(path)}" fill="none" stroke="{RED}" stroke-width="1.5"/>')
    return parts


def _axes(panel: Panel, box: _Box) -> list[str]:
    """Ticks and their labels on the axes that have a scale, the axis lines, the legend and the axis labels."""
    parts = []
    for tick in box.xs.ticks() if box.xs else []:
        x = box.xs(tick)
        if box.left - 0.5 <= x <= box.right + 0.5:
            parts.append(f'<path d="M{x:.1f},{box.bottom}v4" stroke="{GREY}"/>')
            parts.append(_text(x, box.bottom + 14, tick_label(tick), 8))
    for tick in box.ys.ticks() if box.ys else []:
        y = box.ys(tick)
        if box.top - 0.5 <= y <= box.bottom + 0.5:
            parts.append(f'<path d="M{box.left - 4},{y:.1f}h4" stroke="{GREY}"/>')
            parts.append(_text(box.left - 6, y + 3, tick_label(tick), 8, "end"))
    corner = f"M{box.left},{box.top}V{box.bottom}" if box.ys else f"M{box.left},{box.bottom}"
    parts.append(f'<path d="{corner}H{box.right}" fill="none" stroke="{GREY}"/>')
    for index, (name, colour, mark) in enumerate(panel.legend):
        x, y = box.right - 110, box.top + 4 + 14 * index
        if mark == "line":
            parts.append(f'<path d="M{x - 6:.1f},{y:.1f}h12" stroke="{colour}" stroke-width="1.5"/>')
        elif mark == "dot":
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
        else:
            parts.append(_rect(x - 5, y - 5, 10, 10, colour))
        parts.append(_text(x + 8, y + 3, name, 9, "start"))
    if panel.x_label:
        parts.append(_text((box.left + box.right) / 2, box.y0 + box.height - 4, panel.x_label, 9))
    if panel.y_label:
        x, cy = box.x0 + 10, (box.top + box.bottom) / 2
        parts.append(_text(x, cy, panel.y_label, 9, extra=f' transform="rotate(-90 {x} {cy:.1f})"'))
    return parts


def grid_svg(panels: Sequence[Panel], columns: int, panel_size: tuple[int, int], caption: str = "") -> str:
    """The panels in rows of `columns`, each `panel_size` (width, height) pixels, under an optional caption."""
    columns = max(1, min(columns, len(panels)))
    width, height = panel_size
    head = 20 if caption else 0
    total_width, total_height = columns * width, head + math.ceil(len(panels) / columns) * height
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_width}" height="{total_height}" '
        f'viewBox="0 0 {total_width} {total_height}" font-family="{FONT}" role="img">',
        f'<rect width="{total_width}" height="{total_height}" fill="#ffffff"/>',
    ]
    if caption:
        parts.append(_text(total_width / 2, 14, caption, 10, extra=' fill-opacity="0.75"'))
    for index, panel in enumerate(panels):
        row, column = divmod(index, columns)
        parts += _panel(panel, column * width, head + row * height, width, height)
    parts.append("</svg>")
    return "\n".join(parts)


def bar_rows_svg(panel: Panel, width: int = 640) -> str:
    """One horizontal bar chart, as tall as its rows need."""
    return grid_svg([panel], columns=1, panel_size=(width, ROW_HEIGHT * len(panel.rows) + 70))


def bin_edges(values: np.ndarray, bins: int = 20) -> np.ndarray | None:
    """`bins` equal bins over the finite values; None when there are none, or when floats cannot split their range
    (e.g. 1e15 and 1e15 + 2: numpy refuses)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    try:
        return np.histogram_bin_edges(finite, bins)
    except ValueError:
        return None


def histogram_panel(title: str, values: np.ndarray, bins: int = 20) -> Panel:
    """A histogram of the finite values (a note when there is nothing to bin)."""
    edges = bin_edges(values, bins)
    if edges is None:
        return Panel(title, note="no values to bin")
    counts, _ = np.histogram(values[np.isfinite(values)], edges)
    return Panel(title, edges=edges, series=[Series("rows", counts.tolist())])


def level_panel(title: str, counts: dict[str, int]) -> Panel:
    """Bars of the given levels' counts."""
    return Panel(title, levels=list(counts), series=[Series("rows", list(counts.values()), GREEN)])
