"""The lab setup for real: PostgreSQL + `mlflow server` with basic auth, started by `nanomorph registry-server`
on 127.0.0.1; the register stage writes into it as `writer`, other processes read as `reader`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import tifffile
import yaml

from nanomorph.data.synthetic import generate_nanowire_image
from nanomorph.tracking import server

PASSWORDS = {"admin": "admin-test-pass-1", "writer": "writer-test-pass-1", "reader": "reader-test-pass-1"}
CLASSIFIER, SEGMENTER = "nanomorph-classifier", "nanomorph-segmenter"


def _postgres_available() -> bool:
    try:
        server._pg_bin("initdb")
    except Exception:
        return False
    return os.geteuid() != 0 or shutil.which("runuser") is not None


pytestmark = pytest.mark.skipif(not _postgres_available(),
                                reason="PostgreSQL (initdb/pg_ctl) is not installed: apt-get install postgresql")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def registry():
    # Under /tmp itself, not pytest's private tmp folder: the `postgres` user must pass through it when we are root.
    root = Path(tempfile.mkdtemp(prefix="nanomorph-registry-", dir="/tmp"))
    uri = server.start(root, host="127.0.0.1", port=_free_port(), secrets=PASSWORDS, experiment="nanomorph",
                       models=(CLASSIFIER, SEGMENTER))
    try:
        yield root, uri
    finally:
        server.stop(root)
        shutil.rmtree(root, ignore_errors=True)


def _env(uri: str, role: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "NANOMORPH_PROMOTE")}
    env["MLFLOW_TRACKING_URI"] = uri
    if role:
        env.update(MLFLOW_TRACKING_USERNAME=role, MLFLOW_TRACKING_PASSWORD=PASSWORDS[role])
    return {**env, **extra}


def _register(project: Path, uri: str, promote: bool) -> subprocess.CompletedProcess:
    env = _env(uri, "writer", **({"NANOMORPH_PROMOTE": "1"} if promote else {}))
    return subprocess.run([sys.executable, "-m", "nanomorph.stages.register"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def registered(registry, tmp_path_factory, make_register_project):
    """The micro project registered once into the server by the register stage, promoted (CI on main)."""
    _root, uri = registry
    project = make_register_project(tmp_path_factory.mktemp("server-project"))
    done = _register(project, uri, promote=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return project


def _aliases(uri: str, name: str) -> dict[str, str]:
    reply = requests.get(f"{uri}/api/2.0/mlflow/registered-models/get", params={"name": name},
                         auth=("reader", PASSWORDS["reader"]), timeout=30)
    reply.raise_for_status()
    return {a["alias"]: str(a["version"]) for a in reply.json()["registered_model"].get("aliases", [])}


def _versions(uri: str, name: str) -> list[dict]:
    reply = requests.get(f"{uri}/api/2.0/mlflow/model-versions/search", params={"filter": f"name='{name}'"},
                         auth=("reader", PASSWORDS["reader"]), timeout=30)
    reply.raise_for_status()
    return reply.json().get("model_versions", [])


def _images(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for k, name in enumerate(("network", "bundle")):
        image, _mask = generate_nanowire_image(name, 40, np.random.default_rng(50 + k))
        tifffile.imwrite(folder / f"{name}.tif", image)
    return folder


def test_passwords_come_from_the_environment_or_a_file_never_defaults(tmp_path, monkeypatch):
    for name in server.PASSWORD_ENV.values():
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(server.NanomorphError, match="no password for NANOMORPH_REGISTRY_ADMIN_PASSWORD"):
        server.passwords(None)
    credentials = tmp_path / "credentials.ini"
    credentials.write_text("".join(f"[{role}]\npassword = {pw}\n" for role, pw in PASSWORDS.items()))
    assert server.passwords(credentials) == PASSWORDS
    monkeypatch.setenv(server.PASSWORD_ENV["reader"], "short")
    credentials.write_text("[admin]\npassword = admin-test-pass-1\n[writer]\npassword = writer-test-pass-1\n")
    with pytest.raises(server.NanomorphError, match="shorter than 12 characters"):
        server.passwords(credentials)


def test_the_register_stage_registers_into_the_server_and_a_reader_elsewhere_loads_and_predicts(
        registry, registered, tmp_path):
    root, uri = registry
    report = json.loads((registered / "metrics/register.json").read_text())
    assert report["store"] == {"uri": uri, "kind": "shared server"}
    for name in (CLASSIFIER, SEGMENTER):
        assert _aliases(uri, name) == {"champion": "1"}
    # Artifacts went through the server into its own store, not into the project.
    assert not (registered / "mlartifacts").exists()
    assert list((root / "artifacts").rglob("classifier_code.py"))

    # A fresh process in another directory, given only the URI and reader credentials.
    elsewhere = _images(tmp_path / "elsewhere" / "images")
    done = subprocess.run([sys.executable, "-m", "nanomorph.cli", "predict", str(elsewhere), "--model",
                           f"{CLASSIFIER}@champion", "--segmenter", f"{SEGMENTER}@champion", "--out", "out",
                           "--no-progress"], cwd=elsewhere.parent, env=_env(uri, "reader"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(elsewhere.parent / "out" / "predictions.csv")
    assert len(table) == 2 and {"class", "density"} <= set(table.columns)


def test_unauthenticated_and_reader_clients_cannot_change_the_registry(registry, registered):
    _root, uri = registry
    version = next(v for v in _versions(uri, CLASSIFIER) if str(v["version"]) == "1")
    attempts = [
        ("POST", "model-versions/create", {"name": CLASSIFIER, "source": version["source"],
                                           "run_id": version["run_id"]}),
        ("DELETE", "model-versions/delete", {"name": CLASSIFIER, "version": "1"}),
        ("POST", "registered-models/alias", {"name": CLASSIFIER, "alias": "champion", "version": "1"}),
    ]
    refused = []
    for auth, expected in ((None, 401), (("reader", PASSWORDS["reader"]), 403)):
        for method, endpoint, body in attempts:
            reply = requests.request(method, f"{uri}/api/2.0/mlflow/{endpoint}", json=body, auth=auth, timeout=30)
            refused.append(reply.status_code == expected)
    assert refused == [True] * 6
    assert len(_versions(uri, CLASSIFIER)) == 1 and _aliases(uri, CLASSIFIER) == {"champion": "1"}
    # The writer may move aliases but not delete versions.
    writer = ("writer", PASSWORDS["writer"])
    assert requests.post(f"{uri}/api/2.0/mlflow/registered-models/alias", auth=writer, timeout=30,
                         json={"name": CLASSIFIER, "alias": "champion", "version": "1"}).status_code == 200
    assert requests.delete(f"{uri}/api/2.0/mlflow/model-versions/delete", auth=writer, timeout=30,
                           json={"name": CLASSIFIER, "version": "1"}).status_code == 403


def _variant(project: Path, target: Path, C: float) -> Path:
    shutil.copytree(project, target)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["probe"]["C"] = C
    params["segment"]["lr"] = C / 100
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return target


def test_two_register_runs_at_once_leave_exactly_one_champion(registry, registered, tmp_path):
    _root, uri = registry
    before = {name: len(_versions(uri, name)) for name in (CLASSIFIER, SEGMENTER)}
    projects = [_variant(registered, tmp_path / f"run{k}", C) for k, C in enumerate((0.05, 0.2))]
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda p: _register(p, uri, promote=True), projects))
    assert [r.returncode for r in runs] == [0, 0], "\n".join(
        line for r in runs for line in r.stderr.splitlines() if "Error" in line or "Exception" in line)
    for name in (CLASSIFIER, SEGMENTER):
        versions = {str(v["version"]) for v in _versions(uri, name)}
        assert len(versions) == before[name] + 2
        aliases = _aliases(uri, name)
        assert "champion" in aliases and aliases["champion"] in versions
        holders = []
        for version in versions:
            reply = requests.get(f"{uri}/api/2.0/mlflow/model-versions/get", params={"name": name, "version": version},
                                 auth=("reader", PASSWORDS["reader"]), timeout=30)
            holders += ["champion" in reply.json()["model_version"].get("aliases", [])]
        assert sum(holders) == 1


def test_a_dvc_experiment_leaves_the_champion_where_it_was(registry, registered, tmp_path):
    _root, uri = registry
    project = _variant(registered, tmp_path / "exp", 0.3)
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"register": {
        "cmd": f"{sys.executable} -m nanomorph.stages.register",
        "deps": ["data/validated/manifest.csv", "models/encoders", "metrics/segment.json"],
        "params": ["registry", "probe"], "outs": [{"metrics/register.json": {"cache": False}}]}}}))
    env = _env(uri, "writer", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "project"]):
        done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    champions = {name: _aliases(uri, name)["champion"] for name in (CLASSIFIER, SEGMENTER)}
    counts = {name: len(_versions(uri, name)) for name in (CLASSIFIER, SEGMENTER)}
    done = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", "registry.margin=0.0",
                           "-S", "probe.C=0.7"], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in (CLASSIFIER, SEGMENTER):
        assert _aliases(uri, name)["champion"] == champions[name]
        assert len(_versions(uri, name)) == counts[name] + 1   # the experiment's version: a challenger
        assert _aliases(uri, name)["challenger"] == str(max(int(v["version"]) for v in _versions(uri, name)))


def test_a_tampered_artifact_is_refused_by_predict_and_by_pyfunc_loading(registry, registered, tmp_path,
                                                                         monkeypatch):
    root, uri = registry
    marker = tmp_path / "ran.txt"
    codes = list((root / "artifacts").rglob("classifier_code.py"))
    originals = {path: path.read_bytes() for path in codes}
    try:
        for path in codes:   # as someone with write access to the artifact store, not to the registry
            path.write_bytes(originals[path] + f"\nopen({str(marker)!r}, 'w').write('ran')\n".encode())
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS["reader"])
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        champion = client.get_model_version_by_alias(CLASSIFIER, "champion").version
        from nanomorph.tracking.integrity import ModelIntegrityError, load_verified

        with pytest.raises(ModelIntegrityError, match="classifier_code.py has changed since registration"):
            load_verified(client, CLASSIFIER, str(champion))
        images = _images(tmp_path / "images")
        done = subprocess.run([sys.executable, "-m", "nanomorph.cli", "predict", str(images), "--model",
                               f"{CLASSIFIER}@champion", "--out", str(tmp_path / "out")], env=_env(uri, "reader"),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 2
        assert "has changed since registration" in done.stderr and "Traceback" not in done.stderr
        assert not marker.exists()
    finally:
        for path, data in originals.items():
            path.write_bytes(data)
