import mlflow

from nanomorph.tracking.runs import PIPELINE_TAG, flatten, stage_run


def _open(tmp_path, stage, params_hash="h1"):
    return stage_run(stage, repo_root=tmp_path, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                     experiment="nanomorph-test", artifact_dir="mlartifacts", profile="micro",
                     params_hash=params_hash, params={"probe": {"C": 1.0, "sizes": [1, 2]}})


def test_stages_of_one_configuration_nest_under_one_parent(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with _open(tmp_path, "probe") as run:
        mlflow.log_metric("accuracy", 0.5)
        first = run.info.run_id
    with _open(tmp_path, "segment") as run:
        second = run.info.run_id
    with _open(tmp_path, "probe", params_hash="h2") as run:
        other = run.info.run_id
    client = mlflow.MlflowClient()
    parent_of = {rid: client.get_run(rid).data.tags["mlflow.parentRunId"] for rid in (first, second, other)}
    assert parent_of[first] == parent_of[second] != parent_of[other]
    child = client.get_run(first)
    assert child.data.params["probe.C"] == "1.0"
    assert child.data.metrics["accuracy"] == 0.5
    assert child.data.tags["nanomorph.stage"] == "probe"
    assert {"git_commit", "dvc_data_hash", "params_hash"} <= set(child.data.tags)
    assert PIPELINE_TAG in client.get_run(parent_of[first]).data.tags
    assert (tmp_path / "mlartifacts").is_dir()


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
