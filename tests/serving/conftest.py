"""A tiny registry shared by the serving tests: a random-init ResNet18 classifier and U-Net trained for
seconds on 32 px synthetic nanowire images, logged as pyfunc models into a temporary sqlite store and
registered as champions."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tifffile
from PIL import Image

from nanomorph.data.io import to_unit_range
from nanomorph.data.synthetic import CLASSES, generate_nanowire_image
from nanomorph.models.encoder import random_encoder, save_encoder
from nanomorph.probe.features import extract_features
from nanomorph.serving.models import atypicality_limit
from nanomorph.probe.linear import fit_linear_probe
from nanomorph.serving.package import log_classifier, log_segmenter
from nanomorph.serving.train import train_unet
from nanomorph.tracking.registry import CHAMPION, Decision, apply_decision, register_version

SIZE = 32
CLASSIFIER, SEGMENTER = "tiny-classifier", "tiny-segmenter"


@dataclass
class TinyRegistry:
    root: Path
    tracking_uri: str
    encoder: object
    probe: object
    unet: object
    images: np.ndarray          # (N, SIZE, SIZE) float32 training images
    files: list[Path]           # held-out image files of several sizes and formats
    file_images: list[np.ndarray]

    @property
    def env(self) -> dict[str, str]:
        import os

        return {**os.environ, "MLFLOW_TRACKING_URI": self.tracking_uri}


def _synthetic(n_per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, masks, labels = [], [], []
    for name in CLASSES:
        for _ in range(n_per_class):
            image, mask = generate_nanowire_image(name, size, rng)
            images.append(to_unit_range(image))
            masks.append(mask)
            labels.append(name)
    return np.stack(images), np.stack(masks), np.array(labels)


@pytest.fixture(scope="package")
def tiny_registry(tmp_path_factory) -> Iterator[TinyRegistry]:
    root = tmp_path_factory.mktemp("registry")
    images, masks, labels = _synthetic(3, SIZE, seed=0)
    encoder = random_encoder("resnet18", seed=0)
    encoder_path = save_encoder(root / "encoder.pt", encoder, {"method": "random"})
    probe = fit_linear_probe(extract_features(encoder, images), labels.astype(str), C=1.0, max_iter=500, seed=0,
                             tol=1e-4)
    # One optimiser step (one image per class) is enough: the tests compare the served model with this one.
    unet = train_unet(encoder.resnet_state_dict(), images[::3], masks[::3], arch="resnet18", epochs=1, lr=1e-3,
                      batch_size=4, freeze_encoder=True, seed=0)

    # Held-out files: another seed, other sizes (not square, not the training size), tif and png.
    files, file_images = [], []
    inputs = root / "inputs"
    inputs.mkdir()
    for k, (name, shape) in enumerate([("network", (48, 60)), ("singular", (32, 32)), ("bundle", (70, 40))]):
        raw, _ = generate_nanowire_image(name, max(shape), np.random.default_rng(100 + k))
        raw = raw[: shape[0], : shape[1]]
        if k % 2:
            path = inputs / f"{name}_{k}.png"
            Image.fromarray((raw // 257).astype(np.uint8)).save(path)
        else:
            path = inputs / f"{name}_{k}.tif"
            tifffile.imwrite(path, raw)
        files.append(path)
        file_images.append(to_unit_range((raw // 257).astype(np.uint8)) if k % 2 else to_unit_range(raw))

    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    experiment = mlflow.create_experiment("tiny", artifact_location=(root / "artifacts").as_uri())
    try:
        with mlflow.start_run(experiment_id=experiment):
            limit = atypicality_limit(probe, extract_features(encoder, images, batch_size=64))
            classifier = log_classifier(encoder_path, probe, image_size=SIZE, encoder_name="random",
                                        atypicality_limit=limit)
            segmenter = log_segmenter(unet, arch="resnet18", image_size=SIZE, encoder_name="random", object_min_size=2)
        for name, info in ((CLASSIFIER, classifier), (SEGMENTER, segmenter)):
            version = register_version(info.model_uri, name, {"test": "tiny"})
            apply_decision(client, name, version.version, Decision(CHAMPION, True, "only version"),
                           allow_promotion=True)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    yield TinyRegistry(root, tracking_uri, encoder, probe, unet, images, files, file_images)
    shutil.rmtree(root, ignore_errors=True)


# Helpers for the tests that start `nanomorph serve` (test_serve_http.py, test_readme_downstream.py).
STARTUP_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
