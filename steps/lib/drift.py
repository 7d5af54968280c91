"""monitor's statistics, over a batch of any size: streamed tallies, a seeded sample, and the drift table.

A batch is read in pieces. Counts, missing values, category frequencies and the PSI bins are tallied
over every row; the Kolmogorov-Smirnov test (and the figures, and the live metric) use a seeded
uniform sample of at most `sample_rows` rows (each row draws a random key, the smallest keys stay:
the same sample whatever the piece size). The tests are scipy's (`ks_2samp`, `chi2_contingency`),
PSI is the textbook formula over the reference's deciles. A date/time column has no distribution test (times
move on by nature: every new batch would drift): its missing share, the values that do not parse as times (the
model reads them as missing) and its span beside the training span.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from steps.lib.text_values import parse_times

PSI_BINS = 10
PSI_FLOOR = 1e-4  # an empty bin's share, so the logarithm stays finite
MISSING_CHANGE = 0.1  # a change of 10 points in a column's share of missing values is drift
TIMES = "date/time"
SAMPLE_KEY = "__sample_key__"


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    ref = np.clip(reference, PSI_FLOOR, None)
    cur = np.clip(current, PSI_FLOOR, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def psi_edges(reference: np.ndarray) -> np.ndarray:
    """The reference's decile edges, open at both ends."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, PSI_BINS + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


def numeric_drift(reference: pd.Series, current: pd.Series, counts: np.ndarray | None = None) -> dict[str, float]:
    """KS statistic and p-value of `current` (a sample) against the reference, and PSI over the reference's
    deciles: of `counts` (the batch's bin counts over every row) when given, else of `current`."""
    from scipy.stats import ks_2samp

    ref, cur = reference.dropna().astype(float).to_numpy(), current.dropna().astype(float).to_numpy()
    if len(ref) == 0 or len(cur) == 0:
        return {"statistic": math.nan, "p_value": math.nan, "psi": math.nan}
    test = ks_2samp(ref, cur)
    edges = psi_edges(ref)
    ref_share = np.histogram(ref, edges)[0] / len(ref)
    cur_counts = np.histogram(cur, edges)[0] if counts is None else counts
    cur_share = cur_counts / max(cur_counts.sum(), 1)
    return {"statistic": float(test.statistic), "p_value": float(test.pvalue), "psi": psi(ref_share, cur_share)}


def categorical_drift(reference: pd.Series, current: pd.Series | Counter) -> dict[str, Any]:
    """Chi-square test of the category counts (reference vs batch), PSI, and categories never seen in training.

    `current`: the batch's values, or their counts (a Counter of the values as text).
    """
    from scipy.stats import chi2_contingency

    ref = reference.dropna().astype(str)
    counted = current if isinstance(current, Counter) else Counter(current.dropna().astype(str))
    ref_counted = ref.value_counts()
    categories = sorted(set(ref_counted.index) | set(counted))
    ref_counts = ref_counted.reindex(categories, fill_value=0).to_numpy()
    cur_counts = np.array([counted.get(c, 0) for c in categories])
    unseen = sorted(set(counted) - set(ref_counted.index))
    if len(ref) == 0 or cur_counts.sum() == 0:
        return {"statistic": math.nan, "p_value": math.nan, "psi": math.nan, "unseen": unseen}
    if len(categories) < 2:
        statistic, p_value = 0.0, 1.0
    else:
        test = chi2_contingency(np.vstack([ref_counts, cur_counts]))
        statistic, p_value = float(test.statistic), float(test.pvalue)
    share = psi(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())
    return {"statistic": statistic, "p_value": p_value, "psi": share, "unseen": unseen}


@dataclass(frozen=True)
class DriftRule:
    """A column drifts when its test is significant (Bonferroni over the columns) and its PSI is large enough.

    Both, because each alone misleads: on a large batch a trivial shift is significant, and on a small
    one PSI is noisy (its expected value under no drift grows like bins/rows).
    """

    p_value: float = 0.01
    min_psi: float = 0.1

    def drifts(self, result: dict[str, Any], n_tests: int) -> bool:
        p, share = result.get("p_value"), result.get("psi")
        if p is None or share is None or math.isnan(p) or math.isnan(share):
            return False
        return p < self.p_value / max(n_tests, 1) and share >= self.min_psi


