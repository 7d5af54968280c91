"""Names a step makes from the data's own names: MLflow metric keys, and output columns beside the inputs.

MLflow takes letters, digits, `_ - . :`, spaces and `/` in a metric key, and refuses one that a file
system would read as another path (`a//b`, `./a`); so a column called `Income ($)` or a class called
`<=50K` cannot be a key as it is. One function cleans every such name, keeps the cleaned names distinct
(`_2`, `_3`, ... on a clash), and the real names stay in the artifacts (CSV, JSON, tables).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable

# Anything else becomes "_"; '/' and ':' too (a '/' reads as a path, Windows refuses ':').
OUTSIDE_KEY = re.compile(r"[^\w\-. ]")
MAX_PART = 200  # MLflow's limit for a whole key is 250 characters


def key_parts(names: Iterable[Hashable]) -> dict[Hashable, str]:
    """Each name as a valid, distinct piece of a metric key, in the order given."""
    parts: dict[Hashable, str] = {}
    used: set[str] = set()
    for name in names:
        if name in parts:
            continue
        base = OUTSIDE_KEY.sub("_", str(name))[:MAX_PART] or "_"
        part, number = base, 2
        while part in used:
            part, number = f"{base}_{number}", number + 1
        used.add(part)
        parts[name] = part
    return parts


def unused_name(wanted: str, taken: Iterable[str]) -> str:
    """`wanted`, or `wanted_2`, `wanted_3`, ... if a column of that name is already there: outputs never
    overwrite inputs."""
    taken = set(map(str, taken))
    name, number = wanted, 2
    while name in taken:
        name, number = f"{wanted}_{number}", number + 1
    return name
