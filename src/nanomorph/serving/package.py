"""Packaging trained models as MLflow pyfunc models: artifacts, signature, input example, code, requirements.

Each model is logged from code (`classifier_code.py` / `segmenter_code.py`) together with a copy of the
`nanomorph` package (`code_paths`), so a registered version keeps the exact code it was logged with and
loads in any environment that has the pinned libraries, with or without nanomorph installed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from sklearn.pipeline import Pipeline
from torch import nn

import nanomorph
from nanomorph.data.io import to_unit_range
from nanomorph.data.synthetic import generate_nanowire_image
from nanomorph.serving.models import NanowireClassifier, NanowireSegmenter

SERVING_DIR = Path(__file__).resolve().parent
# Distributions the serving code imports (directly or through nanomorph's modules it uses).
RUNTIME_DISTRIBUTIONS = ("mlflow", "torch", "torchvision", "segmentation-models-pytorch", "scikit-learn",
                         "scikit-image", "skops", "scipy", "numpy", "pandas", "pillow", "tifffile", "tqdm")
EXAMPLE_SHAPE = (40, 48)  # deliberately not square and not the training size: any size is accepted
PERCOLATION_EPS, PERCOLATION_MIN_SAMPLES = 2.0, 2  # the paper's rule


def pip_requirements() -> list[str]:
    """The runtime libraries pinned to the versions installed here (the versions the model was tested with)."""
    pins = []
    for dist in RUNTIME_DISTRIBUTIONS:
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            raise RuntimeError(f"{dist} is not installed, but the served models need it") from None
    return pins


def example_image(seed: int = 0) -> np.ndarray:
    """A small synthetic network-morphology TEM image in [0, 1], EXAMPLE_SHAPE, as the models' input example."""
    image, _mask = generate_nanowire_image("network", max(EXAMPLE_SHAPE), np.random.default_rng(seed))
    return to_unit_range(image)[: EXAMPLE_SHAPE[0], : EXAMPLE_SHAPE[1]].copy()