def is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def as_numbers(series: pd.Series) -> pd.Series | None:
    """The column as numbers, if every present value is one (a CSV column read as text); else None."""
    numbers = parsed_by_arrow(series)
    if numbers is None:  # a value pyarrow does not parse: pandas decides (it also takes ' 1', for one)
        numbers = pd.to_numeric(series, errors="coerce")
    return None if (numbers.isna() & series.notna()).any() else numbers


def parsed_by_arrow(series: pd.Series) -> pd.Series | None:
    """Text parsed as float64 by pyarrow, missing values missing; None if any value does not parse. ~15x
    pandas' to_numeric (a million values: 0.03-0.05 s against 0.4-0.7 s; monitor parses every numeric column
    of every piece), to the same numbers for what both take; "nan" parses to NaN, which as_numbers refuses."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        parsed = pc.cast(pa.array(series, from_pandas=True), pa.float64())
    except (pa.ArrowException, TypeError, ValueError):
        return None
    return pd.Series(parsed.to_numpy(zero_copy_only=False), index=series.index, name=series.name)


@dataclass
class ColumnTally:
    """One column of the batch, over every row: missing values, and its PSI bins or its category counts."""

    numeric: bool
    edges: np.ndarray | None = None
    counts: np.ndarray | None = None
    categories: Counter = field(default_factory=Counter)
    missing: int = 0
    rows: int = 0
    schema_change: str = ""
    times: bool = False  # a date/time column: its span and the values that do not parse, no distribution
    time_format: str = "ISO8601"  # how its text spells times (the feature spec's format)
    unparsed: int = 0
    unparsed_example: Any = None
    span: tuple[pd.Timestamp, pd.Timestamp] | None = None

    def add(self, values: pd.Series) -> pd.Series:
        """Tally a piece of the column; returns it as the reference has it (numbers for a numeric column)."""
        self.rows += len(values)
        self.missing += int(values.isna().sum())
        if self.times:
            self.add_times(values)
            return values
        if not self.numeric:
            counts = values.dropna().astype(str).value_counts()  # vectorised: not a Python loop over the rows
            self.categories.update(dict(zip(counts.index, counts.to_numpy().tolist(), strict=True)))
            return values
        numbers = values if is_numeric(values) else as_numbers(values)
        if numbers is None:
            bad = values[pd.to_numeric(values, errors="coerce").isna() & values.notna()]
            self.schema_change = self.schema_change or f"type changed: numeric in training, text here ({bad.iloc[0]!r})"
            return values
        present = numbers.dropna().astype(float).to_numpy()
        if self.edges is not None:
            self.counts = np.histogram(present, self.edges)[0] + (0 if self.counts is None else self.counts)
        return numbers

    def add_times(self, values: pd.Series) -> None:
        parsed = parse_times(values, self.time_format)
        unparsed = parsed.isna().to_numpy() & values.notna().to_numpy()
        if unparsed.any():
            self.unparsed += int(unparsed.sum())
            self.unparsed_example = values[unparsed].iloc[0] if self.unparsed_example is None else self.unparsed_example
        present = parsed.dropna()
        if len(present):
            first, last = present.min(), present.max()
            self.span = (first, last) if self.span is None else (min(self.span[0], first), max(self.span[1], last))


def time_span(first: pd.Timestamp, last: pd.Timestamp) -> str:
    return f"{first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M}"


class BatchProfile:
    """The batch, tallied piece by piece, and a seeded uniform sample of at most `sample_rows` of its rows."""

    def __init__(
        self,
        reference: pd.DataFrame,
        numeric: list[str],
        others: list[str],
        sample_rows: int,
        seed: int,
        times: Mapping[str, str] | None = None,
    ):
        self.tallies: dict[str, ColumnTally] = {}
        for name in numeric:
            ref = reference[name].dropna().astype(float).to_numpy()
            self.tallies[name] = ColumnTally(True, psi_edges(ref) if len(ref) else None)
        self.tallies |= {name: ColumnTally(False) for name in others}
        self.tallies |= {name: ColumnTally(False, times=True, time_format=fmt) for name, fmt in (times or {}).items()}
        self.sample_rows = sample_rows
        self.rng = np.random.default_rng(seed)
        self.sample = pd.DataFrame()
        self.rows = 0

    def add(self, frame: pd.DataFrame) -> None:
        piece = frame.copy()
        piece.index = pd.RangeIndex(self.rows, self.rows + len(frame))  # the rows' places in the whole batch
        self.rows += len(frame)
        for name, tally in self.tallies.items():
            if name in piece.columns:
                piece[name] = tally.add(piece[name])
        piece[SAMPLE_KEY] = self.rng.random(len(piece))
        both = pd.concat([self.sample, piece]) if len(self.sample) else piece
        self.sample = both.nsmallest(self.sample_rows, SAMPLE_KEY) if len(both) > self.sample_rows else both

    def sampled(self) -> pd.DataFrame:
        """The sample, in the batch's row order."""
        return self.sample.sort_index(kind="stable").drop(columns=SAMPLE_KEY, errors="ignore")


