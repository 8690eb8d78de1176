"""The register stage on a tiny project, twice: the first version is champion, the second is judged against it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from nanomorph.data.synthetic import CLASSES, write_nanowire_dataset
from nanomorph.data.validation import sha256_of
from nanomorph.errors import NanomorphError
from nanomorph.models.encoder import random_encoder, save_encoder
from nanomorph.stages.register import choose_encoder, main

ROOT = Path(__file__).resolve().parents[2]


def test_encoder_choice_ignores_the_random_baseline_and_falls_back_to_a_shared_budget():
    probe = {"median_accuracy": {"simclr": {"n1": 0.4, "n8": 0.6}, "barlow_twins": {"n1": 0.5, "n8": 0.55},
                                 "random": {"n8": 0.9}}}
    encoders = ("simclr", "barlow_twins", "random")
    assert choose_encoder(probe, 8, encoders)["encoder"] == "simclr"
    fallback = choose_encoder(probe, 16, encoders)  # nobody probed 16 labels/class: the largest shared budget
    assert (fallback["encoder"], fallback["labels_per_class"]) == ("simclr", 8)
    assert choose_encoder(probe, 1, encoders)["encoder"] == "barlow_twins"
    assert choose_encoder(probe, 8, ("barlow_twins", "random"))["encoder"] == "barlow_twins"  # configured only
    with pytest.raises(NanomorphError, match="no pretrained encoder"):
        choose_encoder({"median_accuracy": {"random": {"n8": 0.9}}}, 8, encoders)


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "micro"
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
    (project / "metrics/probe.json").write_text(json.dumps({"median_accuracy": {
        "simclr": {"n1": 0.4, "n8": 0.6}, "barlow_twins": {"n1": 0.5, "n8": 0.55}, "random": {"n8": 0.9}}}))
    (project / "metrics/segment.json").write_text(json.dumps({"median": {
        "simclr": {"n1": {"dice": 0.3, "iou": 0.2}, "n4": {"dice": 0.5, "iou": 0.4}}}}))
    return project


def test_register_twice_promotes_by_the_rule(tmp_path, monkeypatch):
    project = _project(tmp_path)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(project)

    assert main([]) == 0
    first = json.loads((project / "metrics/register.json").read_text())
    assert first["encoder_choice"]["encoder"] == "simclr"
    assert first["segmenter"]["sweep_reference"] == {"encoder": "simclr", "train_images": 4, "median_dice": 0.5}
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
