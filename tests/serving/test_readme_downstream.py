"""README's "Using the models downstream" commands, run as written against a registry of tiny models.

The registry uses the project's default model names (nanomorph-classifier / nanomorph-segmenter, from a copy
of params.yaml whose store is the test's), so only the user's own inputs are substituted: `my_images/` is a
folder of held-out images, `montage.tif` one of them, port 5001 a free port. The segmenter has a version 2
that the register stage would have recommended for champion, so the first `promote` (no --version) has
something to promote, as after a real `dvc repro`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from conftest import SIZE, free_port, wait_ready
from nanomorph.serving.models import atypicality_limit
from nanomorph.probe.features import extract_features
from nanomorph.serving.package import log_classifier, log_segmenter
from nanomorph.tracking.registry import CHAMPION, Decision, apply_decision, register_version, version_by_alias

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CLASSIFIER, SEGMENTER = "nanomorph-classifier", "nanomorph-segmenter"


def readme_commands() -> list[str]:
    """The first bash block under '## Using the models downstream', one command per line (comments dropped)."""
    section = README.read_text().split("## Using the models downstream", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens:
            commands.append(tokens)
    return commands


@pytest.fixture()
def project(tiny_registry, tmp_path) -> Path:
    """A project folder: params.yaml (the repository's, store in the folder) and a store holding the tiny
    models under the default names; v1 champions, segmenter v2 recommended for champion."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tracking"]["tracking_uri"] = "sqlite:///mlflow.db"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient()
        experiment = mlflow.create_experiment("downstream", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            limit = atypicality_limit(tiny_registry.probe, extract_features(tiny_registry.encoder,
                                                                            tiny_registry.images, batch_size=64))
            classifier = log_classifier(tiny_registry.root / "encoder.pt", tiny_registry.probe, image_size=SIZE,
                                        encoder_name="random", atypicality_limit=limit)
            segmenter = log_segmenter(tiny_registry.unet, arch="resnet18", image_size=SIZE, encoder_name="random",
                                      object_min_size=2)
        for name, info in ((CLASSIFIER, classifier), (SEGMENTER, segmenter)):
            version = register_version(info.model_uri, name, {"test": "downstream"})
            apply_decision(client, name, version.version, Decision(CHAMPION, True, "first version"),
                           allow_promotion=True)
        second = register_version(segmenter.model_uri, SEGMENTER, {"test": "downstream"})
        apply_decision(client, SEGMENTER, second.version, Decision(CHAMPION, True, "beats v1"),
                       allow_promotion=False)
    finally:
        mlflow.set_tracking_uri(previous)
    images = tmp_path / "my_images"
    images.mkdir()
    for path in tiny_registry.files:
        shutil.copy2(path, images / path.name)
    shutil.copy2(next(p for p in tiny_registry.files if p.suffix == ".tif"), tmp_path / "montage.tif")
    return tmp_path


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the project's params.yaml decides
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(tokens: list[str], project: Path) -> subprocess.CompletedProcess:
    if tokens[0] == "nanomorph":
        tokens = [sys.executable, "-m", "nanomorph.cli", *tokens[1:]]
    elif tokens[0] == "python":
        tokens = [sys.executable, *tokens[1:]]
    return subprocess.run(tokens, cwd=project, env=_env(project), capture_output=True, text=True, timeout=300)


def _serve_until_ready(tokens: list[str], project: Path) -> None:
    port = free_port()
    tokens = [str(port) if t == "5001" else t for t in tokens]
    log = project / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "nanomorph.cli", *tokens[1:]], cwd=project,
                                  env=_env(project), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, log)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_downstream_command_in_readme_runs_as_written(project):
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["nanomorph", "promote"], ["nanomorph", "promote"], ["nanomorph", "predict"],
                                        ["nanomorph", "predict"], ["nanomorph", "predict"], ["nanomorph", "serve"],
                                        ["python", "-c"]], "README's downstream block changed: update this test"
    for tokens in commands:
        if tokens[1] == "serve":
            _serve_until_ready(tokens, project)
            continue
        done = _run(tokens, project)
        assert done.returncode == 0, f"{shlex.join(tokens)}\n{done.stderr[-3000:]}"
        if tokens[1] == "predict":
            out = project / (tokens[tokens.index("--out") + 1] if "--out" in tokens else "predictions")
            table = pd.read_csv(out / "predictions.csv")
            assert len(table) == (1 if "montage.tif" in tokens else 3)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert str(version_by_alias(client, SEGMENTER, CHAMPION).version) == "2"  # the recommended version, promoted
    promoted = client.get_model_version(CLASSIFIER, "1").tags
    assert promoted["nanomorph.promoted_via"] == "nanomorph promote" and promoted["nanomorph.promotion_reason"] == "..."
