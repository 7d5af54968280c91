"""The model card of a registered version: data, params, metrics against the baseline, gates, plots, use.

Written by `evaluate` as `model_card/model_card.md` (with its plots beside it) in the evaluate run;
the model version's tag `model_card` points to it and its description is the card's summary.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from steps.lib.features import FeatureSpec
from steps.lib.names import CARD_DIR, OUTPUT_DIGEST_TAG
from steps.lib.story import code
from steps.lib.uris import redact_uri, run_of_uri


@dataclass
class CardFacts:
    """What the card says, gathered from the runs; plain values, so the card is a pure function of them."""

    name: str
    version: str
    alias: str
    metric: str
    task: str
    target: str
    features: list[str]
    data: dict[str, str]  # data set name, digests, rows
    params: dict[str, str]
    comparison: pd.DataFrame  # metric, model, baseline, model_beats_baseline, strong_baseline, model_beats_strong_…
    gates: list[tuple[str, bool, str]]  # name, passed, reason
    decision: str
    plots: list[str] = field(default_factory=list)  # file names beside the card
    importance: pd.DataFrame | None = None  # permutation importance of the raw input columns, most first


def gather_data_facts(client: MlflowClient, splits_uri: str, test_dataset: Any) -> dict[str, str]:
    """The data set behind the splits: the load run's name and digest, the featurize output, the test rows."""
    facts = {"test rows": str(test_dataset.profile.get("num_rows", "")), "test set digest": test_dataset.digest}
    featurize_id = run_of_uri(splits_uri)
    if featurize_id is None:
        return facts | {"splits": redact_uri(splits_uri)}
    featurize = client.get_run(featurize_id)
    facts |= {
        "splits": splits_uri,
        "splits digest": featurize.data.tags.get(OUTPUT_DIGEST_TAG, ""),
        "rows (train / validation / test)": " / ".join(
            str(int(featurize.data.metrics.get(f"n_{split}", 0))) for split in ("train", "validation", "test")
        ),
        "split": featurize.data.tags.get("split", ""),
    }
    load_id = run_of_uri(featurize.data.params.get("raw_data_uri", ""))
    if load_id is not None:
        load = client.get_run(load_id)
        facts = {
            "data set": load.data.tags.get("data.name", ""),
            "data digest": load.data.tags.get("data.digest", ""),
            "source": redact_uri(load.data.params.get("data_uri", "")),
        } | facts
    return facts


def gather_params(model_uri: str) -> dict[str, str]:
    """The train run's params (model family and hyperparameters)."""
    try:
        run_id = mlflow.models.get_model_info(model_uri).run_id
    except Exception:
        return {}
    if not run_id:
        return {}
    return dict(sorted(mlflow.get_run(run_id).data.params.items()))