def _signature_frames(image: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(frame describing both optional input columns, the stored input example with an inline image)."""
    described = pd.DataFrame({"path": [None, "image.tif"], "image": [image.tolist(), None]})
    example = pd.DataFrame({"image": [image.tolist()]})
    return described, example


def content_sha256(parts: dict[str, bytes]) -> str:
    """sha256 of what defines a model's behaviour: its named parts (weights, probe, config) plus every file of
    the nanomorph code shipped with it and the pinned runtime libraries. Unlike the logged files' digests it
    leaves out what differs from one log of the same model to the next (MLmodel's run id, time and uuid, zip
    timestamps inside the skops file), so an unchanged model is recognised (`registry.version_with_content`)."""
    from nanomorph.tracking.integrity import file_digests

    package = Path(nanomorph.__file__).resolve().parent
    code = {rel: digest for rel, digest in file_digests(package).items()
            if "__pycache__" not in rel and not rel.endswith(".pyc")}
    digest = hashlib.sha256()
    for key in sorted(parts):
        digest.update(f"{key}:{len(parts[key])}:".encode())
        digest.update(parts[key])
    digest.update(json.dumps({"code": code, "requirements": pip_requirements()}, sort_keys=True).encode())
    return digest.hexdigest()


def classifier_config(probe: Pipeline, *, image_size: int, encoder_name: str, stages: tuple[str, ...],
                      dihedral: bool, atypicality_limit: float | None = None) -> dict:
    """`atypicality_limit` (`serving.models.atypicality_limit` of the training features): inputs beyond it are
    flagged out of distribution; None logs a model without the flag."""
    config = {"classes": [str(c) for c in probe.classes_], "image_size": int(image_size), "encoder": encoder_name,
              "stages": list(stages), "dihedral": bool(dihedral)}
    if atypicality_limit is not None:
        config["atypicality_limit"] = float(atypicality_limit)
    return config


def classifier_content(encoder_path: str | Path, probe: Pipeline, config: dict) -> str:
    """`content_sha256` of the classifier `log_classifier` would log from these."""
    return content_sha256({"encoder": Path(encoder_path).read_bytes(), "probe": pickle.dumps(probe, protocol=5),
                           "config": json.dumps(config, sort_keys=True).encode()})


def segmenter_config(*, arch: str, image_size: int, encoder_name: str, object_min_size: int,
                     dihedral: bool) -> dict:
    return {"arch": arch, "image_size": int(image_size), "encoder": encoder_name,
            "percolation_eps": PERCOLATION_EPS, "percolation_min_samples": PERCOLATION_MIN_SAMPLES,
            "object_min_size": int(object_min_size), "dihedral": bool(dihedral)}


def segmenter_content(unet: nn.Module, config: dict) -> str:
    """`content_sha256` of the segmenter `log_segmenter` would log from these."""
    parts = {f"unet.{k}": v.detach().cpu().contiguous().numpy().tobytes() for k, v in unet.state_dict().items()}
    return content_sha256({**parts, "config": json.dumps(config, sort_keys=True).encode()})


def _package_copy(workdir: Path) -> Path:
    """A clean copy of the nanomorph package (no caches) to ship with the model."""
    target = workdir / "code" / "nanomorph"
    shutil.copytree(Path(nanomorph.__file__).resolve().parent, target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def _log(name: str, code_file: Path, artifacts: dict[str, str], model, params: dict,
         workdir: Path) -> ModelInfo:
    model.load_artifacts(artifacts)
    described, example = _signature_frames(example_image())
    # Outputs with and without the optional columns: the signature then marks those columns optional.
    outputs = [model.predict(None, example, params={k: flag for k in params}) for flag in (False, True)]
    with warnings.catch_warnings():
        # MLflow warns that integer columns cannot hold missing values; ours (objects, height, width) never miss.
        warnings.filterwarnings("ignore", message=".*Integer columns.*", category=UserWarning)
        signature = infer_signature(described, pd.concat(outputs, ignore_index=True), params=params)
    return mlflow.pyfunc.log_model(
        name=name, python_model=str(code_file), artifacts=artifacts, code_paths=[str(_package_copy(workdir))],
        signature=signature, input_example=example, pip_requirements=pip_requirements(),
    )


def log_classifier(encoder_path: str | Path, probe: Pipeline, *, image_size: int, encoder_name: str,
                   name: str = "classifier", stages: tuple[str, ...] = ("layer4",),
                   dihedral: bool = False, atypicality_limit: float | None = None) -> ModelInfo:
    """Log the classifier (encoder checkpoint + skops probe + config) as a pyfunc model; returns its ModelInfo.

    `image_size`, `stages` and `dihedral` say how the probe's features were extracted (`extract_features`)."""
    import skops.io

    with tempfile.TemporaryDirectory(prefix="nanomorph-classifier-") as tmp:
        workdir = Path(tmp)
        probe_path = workdir / "probe.skops"
        skops.io.dump(probe, probe_path)
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps(classifier_config(probe, image_size=image_size, encoder_name=encoder_name,
                                                            stages=stages, dihedral=dihedral,
                                                            atypicality_limit=atypicality_limit), indent=2))
        encoder_copy = workdir / "encoder.pt"
        shutil.copy2(encoder_path, encoder_copy)
        artifacts = {"encoder": str(encoder_copy), "probe": str(probe_path), "config": str(config_path)}
        return _log(name, SERVING_DIR / "classifier_code.py", artifacts, NanowireClassifier(),
                    {"return_embeddings": False}, workdir)


def log_segmenter(unet: nn.Module, *, arch: str, image_size: int, encoder_name: str, object_min_size: int,
                  name: str = "segmenter", dihedral: bool = False) -> ModelInfo:
    """Log the U-Net (state dict + config) as a pyfunc model; returns its ModelInfo.

    `dihedral`: whole-image predictions are the mean over the 8 rotations/flips (as the segment stage scored).

    `object_min_size`: components of a predicted mask with fewer pixels are noise, not counted as objects.
    """
    with tempfile.TemporaryDirectory(prefix="nanomorph-segmenter-") as tmp:
        workdir = Path(tmp)
        weights = workdir / "unet.pt"
        torch.save({k: v.detach().cpu() for k, v in unet.state_dict().items()}, weights)
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps(segmenter_config(arch=arch, image_size=image_size, encoder_name=encoder_name,
                                                           object_min_size=object_min_size, dihedral=dihedral),
                                          indent=2))
        artifacts = {"unet": str(weights), "config": str(config_path)}
        return _log(name, SERVING_DIR / "segmenter_code.py", artifacts, NanowireSegmenter(),
                    {"return_mask": True, "tiled": False}, workdir)
