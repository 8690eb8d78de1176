"""Time to register and to pull each model: the shared server (`nanomorph registry-server` on 127.0.0.1:
PostgreSQL, basic auth, proxied artifacts) vs the embedded sqlite store, in one process.

The models are the ones the register stage logs (pyfunc classifier: ResNet18 encoder + probe + the nanomorph
code; pyfunc U-Net segmenter), built from random-init weights on tiny synthetic images, so only the registry
path is timed. "register" = log the pyfunc model into a run + `register_version` (which downloads the version
back and records its sha256 manifest); "pull" = `load_verified` (download, check every file, load). Each is
timed `--repeats` times per store; medians and the server/sqlite ratio go to
benchmarks/results/registry_timing.json and to MLflow.

    python benchmarks/registry_timing.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np

from _tracking import benchmark_run
from nanomorph.data.io import to_unit_range
from nanomorph.data.synthetic import CLASSES, generate_nanowire_image
from nanomorph.models.encoder import random_encoder, save_encoder
from nanomorph.serving.package import log_classifier, log_segmenter
from nanomorph.probe.features import extract_features
from nanomorph.probe.linear import fit_linear_probe
from nanomorph.serving.train import train_unet
from nanomorph.tracking import server
from nanomorph.tracking.integrity import load_verified
from nanomorph.tracking.registry import register_version

RESULTS = Path(__file__).resolve().parent / "results" / "registry_timing.json"
SIZE = 32


def _models(work: Path):
    rng = np.random.default_rng(0)
    pairs = [generate_nanowire_image(name, SIZE, rng) for name in CLASSES for _ in range(2)]
    images = np.stack([to_unit_range(image) for image, _ in pairs])
    masks = np.stack([mask for _, mask in pairs])
    labels = np.repeat(list(CLASSES), 2)
    encoder = random_encoder("resnet18", seed=0)
    encoder_path = save_encoder(work / "encoder.pt", encoder, {"method": "random"})
    probe = fit_linear_probe(extract_features(encoder, images), labels.astype(str), C=1.0, max_iter=200, seed=0,
                             tol=1e-4)
    unet = train_unet(encoder.resnet_state_dict(), images, masks, arch="resnet18", epochs=1, lr=1e-3,
                      batch_size=4, freeze_encoder=True, seed=0)
    return {
        "classifier": lambda: log_classifier(encoder_path, probe, image_size=SIZE, encoder_name="random"),
        "segmenter": lambda: log_segmenter(unet, arch="resnet18", image_size=SIZE, encoder_name="random",
                                           object_min_size=2),
    }


def _time_store(uri: str, models: dict, repeats: int) -> dict[str, dict[str, float]]:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = mlflow.set_experiment("nanomorph")
    times: dict[str, dict[str, list[float]]] = {kind: {"register_s": [], "pull_s": []} for kind in models}
    for _ in range(repeats):
        for kind, log in models.items():
            start = time.perf_counter()
            with mlflow.start_run(experiment_id=experiment.experiment_id):
                info = log()
            version = register_version(info.model_uri, f"nanomorph-{kind}", {"benchmark": "registry_timing"})
            times[kind]["register_s"].append(time.perf_counter() - start)
            start = time.perf_counter()
            load_verified(client, f"nanomorph-{kind}", str(version.version))
            times[kind]["pull_s"].append(time.perf_counter() - start)
    return {kind: {key: statistics.median(values) for key, values in per.items()} for kind, per in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nanomorph-registry-bench-"))
    root = Path(tempfile.mkdtemp(prefix="nanomorph-registry-", dir="/tmp"))
    secrets = {role: f"{role}-bench-password" for role in server.ROLES}
    try:
        models = _models(work)
        sqlite_uri = f"sqlite:///{work / 'mlflow.db'}"
        os.chdir(work)   # the sqlite store's artifacts land under ./mlruns of the work folder
        sqlite = _time_store(sqlite_uri, models, args.repeats)
        uri = server.start(root, host="127.0.0.1", port=5123, secrets=secrets, experiment="nanomorph",
                           models=("nanomorph-classifier", "nanomorph-segmenter"))
        os.environ.update(MLFLOW_TRACKING_USERNAME="writer", MLFLOW_TRACKING_PASSWORD=secrets["writer"])
        shared = _time_store(uri, models, args.repeats)
    finally:
        # mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI: the results go to the project's own store.
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI",
                     "MLFLOW_REGISTRY_URI"):
            os.environ.pop(name, None)
        server.stop(root)
        shutil.rmtree(root, ignore_errors=True)
        os.chdir(Path(__file__).resolve().parents[1])
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "what": "median seconds to register (log + register + sha256 manifest) and to pull (download + verify + "
                "load) each model: shared server on loopback vs embedded sqlite store",
        "repeats": args.repeats,
        "sqlite": sqlite,
        "server": shared,
        "server_over_sqlite": {kind: {key: shared[kind][key] / sqlite[kind][key] for key in sqlite[kind]}
                               for kind in sqlite},
        "machine_note": f"{os.cpu_count()} CPUs; auth cache 60 s (without it each request costs a PBKDF2 check)",
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    log(result)
    print(json.dumps(result, indent=2))


def log(result: dict) -> None:
    """The medians as metrics of one run in the benchmarks experiment, with the JSON."""
    with benchmark_run("registry_timing") as tracking:
        for store in ("sqlite", "server"):
            for kind, per in result[store].items():
                tracking.log_metrics({f"{store}.{kind}.{key}": value for key, value in per.items()})
        tracking.log_artifact(str(RESULTS))


if __name__ == "__main__":
    main()
