"""The register stage on a tiny project, twice: the first version is champion, the second is judged against it."""

from __future__ import annotations

import json
import re
import shutil

import mlflow
import numpy as np
import pytest
import yaml

from nanomorph.cli import main as cli_main
from nanomorph.data.synthetic import CLASSES
from nanomorph.errors import NanomorphError
from nanomorph.stages.register import choose_encoder, main, training_features
from nanomorph.tracking.registry import CONTENT_TAG, PROMOTE_ENV


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


def test_register_recommends_promotion_moves_champion_and_unchanged_models_are_not_registered_again(
        tmp_path, monkeypatch, capsys, make_register_project):
    project = make_register_project(tmp_path)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(project)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)

    def aliases(name: str) -> dict[str, str]:
        return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}

    # CI on main: the flag lets the stage apply its recommendation.
    monkeypatch.setenv(PROMOTE_ENV, "1")
    assert main([]) == 0
    first = json.loads((project / "metrics/register.json").read_text())
    # The store inside the checkout is named relative to it: the record does not depend on the clone's path.
    assert first["store"] == {"uri": "sqlite:///mlflow.db", "kind": "local store of this checkout"}
    choice = first["encoder_choice"]
    assert set(choice["cv_accuracy"]) == {"simclr", "barlow_twins"}  # never the random baseline
    assert choice["encoder"] == max(sorted(choice["cv_accuracy"]), key=choice["cv_accuracy"].get)
    expected_dice = {"simclr": 0.5, "barlow_twins": 0.6}[choice["encoder"]]
    assert first["segmenter"]["sweep_reference"] == {"encoder": choice["encoder"], "train_images": 4,
                                                     "median_dice": expected_dice}
    for kind in ("classifier", "segmenter"):
        entry = first[kind]
        assert (entry["version"], entry["recommendation"], entry["registered"], entry["previous_champion"]) == (
            "1", "champion", True, None)
        assert entry["train_images"] == 12 and entry["eval_images"] == 4  # the fixed 20 % split, 1 image per class
        assert 0.0 <= entry["score"] <= 1.0
        assert aliases(entry["name"]) == {"champion": "1"}
        tags = client.get_model_version(entry["name"], "1").tags
        assert tags["nanomorph.promoted_via"] == f"register stage ({PROMOTE_ENV}=1)"
        assert tags["nanomorph.replaced_champion"] == "none" and tags["nanomorph.promoted_by"]
        assert re.fullmatch(r"[0-9a-f]{64}", tags[CONTENT_TAG])
        # A model card as the version's description and as an artifact of the run that logged it.
        version = client.get_model_version(entry["name"], "1")
        card = version.description
        for text in (f"# {entry['name']} ({kind})", "## Intended use", "## Training data", "SYNTHETIC",
                     f"{entry['score']:.3f} on {entry['eval_images']} held-out images", "classical baseline",
                     "## Limitations"):
            assert text in card, text
        assert "model card" in client.get_registered_model(entry["name"]).description
        assert mlflow.artifacts.load_text(f"runs:/{version.run_id}/model_cards/{kind}.md") == card
        # Each logged model carries its own evaluation metric only.
        assert version.source.startswith("models:/m-")  # MLflow 3 registers the logged model by its id
        logged = client.get_logged_model(version.source.removeprefix("models:/"))
        assert {m.key for m in logged.metrics} == {f"{kind}.eval_{entry['metric']}"}
        assert "content_sha256" not in entry  # it covers the code too: register.json stays a function of its deps

    # An ordinary run (or an experiment) with other params: a new version, judged, but champion stays.
    monkeypatch.delenv(PROMOTE_ENV)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["probe"]["C"] = 0.01
    params["segment"]["lr"] = 3e-3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert main([]) == 0
    second = json.loads((project / "metrics/register.json").read_text())
    assert second["eval_split"] == first["eval_split"]
    for kind in ("classifier", "segmenter"):
        entry = second[kind]
        previous = entry["previous_champion"]
        assert entry["version"] == "2" and entry["registered"] and previous["version"] == "1"
        assert previous["score"] == pytest.approx(first[kind]["score"])  # the champion, re-scored, scores the same
        beats = entry["score"] > previous["score"] + entry["margin"]
        assert entry["recommendation"] == ("champion" if beats else "challenger")
        assert aliases(entry["name"]) == {"champion": "1", "challenger": "2"}
        tags = [client.get_model_version(entry["name"], v).tags for v in ("1", "2")]
        for key in ("git_commit", "dvc_data_hash", "params_hash", f"eval.{entry['metric']}", "nanomorph.decision"):
            assert key in tags[0] and key in tags[1]
        assert tags[1]["nanomorph.decision"] == entry["recommendation"]
        assert "nanomorph.promoted_by" not in tags[1]
        assert tags[0]["params_hash"] != tags[1]["params_hash"]
        assert float(tags[1][f"eval.{entry['metric']}"]) == pytest.approx(entry["score"], abs=1e-6)

    # The same params again: same content, nothing logged or registered again.
    assert main([]) == 0
    third = json.loads((project / "metrics/register.json").read_text())
    for kind in ("classifier", "segmenter"):
        entry = third[kind]
        assert (entry["version"], entry["registered"]) == ("2", False)
        assert entry["score"] == pytest.approx(second[kind]["score"])
        assert len(client.search_model_versions(f"name = '{entry['name']}'")) == 2
    assert "unchanged, not registered again" in capsys.readouterr().out

    # Promotion is a decision: by hand, with a reason, recorded on the version.
    name = second["classifier"]["name"]
    capsys.readouterr()
    if second["classifier"]["recommendation"] == "challenger":
        assert cli_main(["promote", "classifier", "--reason", "try"]) == 2
        assert "was recommended" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    assert cli_main(["promote", "classifier", "--version", "2", "--reason", "wider C search"]) == 0
    assert aliases(name) == {"champion": "2", "challenger": "2"}
    tags = client.get_model_version(name, "2").tags
    assert (tags["nanomorph.promoted_by"], tags["nanomorph.promotion_reason"], tags["nanomorph.replaced_champion"],
            tags["nanomorph.promoted_via"]) == ("alice", "wider C search", "1", "nanomorph promote")
    shutil.rmtree(project / "mlartifacts", ignore_errors=True)


