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
    assert {"Income ($) <b>", "<=50K", "a&b>", "a sample <of> rows", "no values"} <= set(texts)
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
