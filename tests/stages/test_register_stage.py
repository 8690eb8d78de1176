"""The register stage on a tiny project, twice: the first version is champion, the second is judged against it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from nanomorph.data.synthetic import CLASSES, write_nanowire_dataset
from nanomorph.data.validation import sha256_of
from nanomorph.errors import NanomorphError
from nanomorph.models.encoder import random_encoder, save_encoder
from nanomorph.stages.register import choose_encoder, main

ROOT = Path(__file__).resolve().parents[2]


def _features(informative: bool, seed: int, per_class: int = 6, dim: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(4 * per_class, dim))
    if informative:
        X[np.arange(4 * per_class), np.repeat(np.arange(4), per_class)] += 4.0  # class k lifts feature k
    return X


def test_encoder_choice_is_cross_validated_on_the_training_part():
    labels = np.repeat(list(CLASSES), 6)
    features = {"simclr": _features(False, 0), "barlow_twins": _features(True, 1)}
    choice = choose_encoder(features, labels, folds=3, C=1.0, tol=1e-6, max_iter=500, seed=0)
    assert choice["encoder"] == "barlow_twins" and choice["cv_folds"] == 3
    assert choice["cv_accuracy"]["barlow_twins"] > 0.9 > choice["cv_accuracy"]["simclr"]
    # Same inputs, same folds, same choice and scores.
    assert choose_encoder(features, labels, folds=3, C=1.0, tol=1e-6, max_iter=500, seed=0) == choice
    with pytest.raises(NanomorphError, match="cv_folds=7"):  # only 6 training images per class
        choose_encoder(features, labels, folds=7, C=1.0, tol=1e-6, max_iter=500, seed=0)
    with pytest.raises(NanomorphError, match="no pretrained encoder"):
        choose_encoder({}, labels, folds=3, C=1.0, tol=1e-6, max_iter=500, seed=0)


def _project(tmp_path: Path, beat_classical: bool = False) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "micro"
    params["registry"]["cv_folds"] = 3  # 3 training images per class here
    params["registry"]["beat_classical"] = beat_classical
    # two pretrained candidates (as the paper profile has), so the encoder choice is exercised
    params["probe"]["encoders"] = ["simclr", "barlow_twins", "random", "classical"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_nanowire_dataset(project / "data/raw/nanowires", CLASSES, images_per_class=4, size=32, seed=0, progress=False)
    rows = []
    for image in sorted((project / "data/raw/nanowires").glob("*/images/*.tif")):
        label = image.parent.parent.name
        rows.append({"kind": "nanowire", "path": str(image.relative_to(project)), "label": label,
                     "mask_path": str((image.parent.parent / "labels" / f"{image.stem}.png").relative_to(project)),
                     "sha256": sha256_of(image), "status": "ok"})
    (project / "data/validated").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(project / "data/validated/manifest.csv", index=False)
    for seed, name in enumerate(("simclr", "barlow_twins"), start=1):
        save_encoder(project / f"models/encoders/{name}.pt", random_encoder("resnet18", seed), {"method": name})
    (project / "metrics").mkdir()
    (project / "metrics/segment.json").write_text(json.dumps({"median": {
        "simclr": {"n1": {"dice": 0.3, "iou": 0.2}, "n4": {"dice": 0.5, "iou": 0.4}},
        "barlow_twins": {"n1": {"dice": 0.2, "iou": 0.1}, "n4": {"dice": 0.6, "iou": 0.5}}}}))
    return project


def test_register_twice_promotes_by_the_rule(tmp_path, monkeypatch):
    project = _project(tmp_path)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(project)

    assert main([]) == 0
    first = json.loads((project / "metrics/register.json").read_text())
    choice = first["encoder_choice"]
    assert set(choice["cv_accuracy"]) == {"simclr", "barlow_twins"}  # never the random baseline
    assert choice["encoder"] == max(sorted(choice["cv_accuracy"]), key=choice["cv_accuracy"].get)
    expected_dice = {"simclr": 0.5, "barlow_twins": 0.6}[choice["encoder"]]
    assert first["segmenter"]["sweep_reference"] == {"encoder": choice["encoder"], "train_images": 4,
                                                     "median_dice": expected_dice}
    for kind in ("classifier", "segmenter"):
        entry = first[kind]
        assert (entry["version"], entry["alias"], entry["previous_champion"]) == ("1", "champion", None)
        assert entry["train_images"] == 12 and entry["eval_images"] == 4  # the fixed 20 % split, 1 image per class
        assert 0.0 <= entry["score"] <= 1.0

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["probe"]["C"] = 0.01
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert main([]) == 0
    second = json.loads((project / "metrics/register.json").read_text())
    assert second["eval_split"] == first["eval_split"]

    client = mlflow.MlflowClient(tracking_uri=uri)
    for kind in ("classifier", "segmenter"):
        entry = second[kind]
        previous = entry["previous_champion"]
        assert entry["version"] == "2" and previous["version"] == "1"
        assert previous["score"] == pytest.approx(first[kind]["score"])  # the champion, re-scored, scores the same
        beats = entry["score"] > previous["score"] + entry["margin"]
        assert entry["alias"] == ("champion" if beats else "challenger")
        name = entry["name"]
        aliases = {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}
        assert aliases == second["registry"][name]
        assert aliases["champion"] == ("2" if beats else "1")
        tags = [client.get_model_version(name, v).tags for v in ("1", "2")]
        for key in ("git_commit", "dvc_data_hash", "params_hash", f"eval.{entry['metric']}", "nanomorph.decision"):
            assert key in tags[0] and key in tags[1]
        assert tags[0]["params_hash"] != tags[1]["params_hash"]
        assert float(tags[1][f"eval.{entry['metric']}"]) == pytest.approx(entry["score"], abs=1e-6)
    shutil.rmtree(project / "mlartifacts", ignore_errors=True)


def test_a_version_that_does_not_beat_the_classical_baseline_is_never_champion(tmp_path, monkeypatch):
    project = _project(tmp_path, beat_classical=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    monkeypatch.chdir(project)
    assert main([]) == 0
    report = json.loads((project / "metrics/register.json").read_text())
    assert report["classical_baselines"]["classifier"]["method"] == "classical"
    assert set(report["classical_baselines"]["segmenter"]["all"]) == {"otsu", "local"}
    for kind in ("classifier", "segmenter"):
        entry = report[kind]
        baseline = entry["classical_baseline"]
        assert 0.0 <= baseline["score"] <= 1.0
        # No champion yet: the classical baseline alone decides.
        beats = entry["score"] > baseline["score"]
        assert entry["alias"] == ("champion" if beats else "challenger")
        if not beats:
            assert "does not beat the classical baseline" in entry["reason"]
    shutil.rmtree(project / "mlartifacts", ignore_errors=True)
