"""Shared by the stage tests: a scratch project on the micro profile with its own MLflow store."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A scratch project on the micro profile, tracked to its own MLflow store; returns (folder, tracking URI)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "micro"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path, uri
