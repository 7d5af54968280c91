"""What reading values written as text costs inside a model: numbers ($1,234.50) and dates in a format.

The model reads these columns on every fit and every prediction (steps/lib/text_values.py), so their cost is paid
per trial, per refit and per scored batch. Each reader is timed on N seeded values beside its baseline in the same
run (this machine is shared: compare the ratios):
  numbers   to_numbers on `$51,885.95`-style text (every value distinct) and on `45%` (100 distinct values),
            against pandas' own to_numeric on plain numbers as text (`51885.95`), which cannot read the others
  dates     parse_times on ISO 8601 text (pandas' fast ISO parser: the baseline), on `05/31/2024 01:45 PM`
            (every value distinct) and on `31/05/2024` (~3,600 distinct days)
  files     a CSV of N rows as a spreadsheet set to German saves it (`;`, `1.234,50`, `31.05.2024`) read whole
            (load's read_data) and in batches of 100,000 rows with a signature's types (predict's and monitor's
            read_batches), against the same table written with commas and decimal points (the baselines)
The best of --repeat runs is printed for each.

    python bench/text_values.py                  # 1,000,000 values, best of 3
    python bench/text_values.py --rows 200000 --repeat 5
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steps.lib.tables import read_batches, read_data  # after the project root is on the path
from steps.lib.text_values import parse_times, to_numbers


def best_of(repeat: int, read: Callable[[], pd.Series]) -> tuple[float, pd.Series]:
    """The fastest of `repeat` runs of `read` in seconds, and what it read."""
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = read()
        times.append(time.perf_counter() - start)
    return min(times), out


def columns(rows: int, seed: int = 0) -> dict[str, pd.Series]:
    """The seeded columns, as text (object dtype, as a CSV read by pandas gives them)."""
    rng = np.random.default_rng(seed)
    amounts = rng.normal(50_000, 15_000, rows).round(2)
    stamps = pd.Timestamp("2015-01-01") + pd.to_timedelta(rng.integers(0, 10 * 365 * 86_400, rows), unit="s")

    def text(values: object) -> pd.Series:
        return pd.Series(values, dtype=object)

    return {
        "plain": text([f"{v:.2f}" for v in amounts]),
        "money": text([f"${v:,.2f}" for v in amounts]),
        "percent": text([f"{v}%" for v in rng.integers(0, 100, rows)]),
        "iso": text(stamps.strftime("%Y-%m-%dT%H:%M:%S")),
        "us": text(stamps.strftime("%m/%d/%Y %I:%M %p")),
        "day first": text(stamps.strftime("%d/%m/%Y")),
    }


def file_rows(rows: int, repeat: int) -> list[tuple[str, str, float, float, int]]:
    """The German CSV read whole and in batches, each against its comma-and-point twin (see the docstring)."""
    import tempfile

    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "Income ($)": rng.gamma(2.0, 20_000, rows).round(2),
            "share": rng.random(rows).round(3),
            "city": pd.Series(rng.integers(0, 5_000, rows)).map(lambda v: f"city {v}"),
            "joined": (pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 2_000, rows), unit="D")).strftime(
                "%d.%m.%Y"
            ),
        }
    )
    german = frame.copy()
    german["Income ($)"] = [
        f"{v:,.2f}".replace(",", "_").replace(".", ",").replace("_", ".") for v in frame["Income ($)"]
    ]
    types = {"Income ($)": "double", "share": "double", "city": "string", "joined": "string"}
    out = []
    with tempfile.TemporaryDirectory() as folder:
        english, de = Path(folder, "english.csv"), Path(folder, "german.csv")
        frame.to_csv(english, index=False)
        german.to_csv(de, index=False, sep=";", decimal=",")

        def whole(path: Path) -> pd.DataFrame:
            return read_data(str(path))

        def batches(path: Path) -> pd.DataFrame:
            return pd.concat(read_batches(str(path), types, 100_000), ignore_index=True)

        for label, read in (("read_data", whole), ("read_batches", batches)):
            base, plain = best_of(repeat, lambda read=read: read(english))
            seconds, got = best_of(repeat, lambda read=read: read(de))
            assert np.allclose(got["Income ($)"], plain["Income ($)"]) and got["joined"].equals(plain["joined"])
            out.append(("files", f"commas and points, {label} (baseline)", base, base, 0))
            out.append(("files", f"`;` and 1.234,50, {label}", seconds, base, int(got["Income ($)"].isna().sum())))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = columns(args.rows)
    rows = []
    base, plain = best_of(args.repeat, lambda: pd.to_numeric(data["plain"]))
    rows.append(("numbers", "plain text, pandas' to_numeric (baseline)", base, base, plain.isna().sum()))
    for name, label in (("money", "$51,885.95, to_numbers"), ("percent", "45% (100 values), to_numbers")):
        seconds, read = best_of(args.repeat, lambda name=name: to_numbers(data[name]))
        rows.append(("numbers", label, seconds, base, read.isna().sum()))
        if name == "money":
            assert np.allclose(read.to_numpy(), plain.to_numpy())  # the same numbers as the baseline's
    base, iso = best_of(args.repeat, lambda: parse_times(data["iso"]))
    rows.append(("dates", "ISO 8601, parse_times (baseline)", base, base, iso.isna().sum()))
    for name, fmt in (("us", "%m/%d/%Y %I:%M %p"), ("day first", "%d/%m/%Y")):
        seconds, read = best_of(args.repeat, lambda name=name, fmt=fmt: parse_times(data[name], fmt))
        rows.append(("dates", f"{fmt}, parse_times", seconds, base, read.isna().sum()))
    rows += file_rows(args.rows, args.repeat)
    print(f"{args.rows:,} values each, best of {args.repeat}")
    print(f"{'kind':8} {'reader':44} {'seconds':>8} {'ratio':>6} {'missing':>8}")
    for kind, label, seconds, baseline, missing in rows:
        print(f"{kind:8} {label:44} {seconds:8.2f} {seconds / baseline:6.2f} {missing:8,}")


if __name__ == "__main__":
    main()
