"""The card template: one self-contained page (PNG and SVG images inlined, nothing loaded from elsewhere), in a
real browser."""

from __future__ import annotations

import pandas as pd

from steps.lib.cards import Section, pipeline_diagram, render
from steps.lib.charts import Panel, grid_svg, level_panel
from tests.conftest import pages_in_chromium


def a_png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(2, 1))
    axes.plot([0, 1], [1, 0])
    figure.savefig(path)
    plt.close(figure)
    return path


def a_chart(path):
    panels = [level_panel("Income ($)", {"<=50K": 7, ">50K": 3}), Panel("x", points=[(1, 2), (3, 1)])]
    path.write_text(grid_svg(panels, columns=2, panel_size=(256, 192)), encoding="utf-8")
    return path


def test_a_card_is_one_page_with_its_images_decoded_and_no_request_elsewhere(tmp_path):
    steps = [
        {"step": "load", "status": "FINISHED", "seconds": 4.2, "cached": True, "run_id": "a" * 32},
        {"step": "tune", "status": "FAILED", "seconds": 9.0, "cached": False, "run_id": "b" * 32},
    ]
    sections = [
        Section(
            "A table", "with <b>markup</b> in the text", table=pd.DataFrame({"Income ($)": [1.5, None], "n": [3, 4]})
        ),
        Section("Pictures", images=[a_png(tmp_path / "one.png"), a_chart(tmp_path / "two.svg")]),
        Section("The pipeline", svg=pipeline_diagram(steps)),
        Section("Text", pre="# a model card\n<script>alert(1)</script>"),
    ]
    page = render("demo", "a <title>", "FINISHED", [("rows", "1,000")], sections, run_id="c" * 32)
    assert "<script>alert" not in page and "&lt;b&gt;markup" in page  # what comes from the data is escaped
    (tmp_path / "card.html").write_text(page, encoding="utf-8")
    # The same page with an image from elsewhere: the check must see it (blocked, not decoded).
    (tmp_path / "leaky.html").write_text(page.replace("</body>", '<img src="http://127.0.0.1:9/x.png"></body>'))
    card, leaky = pages_in_chromium([tmp_path / "card.html", tmp_path / "leaky.html"])
    assert card == {"images": 2, "decoded": 2, "requests": [], "title": "demo: a <title>"}
    assert leaky["images"] == 3 and leaky["decoded"] == 2
