"""Spark for the steps that use it (tune's backend=spark, predict's backend=spark): the session, the code.

pyspark is an optional extra: `pip install -r requirements-spark.txt`. A local master listens on
127.0.0.1 only, without a web UI; executors run this same interpreter unless the user chose another.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from steps.lib.errors import PipelineError, one_line

STEPS_DIR = Path(__file__).resolve().parents[1]  # the steps package, shipped to the executors
INSTALL_HINT = "pip install -r requirements-spark.txt (pyspark 4.3.0) into the environment the step runs in"


def absolute_tracking_uri(uri: str) -> str:
    """The tracking URI as executors must see it: a relative SQLite or file path made absolute."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def is_local_master(master: str | None) -> bool:
    return master is None or master.startswith("local")


def spark_session(master: str | None) -> Any:
    """The active Spark session, or a new one.

    master None leaves the choice to Spark: `spark-submit --master`, `PYSPARK_SUBMIT_ARGS` or
    spark-defaults.conf, else local[*]. A local Spark listens on 127.0.0.1 only and has no web UI.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise PipelineError(f"backend=spark needs pyspark, which is not installed; {INSTALL_HINT}") from None
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Executors run this same interpreter unless the user chose another one.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("tune").config("spark.executorEnv.OMP_NUM_THREADS", "1")
    builder = builder.config("spark.executorEnv.OPENBLAS_NUM_THREADS", "1")
    if master is not None:
        builder = builder.master(master)
    if is_local_master(master):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.ui.enabled", "false").config("spark.driver.bindAddress", "127.0.0.1")
    try:
        session = builder.getOrCreate()
    except Exception as error:
        raise PipelineError(
            f"could not start Spark (master {master or 'auto'}): {one_line(str(error), 160)}; "
            "Spark 4 needs Java 17 or newer on PATH or in JAVA_HOME"
        ) from None
    session.sparkContext.setLogLevel("WARN")
    return session


def ship_steps_package(session: Any) -> None:
    """Executors unpickle the objective and the splits, which live in this package: send it to them."""
    # Spark fetches the file when a task first needs it: it must outlive this call, so it goes when we exit.
    folder = tempfile.mkdtemp(prefix="tune-spark-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    archive = f"{folder}/steps.zip"
    # The sources only: bytecode is this Python's, written as modules are imported (so it changes between two
    # calls, and Spark refuses a second file of the same name with other contents in one session); executors
    # compile what they import.
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for source in sorted(STEPS_DIR.rglob("*.py")):
            zipped.write(source, source.relative_to(STEPS_DIR.parent))
    session.sparkContext.addPyFile(archive)
