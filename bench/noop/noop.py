"""A step that does nothing but what every step does: import the libraries, attach to its run, end it.

mlflow.projects.run created the run and passes its id (MLFLOW_RUN_ID); attaching opens the tracking store
(for SQLite: SQLAlchemy and MLflow's store module, ~1.3 s of imports), as every step's `step_run` does.
"""

import mlflow
import pandas  # noqa: F401
import sklearn  # noqa: F401

with mlflow.start_run():
    pass