def test_training_features_come_from_the_probe_stages_cache_or_are_extracted_when_it_has_none(
        tmp_path, monkeypatch, make_register_project):
    from pathlib import Path

    from nanomorph.config import load_config
    from nanomorph.data.io import load_image_stack
    from nanomorph.data.validation import accepted
    from nanomorph.models.encoder import resolve_encoder
    from nanomorph.probe.features import extract_features
    from nanomorph.stages._probe_inputs import FEATURE_DIR, feature_sets, probe_data

    monkeypatch.chdir(make_register_project(tmp_path))
    cfg = load_config("params.yaml")
    pr = cfg.probe
    rows = accepted(cfg.validate.manifest, "nanowire")
    train_idx = np.arange(1, len(rows), 2)
    train_images = load_image_stack([Path(p) for p in rows["path"].iloc[train_idx]], pr.feature_size)
    encoder = resolve_encoder("simclr", cfg.pretrain.arch, cfg.pretrain.seed)
    expected = extract_features(encoder, train_images, batch_size=64, device="cpu", stages=pr.feature_stages,
                                dihedral=pr.feature_dihedral)
    assert not FEATURE_DIR.exists()
    extracted = training_features(cfg, "simclr", encoder, rows, train_idx, train_images, "cpu")
    np.testing.assert_array_equal(extracted, expected)
    assert not FEATURE_DIR.exists()  # register never writes the probe stage's cache

    feature_sets(cfg, probe_data(cfg), extract=True)  # what the probe stage stores: every image's features
    no_images = np.empty((0, pr.feature_size, pr.feature_size), dtype=np.float32)
    cached = training_features(cfg, "simclr", encoder, rows, train_idx, no_images, "cpu")  # images not read
    np.testing.assert_allclose(cached, expected, rtol=1e-5, atol=1e-6)
    other = resolve_encoder("barlow_twins", cfg.pretrain.arch, cfg.pretrain.seed)
    assert not np.allclose(training_features(cfg, "barlow_twins", other, rows, train_idx, train_images, "cpu"),
                           cached)


def test_a_version_that_does_not_beat_the_classical_baseline_is_never_champion(tmp_path, monkeypatch,
                                                                               make_register_project):
    project = make_register_project(tmp_path, beat_classical=True)
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
        assert entry["recommendation"] == ("champion" if beats else "challenger")
        assert entry["registered"]
        assert mlflow.MlflowClient().get_registered_model(entry["name"]).aliases == {"challenger": 1}
        if not beats:
            assert "does not beat the classical baseline" in entry["reason"]
    shutil.rmtree(project / "mlartifacts", ignore_errors=True)


def test_lbfgs_stopping_at_max_iter_is_one_line_and_other_warnings_pass(capsys):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from nanomorph.stages.register import _convergence_in_one_line

    with pytest.warns(UserWarning, match="something else"):
        with _convergence_in_one_line(1000):
            for _ in range(3):
                warnings.warn("lbfgs failed to converge\n" + "details\n" * 8, ConvergenceWarning)
            warnings.warn("something else", UserWarning)
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "3 probe fit(s) stopped at probe.max_iter=1000" in out


def test_libraries_deprecation_warnings_stay_hidden_as_python_hides_them():
    import subprocess
    import sys

    script = (
        "import warnings\n"
        "from nanomorph.stages.register import _convergence_in_one_line\n"
        "with _convergence_in_one_line(10):\n"
        "    warnings.warn_explicit('old api', DeprecationWarning, 'mlflow/models/utils.py', 211, module='mlflow.models.utils')\n"
        "    warnings.warn('visible', UserWarning)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "visible" in done.stderr and "old api" not in done.stderr
