"""A registered model whose files changed after registration is refused before any of its code runs."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import pytest

from nanomorph.cli import main
from nanomorph.tracking.integrity import DIGEST_TAG, ModelIntegrityError, load_verified

from conftest import CLASSIFIER

MARKER = "TAMPERED_CODE_RAN"


def _stored_files(tiny_registry, name: str) -> Path:
    """The folder of the artifact store that holds the champion version of `name`."""
    mlflow.set_tracking_uri(tiny_registry.tracking_uri)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(name, "champion")
    location = client.get_model_version_download_uri(name, version.version)
    return Path(url2pathname(urlparse(location).path))


@pytest.fixture
def tampered_classifier_code(tiny_registry):
    """Append a line to the stored classifier code (as in the issue), restoring it afterwards."""
    code = _stored_files(tiny_registry, CLASSIFIER) / "code" / "nanomorph" / "serving" / "classifier_code.py"
    original = code.read_bytes()
    code.write_bytes(original + f"\nprint('{MARKER}')\n".encode())
    yield code
    code.write_bytes(original)


def test_every_registered_version_records_its_file_digests(tiny_registry):
    mlflow.set_tracking_uri(tiny_registry.tracking_uri)
    version = mlflow.MlflowClient().get_model_version_by_alias(CLASSIFIER, "champion")
    manifest = json.loads(version.tags[DIGEST_TAG])
    assert "MLmodel" in manifest and "code/nanomorph/serving/classifier_code.py" in manifest
    assert any(path.endswith("encoder.pt") for path in manifest)


def test_pyfunc_loading_refuses_the_tampered_file(tiny_registry, tampered_classifier_code, capfd):
    mlflow.set_tracking_uri(tiny_registry.tracking_uri)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(CLASSIFIER, "champion").version
    with pytest.raises(ModelIntegrityError, match="code/nanomorph/serving/classifier_code.py has changed"):
        load_verified(client, CLASSIFIER, str(version))
    assert MARKER not in capfd.readouterr().out


def test_predict_refuses_the_tampered_model_in_one_line(tiny_registry, tampered_classifier_code, tmp_path, capfd):
    code = main(["predict", str(tiny_registry.files[0]), "--model", f"{CLASSIFIER}@champion", "--out",
                 str(tmp_path / "out"), "--tracking-uri", tiny_registry.tracking_uri, "--no-progress"])
    captured = capfd.readouterr()
    assert code != 0 and MARKER not in captured.out
    error_lines = [line for line in captured.err.splitlines() if "classifier_code.py" in line]
    assert len(error_lines) == 1 and "has changed since registration" in error_lines[0]
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_serve_refuses_the_tampered_model_before_starting(tiny_registry, tampered_classifier_code, capfd):
    code = main(["serve", f"{CLASSIFIER}@champion", "--tracking-uri", tiny_registry.tracking_uri, "--port", "1"])
    captured = capfd.readouterr()
    assert code == 2 and "has changed since registration" in captured.err and MARKER not in captured.out


def test_the_restored_model_loads_again(tiny_registry):
    mlflow.set_tracking_uri(tiny_registry.tracking_uri)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(CLASSIFIER, "champion").version
    assert load_verified(client, CLASSIFIER, str(version)) is not None