def render_card(facts: CardFacts) -> str:
    """The card as Markdown."""
    at = f"models:/{facts.name}/{facts.version}"
    lines = [
        f"# Model card: {facts.name} version {facts.version}",
        "",
        f"**Alias:** `@{facts.alias}`. **Task:** {facts.task}, target `{facts.target}`. "
        f"**Decision metric:** `{facts.metric}`.",
        "",
        f"**Promotion:** {'promoted to @champion' if facts.alias == 'champion' else 'not promoted'}: {facts.decision}",
        "",
        "## Data",
        "",
        *[f"- {key}: `{value}`" for key, value in facts.data.items() if value],
        f"- features ({len(facts.features)}): {', '.join(f'`{f}`' for f in facts.features)}",
        "",
        "## Parameters",
        "",
        "| param | value |",
        "|---|---|",
        *[f"| `{k}` | `{v}` |" for k, v in facts.params.items()],
        "",
        "## Test metrics against the baseline",
        "",
        "The baseline is the null model: the class prior (classification) or the training mean (regression). "
        "The strong baseline is a default HistGradientBoosting with the same encoding, fitted on the same rows.",
        "",
        "| metric | model | baseline | model beats baseline | strong baseline | model beats strong baseline |",
        "|---|---|---|---|---|---|",
        *[
            f"| {row.metric} | {row.model:.4f} | {_number(row.baseline)} | {_yes(row.model_beats_baseline)} "
            f"| {_number(getattr(row, 'strong_baseline', None))} "
            f"| {_yes(getattr(row, 'model_beats_strong_baseline', None))} |"
            for row in facts.comparison.itertuples()
        ],
        "",
        "## Gates",
        "",
        "| gate | outcome | detail |",
        "|---|---|---|",
        *[f"| {name} | {'passed' if passed else 'FAILED'} | {reason} |" for name, passed, reason in facts.gates],
        "",
    ]
    if facts.importance is not None and len(facts.importance):
        rows = facts.importance.head(10)
        lines += [
            "## Which columns matter",
            "",
            f"Permutation importance on {int(rows['rows'].iloc[0]):,} test rows: how much test {facts.metric} drops "
            "when a raw input column is shuffled (mean and sd of 5 shuffles; `explanations/` has every column).",
            "",
            "| column | importance | sd |",
            "|---|---|---|",
            *[f"| {cell(r.column)} | {r.importance:.4f} | {r.sd:.4f} |" for r in rows.itertuples()],
            "",
        ]
    if facts.plots:
        lines += ["## Plots", "", *[f"![{Path(p).stem}]({p})" for p in facts.plots], ""]
    lines += [
        "## Use",
        "",
        "```python",
        "import mlflow",
        f'model = mlflow.pyfunc.load_model("{at}")  # or "models:/{facts.name}@champion"',
        "predictions = model.predict(frame)  # a DataFrame with the feature columns",
        "```",
        "",
        "Batch scoring and serving:",
        "",
        "```bash",
        f"mlflow run . -e predict --env-manager local -P data_uri=<csv or parquet> -P model_uri={at}",
        f"mlflow models serve -m {at} --env-manager local -h 127.0.0.1 -p 5001",
        "curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\",
        '  -d \'{"dataframe_split": {"columns": [...], "data": [[...]]}}\'',
        "```",
        "",
    ]
    return "\n".join(lines)


def cell(name: Any) -> str:
    """A column name as inline code in a Markdown table cell (a '|' in it escaped)."""
    return code(name).replace("|", "\\|")


def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


def _number(value: Any) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.4f}"


def card_summary(card: str) -> str:
    """The card's first paragraphs: the model version's description."""
    return "\n\n".join(part for part in card.split("\n\n")[1:3])


def build_card(
    *,
    name: str,
    version: str,
    alias: str,
    metric: str,
    model_uri: str,
    splits_uri: str,
    spec: FeatureSpec,
    test_dataset: Any,
    comparison: pd.DataFrame,
    gates: list[tuple[str, bool, str]],
    decision: str,
    evaluation_artifacts: dict[str, Any],
    folder: Path,
    importance: pd.DataFrame | None = None,
) -> tuple[str, dict[str, Path]]:
    """The card's Markdown and its plot files (downloaded from the evaluation's artifacts into `folder`, which
    the caller owns and removes)."""
    client = MlflowClient()
    plots: dict[str, Path] = {}
    for artifact in evaluation_artifacts.values():
        uri = getattr(artifact, "uri", "")
        if str(uri).endswith(".png"):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
            plots[local.name] = local
    if importance is not None and len(importance):
        from steps.lib.explain import IMPORTANCE_PLOT, plot_importance

        plot_importance(importance, folder / IMPORTANCE_PLOT)
        plots[IMPORTANCE_PLOT] = folder / IMPORTANCE_PLOT
    facts = CardFacts(
        name,
        version,
        alias,
        metric,
        spec.task,
        spec.target,
        [*spec.numeric, *spec.categorical, *spec.datetime],
        gather_data_facts(client, splits_uri, test_dataset),
        gather_params(model_uri),
        comparison,
        gates,
        decision,
        sorted(plots),
        importance,
    )
    return render_card(facts), plots


def log_card(card: str, plots: dict[str, Path]) -> None:
    """model_card/model_card.md and its plots, in the active run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "model_card.md").write_text(card)
        for name, path in plots.items():
            shutil.copy(path, out / name)
        mlflow.log_artifacts(tmp, CARD_DIR)
