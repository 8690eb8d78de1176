"""MLflow tracking for pipeline stages.

Every stage runs inside `stage_run`: an MLflow run nested under one parent run per pipeline
configuration (same git commit and same params.yaml content -> same parent), so one `dvc repro` shows up
as a parent with a child per stage that ran. The store is an embedded sqlite file at the project root
unless MLFLOW_TRACKING_URI says otherwise.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from nanomorph.errors import StageInterrupted

PIPELINE_TAG = "nanomorph.pipeline_key"


def git_commit(repo_root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def dvc_data_hash(repo_root: Path) -> str:
    """md5 of the raw data as dvc recorded it for the `fetch` stage outputs ('unknown' before the first fetch)."""
    lock = repo_root / "dvc.lock"
    if not lock.is_file():
        return "unknown"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    outs = stages.get("fetch", {}).get("outs", [])
    digests = sorted(f"{o['path']}:{o.get('md5', '')}" for o in outs)
    return hashlib.sha256("|".join(digests).encode()).hexdigest()[:16] if digests else "unknown"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def create_sqlite_store(uri: str) -> None:
    """Create the sqlite store of `uri` if it does not exist yet, under a temporary name renamed into place once
    MLflow has created its tables and recorded their schema version.

    MLflow creates the tables first and stamps the version after; a run killed in between (Ctrl-C or dvc's
    SIGTERM on the very first stage) would leave a store that every later run refuses as "out-of-date database
    schema". Created aside, an interrupted creation leaves no file behind (or, if killed outright, a
    `.<name>.creating-*` file), never a half-made store.
    Any other URI (a server, an existing file, in-memory) is left alone."""
    import mlflow

    prefix = "sqlite:///"
    if not uri.startswith(prefix) or "?" in uri:
        return
    path = Path(uri[len(prefix):])
    if str(path) in ("", ":memory:") or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique per call: MLflow caches a store per URI, and a cached one would outlive its renamed file
    aside = path.with_name(f".{path.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        mlflow.MlflowClient(tracking_uri=f"{prefix}{aside}").search_experiments(max_results=1)  # creates the tables
        os.replace(aside, path)
    finally:
        aside.unlink(missing_ok=True)


def configure(tracking_uri: str, experiment: str, artifact_dir: str | Path) -> str:
    """Point MLflow at the store and experiment (created when absent: artifacts under `artifact_dir` for a
    local store, the server's own artifact store for an http(s) one); returns the experiment id."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    create_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        mlflow.set_experiment(experiment_id=found.experiment_id)
        return found.experiment_id
    if uri.startswith(("http://", "https://")):
        # A tracking server keeps the artifacts itself (proxied: `nanomorph registry-server`); a local folder
        # of this checkout would be unreachable for everyone else.
        experiment_id = mlflow.create_experiment(experiment)
    else:
        artifact_root = Path(artifact_dir).resolve()
        artifact_root.mkdir(parents=True, exist_ok=True)
        experiment_id = mlflow.create_experiment(experiment, artifact_location=artifact_root.as_uri())
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _parent_run_id(experiment_id: str, key: str, profile: str) -> str:
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'",
        max_results=1, order_by=["attributes.start_time DESC"], output_format="list",
    )
    if runs:
        return runs[0].info.run_id
    run = mlflow.MlflowClient().create_run(
        experiment_id, run_name=f"pipeline-{profile}-{key[:8]}", tags={PIPELINE_TAG: key, "nanomorph.profile": profile}
    )
    return run.info.run_id


def dvc_experiment_tags() -> dict[str, str]:
    """Tags naming the DVC experiment a run belongs to: `dvc exp run` gives its stages the baseline commit
    (DVC_EXP_BASELINE_REV) and, when named, the experiment's name (DVC_EXP_NAME); empty under plain `dvc repro`."""
    names = {"DVC_EXP_NAME": "dvc.exp_name", "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev"}
    return {tag: os.environ[env] for env, tag in names.items() if os.environ.get(env)}


def _log_parent_params(parent_id: str, params: Mapping[str, str]) -> None:
    """Log `params` on the pipeline's parent run; a key already there keeps its value (same commit and params
    file give the same parent, so a value can only repeat)."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient()
    present = client.get_run(parent_id).data.params
    new = [Param(k, v) for k, v in params.items() if k not in present]
    for start in range(0, len(new), 100):  # MLflow's batch limit
        client.log_batch(parent_id, params=new[start:start + 100])


def log_curve(name: str, values: Mapping[int, float]) -> None:
    """Log `values` {label budget: value} as one metric with the budget as its step, so the MLflow UI draws it
    as a curve against the number of labels (a flat key per budget draws nothing)."""
    import mlflow

    for step, value in sorted(values.items()):
        mlflow.log_metric(name, float(value), step=int(step))


def log_defined_metrics(metrics: Mapping[str, float | None]) -> None:
    """Log the metrics that are defined: None, NaN or inf (e.g. an undefined test) is left out, as MLflow
    cannot chart it."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)})


def log_parent_metrics(run: Any, metrics: Mapping[str, float]) -> None:
    """Log headline `metrics` on the pipeline's parent run of the active stage `run`."""
    from mlflow import MlflowClient

    parent_id = run.data.tags.get("mlflow.parentRunId")
    if parent_id:
        client = MlflowClient()
        for key, value in metrics.items():
            client.log_metric(parent_id, key, float(value))


@contextmanager
def stage_run(stage: str, *, repo_root: Path, tracking_uri: str, experiment: str, artifact_dir: str,
              profile: str, params_hash: str, params: Mapping[str, Any]) -> Iterator[Any]:
    """Open the stage's MLflow run nested under the pipeline's parent run; yields the active child run."""
    import mlflow

    experiment_id = configure(tracking_uri, experiment, repo_root / artifact_dir)
    commit = git_commit(repo_root)
    key = hashlib.sha256(f"{commit}:{params_hash}".encode()).hexdigest()[:16]
    parent_id = _parent_run_id(experiment_id, key, profile)
    with mlflow.start_run(run_id=parent_id):
        with mlflow.start_run(run_name=stage, nested=True) as run:
            identity = {"git_commit": commit, **dvc_experiment_tags()}
            mlflow.set_tags({"nanomorph.stage": stage, "nanomorph.profile": profile, **identity,
                             "dvc_data_hash": dvc_data_hash(repo_root), "params_hash": params_hash})
            flat = {k: str(v)[:500] for k, v in flatten(params).items()}
            mlflow.log_params(flat)
            # The parent run carries the identity and every stage's params too, so pipelines compare at that level.
            client = mlflow.MlflowClient()
            for key, value in identity.items():
                client.set_tag(parent_id, key, value)
            _log_parent_params(parent_id, flat)
            try:
                yield run
            except (KeyboardInterrupt, StageInterrupted):
                # Interrupted, not failed: end the stage's run and the pipeline's parent run as KILLED (MLflow's
                # own exit would call both FAILED); any other exception ends them FAILED.
                mlflow.end_run(status="KILLED")
                mlflow.end_run(status="KILLED")
                raise
