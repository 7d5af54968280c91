"""A card per step: `card.html`, one self-contained page the MLflow UI's artifact viewer shows.

Every card comes from the one Jinja2 template below: a title, the step's status and a few facts, then
sections of text, tables, images and (main's) a diagram. Images are inlined as data: URIs and nothing is
loaded from anywhere else, so the page shows the same in the UI's sandboxed frame, in a browser from disk and
offline. Runs are named by their id; a link to a run opens in a new tab, and only when the tracking server
has an http(s) address a browser can reach (the sandboxed frame cannot follow a link inside the UI).
"""

from __future__ import annotations

import base64
import html
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

CARD_FILE = "card.html"
MAX_TABLE_ROWS = 200

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{{ step }}: {{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2em 1.6em; color: #1b1f24; }
h1 { font-size: 1.35em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
.status { display: inline-block; padding: .1em .6em; border-radius: .8em; font-weight: 600; font-size: .85em; }
.FINISHED { background: #d8f3dc; color: #1b4332; } .FAILED { background: #ffd6d6; color: #7a0000; }
.RUNNING { background: #fff3bf; color: #5c4400; }
dl { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; margin: .6em 0; }
dt { color: #57606a; } dd { margin: 0; }
table { border-collapse: collapse; margin: .4em 0; font-size: .92em; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eaeef2; margin: .3em 0; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; white-space: pre-wrap; }
code { background: #f6f8fa; padding: 0 .25em; } .note { color: #57606a; font-size: .9em; }
.error { background: #fff0f0; border-left: 4px solid #c00; padding: .6em .8em; }
</style></head><body>
<h1>{{ step }}: {{ title }}</h1>
<span class="status {{ status }}">{{ status }}</span>
{% if facts %}<dl>{% for key, value in facts %}<dt>{{ key }}</dt><dd>{{ value }}</dd>{% endfor %}</dl>{% endif %}
{% if error %}<p class="error">{{ error }}</p>{% endif %}
{% for section in sections %}
<h2>{{ section.title }}</h2>
{% if section.text %}<p>{{ section.text }}</p>{% endif %}
{% if section.svg %}{{ section.svg | safe }}{% endif %}
{% if section.table is not none %}<table><tr>{% for name in section.table.columns %}<th>{{ name }}</th>{% endfor %}</tr>
{% for row in section.rows() %}<tr>{% for cell, numeric in row %}
<td{% if numeric %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>{% if section.more %}<p class="note">{{ section.more }}</p>{% endif %}{% endif %}
{% for name, uri in section.image_uris() %}<figure><img src="{{ uri }}" alt="{{ name }}"></figure>{% endfor %}
{% if section.pre %}<pre>{{ section.pre }}</pre>{% endif %}
{% endfor %}
<p class="note">Made by the pipeline's {{ step }} step{% if run_id %} in run <code>{{ run_id }}</code>{% endif %}.</p>
</body></html>
"""


@dataclass
class Section:
    title: str
    text: str = ""
    table: pd.DataFrame | None = None
    images: list[Path] = field(default_factory=list)
    svg: str = ""  # made here, its text escaped
    pre: str = ""
    more: str = ""

    def __post_init__(self) -> None:
        if self.table is not None and len(self.table) > MAX_TABLE_ROWS:
            self.more = f"The first {MAX_TABLE_ROWS} of {len(self.table):,} rows."
            self.table = self.table.head(MAX_TABLE_ROWS)

    def rows(self) -> list[list[tuple[str, bool]]]:
        return [[cell_text(value) for value in row] for row in self.table.itertuples(index=False)]

    def image_uris(self) -> list[tuple[str, str]]:
        return [(path.stem, inline_image(path)) for path in self.images if path.exists()]


def cell_text(value: Any) -> tuple[str, bool]:
    """A table cell's text, and whether it is a number (right-aligned)."""
    if isinstance(value, bool) or value is None:
        return ("" if value is None else str(value).lower()), False
    if isinstance(value, int | float):
        if isinstance(value, float):
            if value != value:  # NaN
                return "", False
            return (f"{value:.4f}" if not value.is_integer() else f"{int(value):,}"), True
        return f"{value:,}", True
    return str(value), False


IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}


def inline_image(path: Path) -> str:
    """A PNG or SVG file as a data: URI (an SVG inside <img> runs no script and loads nothing)."""
    kind = IMAGE_TYPES.get(path.suffix.lower(), "image/png")  # MLflow's own plots are PNG
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render(
    step: str,
    title: str,
    status: str,
    facts: list[tuple[str, Any]],
    sections: list[Section],
    error: str = "",
    run_id: str = "",
) -> str:
    from steps.lib.console import redact_text

    page = _template().render(
        step=step, title=title, status=status, facts=facts, sections=sections, error=error, run_id=run_id
    )
    return redact_text(page)  # a URI's secrets never reach a card, wherever a step put the URI


@cache
def _template() -> Any:
    from jinja2 import Environment

    return Environment(autoescape=True).from_string(TEMPLATE)


def log_card(
    step: str,
    title: str,
    facts: list[tuple[str, Any]],
    sections: list[Section],
    status: str = "FINISHED",
    error: str = "",
) -> None:
    """card.html of the active run."""
    import mlflow

    active = mlflow.active_run()
    page = render(step, title, status, facts, sections, error, active.info.run_id if active else "")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, CARD_FILE)
        path.write_text(page, encoding="utf-8")
        mlflow.log_artifact(str(path))


STATUS_COLOURS = {"FINISHED": "#d8f3dc", "FAILED": "#ffd6d6", "RUNNING": "#fff3bf", "KILLED": "#e9ecef"}


def pipeline_diagram(steps: list[dict[str, Any]]) -> str:
    """main's pipeline as an SVG: one box per step (status colour, seconds, ran or cached, its run id)."""
    width, height, gap = 170, 92, 34
    total = len(steps) * width + (len(steps) - 1) * gap + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{height + 20}" role="img" '
        'aria-label="the pipeline\'s steps" font-family="system-ui, sans-serif" font-size="12">'
    ]
    for index, step in enumerate(steps):
        x = 10 + index * (width + gap)
        colour = STATUS_COLOURS.get(step["status"], "#e9ecef")
        texts = [
            (22, 15, "bold", step["step"]),
            (42, 12, "normal", f"{step['status']} · {step['seconds']:.1f} s"),
            (60, 12, "normal", "cached" if step["cached"] else "ran"),
            (78, 10, "normal", f"run {step['run_id'][:12]}"),
        ]
        parts.append(
            f'<rect x="{x}" y="10" width="{width}" height="{height}" rx="8" fill="{colour}" stroke="#57606a"/>'
        )
        for dy, size, weight, text in texts:
            parts.append(
                f'<text x="{x + 10}" y="{10 + dy}" font-size="{size}" font-weight="{weight}">{html.escape(text)}</text>'
            )
        if index < len(steps) - 1:
            y = 10 + height / 2
            parts.append(f'<path d="M{x + width + 4},{y} h{gap - 10} l-6,-5 m6,5 l-6,5" stroke="#57606a" fill="none"/>')
    parts.append("</svg>")
    return "".join(parts)
