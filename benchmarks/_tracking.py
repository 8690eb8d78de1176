"""MLflow logging shared by the benchmarks: one run per benchmark in the experiment "nanomorph-benchmarks",
in the project's store (`MLFLOW_TRACKING_URI`, else the embedded sqlite `mlflow.db`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

EXPERIMENT = "nanomorph-benchmarks"


@contextlib.contextmanager
def benchmark_run(run_name: str) -> Iterator:
    """An active MLflow run named `run_name`; yields the mlflow module to log with."""
    import mlflow

    from nanomorph.tracking.runs import create_sqlite_store

    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    create_sqlite_store(uri)  # a benchmark killed while the store is first created leaves no half-made store
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=run_name):
        yield mlflow
