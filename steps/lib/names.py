"""Tag and artifact names that more than one module reads or writes, written once."""

from __future__ import annotations

# The pipeline's entry points that main chains, in order (each one a cached step).
PIPELINE_STEPS = ("load", "featurize", "tune", "train", "evaluate")

# --- run tags
STEP_TAG = "pipeline.step"
ERROR_TAG = "pipeline.error"
WARNINGS_TAG = "pipeline.warnings"  # how many warnings the step logged (its log: logs/<step>.log)
PROCESS_TAG = "pipeline.process"  # machine:pid:start time of the process that runs the step
DIRTY_TAG = "git.dirty"  # the run's code had uncommitted changes: its git commit does not reproduce it
OUTPUT_DIGEST_TAG = "outputs.digest"  # what a step produced, for the cache keys of the steps after it
CACHE_KEY_TAG = "cache.key"
TRIAL_TAG = "trial"
MODEL_URI_TAG = "model_uri"  # train: where its model is logged (models:/<model id>)
RUN_NAME_TAG = "mlflow.runName"
PARENT_TAG = "mlflow.parentRunId"
ENV_MANAGER_TAG = "mlflow.project.env"  # set by `mlflow run` for every env manager but local
ENTRY_POINT_TAG = "mlflow.project.entryPoint"

# --- model version tags
EVALUATE_RUN_TAG = "evaluate_run_id"
GATES_PASSED_TAG = "gates.passed"

# --- artifacts
DATA_DIR = "data"  # load: raw.parquet + meta.json
RAW_TABLE = "raw.parquet"
DATA_META = "meta.json"
PROFILE_DIR = "profile"
SPLITS_DIR = "splits"  # featurize: <split>.parquet + feature_spec.json
FEATURE_SPEC = "feature_spec.json"
BEST_PARAMS = "best_params.json"  # tune
TRIALS_FILE = "trials.json"  # tune: every trial's values and result, to resume from
LEADERBOARD = "trials.csv"
FIGURES_DIR = "figures"
EVALUATION_DIR = "evaluation"
CARD_DIR = "model_card"
PREDICTIONS_DIR = "predictions"
DRIFT_DIR = "drift"
PIPELINE_SUMMARY = "pipeline_summary.json"
