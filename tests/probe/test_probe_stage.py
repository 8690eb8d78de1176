"""The probe stage and the two stages that read its features (anchors, advisor) end to end on a tiny generated
image set with the random-init encoder (no pretraining)."""

import hashlib
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from nanomorph.stages._common import stage_main
from nanomorph.stages.advisor import run_advisor
from nanomorph.stages.anchors import run_anchors
from nanomorph.stages.probe import run_probe

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("bundle", "dispersed", "network", "singular")
DENSITY = {"bundle": 0.15, "dispersed": 0.05, "network": 0.3, "singular": 0.02}


def _last_run_metrics() -> pd.Series:
    """The metrics of the newest MLflow run in the test's tracking store, by metric name."""
    runs = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time DESC"], max_results=1)
    row = runs.iloc[0]
    return pd.Series({k.removeprefix("metrics."): v for k, v in row.items() if k.startswith("metrics.")})


def _write_dataset(root: Path, per_class: int = 10) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for label in CLASSES:
        for i in range(per_class):
            mask = rng.random((32, 32)) < DENSITY[label] * rng.uniform(0.7, 1.3)
            image = np.clip(0.7 - 0.4 * mask + rng.normal(0, 0.05, mask.shape), 0, 1)
            image_path = root / "raw" / label / f"{label}_{i}.png"
            mask_path = root / "raw" / label / f"{label}_{i}_mask.png"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 255).astype(np.uint8)).save(image_path)
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
            rows.append({"kind": "nanowire", "path": str(image_path.relative_to(root)), "label": label,
                         "mask_path": str(mask_path.relative_to(root)), "status": "ok",
                         "sha256": hashlib.sha256(image_path.read_bytes()).hexdigest()})
    (root / "data/validated").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "data/validated/manifest.csv", index=False)


@pytest.fixture
def project(tmp_path, monkeypatch):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "micro"
    params["probe"].update({"encoders": ["random"], "figure_n": 2, "advisor_budgets": [4]})
    params["probe"]["scale"]["micro"].update({"labels_per_class": [1, 2], "split_seeds": 2, "anchor_probes": 6,
                                              "advisor_seeds": 2, "advisor_random_draws": 2, "tsne_perplexity": 5})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "metrics").mkdir()
    _write_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_stage_writes_every_output_and_reuses_its_feature_cache(project):
    assert stage_main("probe", run_probe, argv=[]) == 0
    results = pd.read_csv("metrics/probe_results.csv")
    assert list(results.columns[:5]) == ["encoder", "classifier", "encoder_seed", "split_seed", "n"]
    assert set(results.encoder) == {"random", "random+knn"} and len(results) == 2 * 2 * 2
    for name in ("probe_stats", "probe_summary"):
        assert len(pd.read_csv(f"metrics/{name}.csv")) > 0, name
    assert not Path("metrics/probe_anchor.csv").exists() and not Path("metrics/probe_advisor.csv").exists()
    figures = sorted(p.name for p in Path("figures/probe").glob("*.png"))
    assert figures == ["accuracy_vs_labels.png", "confusion_n2.png", "tsne_random.png"]
    first = json.loads(Path("metrics/probe.json").read_text())
    assert set(first["median_accuracy"]) == {"random"} and set(first["baselines"]) == {"random+knn"}
    assert "sweep_seconds" not in first and "feature_cache" not in first  # machine- and history-dependent
    assert _last_run_metrics()[["feature_cache_extracted", "feature_cache_reused"]].tolist() == [1, 0]
    # The accuracy-vs-labels curve per method, with the label budget as the metric's step (drawn by the MLflow UI).
    run_id = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time DESC"],
                                max_results=1).iloc[0]["run_id"]
    for method, by_n in {**first["median_accuracy"], **first["baselines"]}.items():
        history = mlflow.MlflowClient().get_metric_history(run_id, f"{method.replace('+', '-')}.median_accuracy")
        assert sorted((m.step, m.value) for m in history) == sorted((int(k[1:]), v) for k, v in by_n.items())
    cached = sorted(p.name for p in Path("data/features").iterdir())
    assert len(cached) == 3 and "index.json" in cached

    assert stage_main("probe", run_probe, argv=[]) == 0
    second = json.loads(Path("metrics/probe.json").read_text())
    assert _last_run_metrics()[["feature_cache_extracted", "feature_cache_reused"]].tolist() == [0, 1]
    assert second == first  # deterministic given the params, cache hit or not


def test_bad_figure_budget_is_a_one_line_error(project, capsys):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["probe"]["figure_n"] = 3
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stage_main("probe", run_probe, argv=[]) == 2
    assert "probe.figure_n = 3 is not one of probe.labels_per_class" in capsys.readouterr().err


def test_anchors_and_advisor_read_the_probe_stages_features_without_writing_them(project):
    assert stage_main("probe", run_probe, argv=[]) == 0
    cache = {p.name: p.read_bytes() for p in Path("data/features").iterdir()}

    assert stage_main("anchors", run_anchors, argv=[]) == 0
    anchors = pd.read_csv("metrics/probe_anchor.csv")
    assert len(anchors) == 6 and (anchors.density_network > anchors.density_dispersed).all()
    summary = json.loads(Path("metrics/anchors.json").read_text())
    assert set(summary) == {"random"} and summary["random"]["probes"] == 6
    assert summary["random"]["inverted"] == int(anchors.inverted.sum())

    assert stage_main("advisor", run_advisor, argv=[]) == 0
    advisor = pd.read_csv("metrics/probe_advisor.csv")
    assert advisor[["encoder", "k", "seeds"]].values.tolist() == [["random", 4, 2]]
    payload = json.loads(Path("metrics/advisor.json").read_text())
    assert payload["random"]["k4"]["advisor"] == pytest.approx(advisor.advisor_accuracy[0])
    assert {p.name: p.read_bytes() for p in Path("data/features").iterdir()} == cache


def test_anchors_before_the_probe_stage_is_a_one_line_error(project, capsys):
    assert stage_main("anchors", run_anchors, argv=[]) == 2
    err = capsys.readouterr().err
    assert "holds no features of encoder 'random'" in err and "run the probe stage first" in err
    assert not Path("data/features").exists() and not Path("metrics/probe_anchor.csv").exists()


def test_each_probe_family_stage_depends_on_its_own_settings_only():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = {name: set(stages[name]["params"]) for name in ("probe", "anchors", "advisor")}
    assert "probe" not in params["probe"]  # not the whole section
    assert not {k for k in params["probe"] if "anchor" in k or "advisor" in k}
    assert "probe.scale.cpu.anchor_probes" in params["anchors"] and not {k for k in params["anchors"] if "advisor" in k}
    assert {"probe.advisor_budgets", "probe.scale.cpu.advisor_seeds"} <= params["advisor"]
    assert not {k for k in params["advisor"] if "anchor" in k or "labels_per_class" in k}
    for name in ("anchors", "advisor"):
        assert "data/features" in stages[name]["deps"]
