"""featurize's split options, declared once for the two command lines that take them (featurize's and main's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from steps.lib.runner import as_param, unset_is_none
from steps.lib.splits import SPLIT_KINDS, check_split_options


@dataclass(frozen=True)
class SplitOptions:
    """How featurize splits the rows (main passes it on): random, time on a column, or group on a column."""

    kind: str = "random"
    time_column: str | None = None
    group_column: str | None = None

    def check(self) -> SplitOptions:
        check_split_options(self.kind, self.time_column, self.group_column)
        return self

    @property
    def column(self) -> str | None:
        return {"time": self.time_column, "group": self.group_column}.get(self.kind)

    def as_params(self) -> dict[str, str]:
        return {
            "split": self.kind,
            "time_column": as_param(self.time_column, "none"),
            "group_column": as_param(self.group_column, "none"),
        }


SPLIT_CHOICE = click.Choice(SPLIT_KINDS, case_sensitive=False)  # `-P split=Time` is meant as time


def split_options(command: Any) -> Any:
    """featurize's and main's --split, --time-column and --group-column (`none`: not given)."""
    for option in reversed(
        (
            click.option("--split", default="random", type=SPLIT_CHOICE, help="random, time or group."),
            click.option("--time-column", default="none", callback=unset_is_none, help="split=time: the time."),
            click.option("--group-column", default="none", callback=unset_is_none, help="split=group: the group."),
        )
    ):
        command = option(command)
    return command
