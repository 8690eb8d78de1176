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

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=run_name):
        yield mlflow