def profile_of(
    frame: pd.DataFrame,
    reference: pd.DataFrame,
    numeric: list[str],
    others: list[str],
    times: Mapping[str, str] | None = None,
) -> BatchProfile:
    """A whole batch in one piece, every row sampled."""
    profile = BatchProfile(reference, numeric, others, max(len(frame), 1), seed=0, times=times)
    profile.add(frame)
    return profile


def time_spans(reference: pd.Series, tally: ColumnTally) -> dict[str, str]:
    """The training rows' span of times and the batch's (empty where no value parses)."""
    known = parse_times(reference, tally.time_format).dropna()
    return {
        "test": "none (times move on)",
        "span_reference": time_span(known.min(), known.max()) if len(known) else "",
        "span_batch": time_span(*tally.span) if tally.span else "",
    }


def drift_table(
    reference: pd.DataFrame,
    current: pd.DataFrame | BatchProfile,
    numeric: list[str],
    categorical: list[str],
    rule: DriftRule,
    times: Mapping[str, str] | None = None,
    missing_before_split: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """One row per column: its test (KS on the sample, chi-square on all counts), PSI over all rows, missing
    shares, schema changes, and whether it drifted; a date/time column (`times`: name -> format of its text) its
    spans instead of a test. `missing_before_split`: a column's missing share in the data before the reference
    lost the rows without it (a time or group split's column: `FeatureSpec.missing_before_split`)."""
    missing_before_split = missing_before_split or {}
    if isinstance(current, BatchProfile):  # its own date/time columns, unless told
        profile = current
        times = times if times is not None else {n: t.time_format for n, t in profile.tallies.items() if t.times}
    else:
        times = times or {}
        profile = profile_of(current, reference, numeric, categorical, times)
    untallied = [name for name in [*numeric, *categorical, *times] if name not in profile.tallies]
    if untallied:  # a caller's mistake, not the batch's: said plainly rather than as a KeyError
        raise ValueError(f"the batch profile was built without column(s) {untallied}; build it with them")
    sample = profile.sampled()
    rows = []
    for name in [*numeric, *categorical, *times]:
        tally = profile.tallies[name]
        row: dict[str, Any] = {
            "column": name,
            "kind": TIMES if tally.times else "numeric" if tally.numeric else "categorical",
        }
        schema_change = tally.schema_change
        if tally.times:
            row |= time_spans(reference[name], tally)
            if tally.unparsed:
                schema_change = (
                    f"{tally.unparsed:,} value(s) do not parse as date/time ({tally.unparsed_example!r}); "
                    "the model reads them as missing"
                )
        elif tally.numeric and not schema_change:
            row |= {"test": "ks"} | numeric_drift(reference[name], pd.to_numeric(sample[name]), tally.counts)
        elif not tally.numeric:
            result = categorical_drift(reference[name], tally.categories)
            unseen = result.pop("unseen")
            row |= {"test": "chi2"} | result
            if unseen:
                schema_change = f"unseen categories: {', '.join(map(str, unseen[:5]))}"
        ref_missing = missing_before_split.get(name, float(reference[name].isna().mean()))
        cur_missing = tally.missing / max(tally.rows, 1)
        row |= {
            "missing_reference": ref_missing,
            "missing_batch": cur_missing,
            "missing_change": cur_missing - ref_missing,
            "schema_change": schema_change,
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    n_tests = int((table["kind"] != TIMES).sum()) if len(table) else 0
    table.attrs["n_tests"] = n_tests  # the Bonferroni divisor: the columns with a distribution test
    table["drifted"] = [
        rule.drifts(row, n_tests) or abs(row["missing_change"]) >= MISSING_CHANGE or bool(row["schema_change"])
        for row in table.to_dict("records")
    ]
    return table
