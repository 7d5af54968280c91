"""A step that does nothing but what load and featurize do besides their work: import MLflow (and with it
pandas and pyarrow), attach to its run, end it.

mlflow.projects.run created the run and passes its id (MLFLOW_RUN_ID); attaching opens the tracking store
(for SQLite: SQLAlchemy and MLflow's store module, ~1.1 s of imports), as every step's `step_run` does.
It imported scikit-learn too (~0.9 s) until featurize stopped needing it: neither data step imports it now,
so a no-op that did would subtract time the steps do not spend. It leaves what it imported out of the
garbage collector's passes at its exit, as every step does (`steps.lib.process.no_collection_at_exit`: ~0.75 s).
"""

import atexit
import gc

import mlflow
import pandas  # noqa: F401  (MLflow imports it already: named for the reader)

atexit.register(gc.freeze)
with mlflow.start_run():
    pass
