import mlflow
import mlflow.store.db.utils
import pytest

from nanomorph.tracking.runs import PIPELINE_TAG, configure, flatten, log_curve, log_parent_metrics, stage_run


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
    # The parent carries the stages' params and identity too, so pipelines compare at that level.
    parent = client.get_run(parent_of[first])
    assert parent.data.params["probe.C"] == "1.0" and parent.data.params["probe.sizes"] == "[1, 2]"
    assert parent.data.tags["git_commit"] == child.data.tags["git_commit"]


def test_curves_have_the_label_budget_as_step_and_the_parent_gets_the_headline(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "wider-crops")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    with _open(tmp_path, "probe") as run:
        log_curve("simclr.median_accuracy", {8: 0.8, 1: 0.6, 2: 0.7})
        log_parent_metrics(run, {"probe.simclr.median_accuracy.n8": 0.8})
        run_id = run.info.run_id
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run_id, "simclr.median_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.6), (2, 0.7), (8, 0.8)]
    tags = client.get_run(run_id).data.tags
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.metrics == {"probe.simclr.median_accuracy.n8": 0.8}
    for run_tags in (tags, parent.data.tags):  # the MLflow run names its DVC experiment
        assert run_tags["dvc.exp_name"] == "wider-crops" and run_tags["dvc.exp_baseline_rev"] == "abc123"


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_a_store_whose_creation_was_interrupted_is_not_left_half_made(tmp_path, monkeypatch):
    """MLflow creates the tables, then stamps their schema version: interrupted in between (here: Ctrl-C during
    the stamp), a store created in place would be refused as out of date by every later run."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "mlflow.db"

    def interrupted(engine):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(mlflow.store.db.utils, "_upgrade_db", interrupted)
        with pytest.raises(KeyboardInterrupt):
            configure(f"sqlite:///{store}", "nanomorph-test", tmp_path / "mlartifacts")
    assert list(tmp_path.iterdir()) == []  # neither the store nor the file it was being created in
    with _open(tmp_path, "probe") as run:  # the next run creates the store afresh and works
        mlflow.log_metric("accuracy", 0.5)
    assert mlflow.MlflowClient().get_run(run.info.run_id).data.metrics == {"accuracy": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlartifacts", "mlflow.db"]
