"""SVG charts: round ticks, labels that fit, data text escaped, and pages a browser shows."""

from __future__ import annotations

from xml.etree import ElementTree

import numpy as np
import pytest

from steps.lib.charts import (
    Panel,
    bar_rows_svg,
    fitted,
    grid_svg,
    histogram_panel,
    level_panel,
    nice_ticks,
    tick_label,
)

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        (0, 10, [0, 2.5, 5, 7.5, 10]),
        (-3.2, 3.9, [-2, 0, 2]),
        (0, 4_000, [0, 1_000, 2_000, 3_000, 4_000]),
        (0.001, 0.0042, [0.001, 0.002, 0.003, 0.004]),
        (5, 5, [5]),
    ],
)
def test_ticks_are_round_numbers_inside_the_range(low, high, ticks):
    assert nice_ticks(low, high) == pytest.approx(ticks)


def test_tick_labels_are_short():
    assert [tick_label(v) for v in (0, 0.25, 1500, 3e6, 1e-5, -2.5)] == ["0", "0.25", "1,500", "3e+06", "1e-05", "-2.5"]


def test_a_long_label_is_cut_to_fit():
    assert fitted("short", 100, 10) == "short"
    assert fitted("a" * 40, 60, 10) == "a" * 9 + "…"


def test_the_texts_of_users_data_are_escaped_and_the_file_is_valid_svg():
    panels = [
        level_panel("Income ($) <b>", {"<=50K": 7, "a&b>": 3}),
        histogram_panel("seniority (years)", np.array([1.0, 2.0, np.nan, np.inf, 2.0])),
        histogram_panel("all missing", np.array([np.nan, np.nan])),
        Panel("learning_rate", points=[(0.001, -0.5), (0.3, -0.7)], log_x=True),
    ]
    page = grid_svg(panels, columns=2, panel_size=(256, 192), caption="a sample <of> rows")
    root = ElementTree.fromstring(page)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert {"Income ($) <b>", "<=50K", "a&b>", "a sample <of> rows", "no values to bin"} <= set(texts)
    assert "<b>" not in page and "&lt;=50K" in page
    assert (root.get("width"), root.get("height")) == ("512", str(20 + 2 * 192))
    assert {"0.001", "0.01", "0.1"} <= set(texts)  # a log axis ticks at powers of ten
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("fill") != "#ffffff"]
    assert len(bars) == 2 + 2  # two levels; 1.0 and 2.0 (the infinite value and the gap left out)


def test_horizontal_bars_grow_from_zero_both_ways_with_their_labels():
    rows = [("Income ($)", 0.12, 0.01, "#4c72b0"), ("seniority (years)", -0.02, 0.0, "#c0392b")]
    root = ElementTree.fromstring(bar_rows_svg(Panel("importance", rows=rows, x_label="drop in f1")))
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("fill") != "#ffffff"]
    assert [b.get("fill") for b in bars] == ["#4c72b0", "#c0392b"]
    wide, narrow = (float(b.get("width")) for b in bars)
    assert wide > 5 * narrow  # drawn to scale, from the same zero
    assert float(bars[1].get("x")) + narrow == pytest.approx(float(bars[0].get("x")), abs=0.2)  # left of zero
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert {"Income ($)", "seniority (years)", "drop in f1", "0"} <= texts


def test_what_cannot_be_drawn_is_left_out_and_the_file_stays_valid():
    nan, inf = float("nan"), float("inf")
    panels = [
        Panel("loss", points=[(1, -0.5), (2, nan), (3, inf), (4, -0.7)], line=[(1, -0.5), (4, -0.7)]),
        Panel("C", points=[(0.0, 1.0), (-1.0, 2.0), (0.1, 3.0), (10.0, 4.0)], log_x=True),
        Panel("importance", rows=[("a", nan, 0.1, "#4c72b0"), ("b", 0.2, nan, "#4c72b0")]),
        level_panel("level\x1bwith an escape", {"x\x00y": 3}),
        histogram_panel("1e15 and 1e15 + 2", np.array([1e15, 1e15 + 2])),
    ]
    root = ElementTree.fromstring(grid_svg(panels, columns=3, panel_size=(256, 192)))  # parses: valid XML
    assert len(list(root.iter(f"{SVG}circle"))) == 2 + 2  # the finite points; on the log axis, the positive ones
    coordinates = [v for e in root.iter() for k, v in e.attrib.items() if k in ("x", "y", "cx", "cy", "width")]
    assert not any("nan" in v or "inf" in v for v in coordinates)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "level\ufffdwith an escape" in texts and "no values to bin" in texts


def test_tiny_ranges_still_get_tick_labels():
    ticks = nice_ticks(1e-14, 5e-14)
    assert len(set(ticks)) == len(ticks) > 2 and all(1e-14 <= t <= 5e-14 for t in ticks)
    assert nice_ticks(0, 0.3) == [0, 0.1, 0.2, 0.3]  # and no float noise (0.30000000000000004)
