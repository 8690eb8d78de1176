"""The two pyfunc models: nanowire morphology classifier and nanowire segmenter.

They are logged as "models from code" (`classifier_code.py`, `segmenter_code.py` call `set_model`), so no
pickled Python object is stored; the weights are plain artifacts:

* classifier: ``encoder`` (the `save_encoder` checkpoint of the frozen ResNet), ``probe`` (the fitted
  scaler + softmax `Pipeline`, skops format: loading executes no pickled code), ``config`` (JSON);
* segmenter: ``unet`` (the U-Net state dict, torch `weights_only` format), ``config`` (JSON).

The input and output contract is in the package docstring (`nanomorph.serving`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from nanomorph.errors import NanomorphError
from nanomorph.models.weights import load_weights
from nanomorph.analysis.density import pixel_density
from nanomorph.analysis.objects import count_objects
from nanomorph.analysis.percolation import percolates
from nanomorph.models.encoder import load_encoder
from nanomorph.models.precision import best_device
from nanomorph.probe.features import extract_features
from nanomorph.segment.model import build_unet
from nanomorph.segment.tiling import tiled_mask
from nanomorph.segment.train import predict_masks
from nanomorph.serving.inputs import images_from_frame, in_serving_environment, resize_for_model, resize_mask


def _served_images(frame: pd.DataFrame) -> list[np.ndarray]:
    """`images_from_frame`; in a model server, a bad request becomes an MlflowException without a stack trace
    (the server answers it as one JSON line, HTTP 400) instead of a generic error carrying the traceback."""
    try:
        return images_from_frame(frame)
    except (ValueError, TypeError, NanomorphError) as exc:
        if not in_serving_environment():
            raise
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        raise MlflowException(str(exc).splitlines()[0], error_code=INVALID_PARAMETER_VALUE) from None


def _read_config(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def load_probe(path: str | Path):
    """The skops-saved probe; any type outside skops' trusted defaults is refused (none are expected)."""
    import skops.io

    return skops.io.load(path, trusted=[])


def atypicality(probe, features: np.ndarray) -> np.ndarray:
    """Root-mean-square z-score of each row of `features` under the probe's own standardisation (the training
    images' mean and spread): about 1 for an image like the training images, large for one unlike them (a label
    image, another material or magnification). Cheap, and needs nothing stored beyond the probe."""
    z = probe.named_steps["scale"].transform(np.asarray(features, dtype=np.float64))
    return np.sqrt(np.mean(z * z, axis=1))


def atypicality_limit(probe, train_features: np.ndarray) -> float:
    """The largest atypicality among the probe's own training images: an input beyond every one of them is
    flagged as out of distribution (the envelope of what the probe was fitted on, no tuning)."""
    return float(atypicality(probe, train_features).max())


class NanowireClassifier(mlflow.pyfunc.PythonModel):
    """Frozen ResNet features -> linear softmax probe: class probabilities for nanowire TEM images."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.load_artifacts(context.artifacts)

    def load_artifacts(self, artifacts: dict[str, str]) -> None:
        config = _read_config(artifacts["config"])
        self.image_size = int(config["image_size"])
        # Models logged before feature stages existed pooled the last stage alone.
        self.stages = tuple(config.get("stages", ("layer4",)))
        self.dihedral = bool(config.get("dihedral", False))
        self.encoder, _meta = load_encoder(artifacts["encoder"])
        self.encoder.eval()
        self.probe = load_probe(artifacts["probe"])
        self.classes = [str(c) for c in self.probe.classes_]
        # Models logged before the out-of-distribution check have no limit: they report no flag.
        self.atypicality_limit = config.get("atypicality_limit")
        if self.classes != list(config["classes"]):
            raise ValueError(f"probe classes {self.classes} differ from the config's {config['classes']}")
        self.device = best_device()

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """Pooled encoder features (N, D) of the images, each resized to the training size first."""
        stack = np.zeros((len(images), self.image_size, self.image_size), dtype=np.float32)
        for k, image in enumerate(images):
            stack[k] = resize_for_model(image, self.image_size)
        return extract_features(self.encoder, stack, batch_size=64, device=self.device, stages=self.stages,
                                  dihedral=self.dihedral)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = params or {}
        features = self.embed(_served_images(model_input))
        probabilities = self.probe.predict_proba(features) if len(features) else np.zeros((0, len(self.classes)))
        out = pd.DataFrame({"class": np.asarray(self.classes, dtype=object)[probabilities.argmax(axis=1)]})
        for k, name in enumerate(self.classes):
            out[f"prob_{name}"] = probabilities[:, k].astype(np.float64)
        if self.atypicality_limit is not None:
            score = atypicality(self.probe, features) if len(features) else np.zeros(0)
            out["atypicality"] = score.astype(np.float64)
            out["out_of_distribution"] = score > self.atypicality_limit
        if params.get("return_embeddings", False):
            out["embedding"] = [row.astype(np.float64).tolist() for row in features]
        return out


class NanowireSegmenter(mlflow.pyfunc.PythonModel):
    """U-Net wire masks and what the paper reads off them: density, percolation, number of objects."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.load_artifacts(context.artifacts)

    def load_artifacts(self, artifacts: dict[str, str]) -> None:
        config = _read_config(artifacts["config"])
        self.image_size = int(config["image_size"])
        self.eps = float(config["percolation_eps"])
        self.min_samples = int(config["percolation_min_samples"])
        self.object_min_size = int(config["object_min_size"])
        self.dihedral = bool(config.get("dihedral", False))  # absent in models logged before it existed
        self.unet = build_unet(config["arch"], encoder_state=None, freeze_encoder=False)
        self.unet.load_state_dict(load_weights(artifacts["unet"]), strict=True)
        self.unet.eval()
        self.device = best_device()

    def masks(self, images: list[np.ndarray], tiled: bool = False) -> list[np.ndarray]:
        """Boolean mask per image at the image's own size.

        Default: each image is resized to the training size, segmented and the mask resized back -- right
        when a whole image shows what a training image showed. `tiled`: the image is segmented at its own
        resolution by overlapping tiles whose halo covers the receptive field (nanomorph.segment.tiling; the
        same mask as one pass, bounded memory for any size) -- right for large images or montages whose pixel size matches the training images'.
        """
        if not images:
            return []
        if tiled:
            return [tiled_mask(self.unet, np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0),
                               device=self.device) for image in images]
        stack = np.stack([resize_for_model(image, self.image_size) for image in images])
        small = predict_masks(self.unet, stack, batch_size=8, device=self.device, dihedral=self.dihedral)
        return [resize_mask(m, image.shape) for m, image in zip(small, images)]

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = params or {}
        rows = []
        for mask in self.masks(_served_images(model_input), tiled=bool(params.get("tiled", False))):
            row = {
                "density": pixel_density(mask),
                "percolates": bool(percolates(mask, eps=self.eps, min_samples=self.min_samples)),
                # 8-connected components (skimage.measure.label) of at least object_min_size pixels.
                "objects": count_objects(mask, self.object_min_size),
                "height": int(mask.shape[0]),
                "width": int(mask.shape[1]),
            }
            if params.get("return_mask", True):
                # Nested lists of 0/1: what JSON carries and what the signature declares (Array(Array(long))).
                row["mask"] = mask.astype(np.uint8).tolist()
            rows.append(row)
        columns = ["density", "percolates", "objects", "height", "width"]
        if params.get("return_mask", True):
            columns.append("mask")
        return pd.DataFrame(rows, columns=columns)
