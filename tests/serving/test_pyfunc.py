"""The registered pyfunc models, loaded by alias in a fresh Python process, reproduce the trained models."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nanomorph.analysis.objects import count_objects
from nanomorph.analysis.percolation import percolates
from nanomorph.probe.features import extract_features
from nanomorph.segment.train import predict_masks
from nanomorph.serving.inputs import resize_for_model, resize_mask

from conftest import CLASSIFIER, SEGMENTER, SIZE

FRESH_PROCESS = """
import json, sys
import numpy as np, pandas as pd, mlflow
files = json.loads(sys.argv[1])
classifier = mlflow.pyfunc.load_model("models:/{classifier}@champion")
segmenter = mlflow.pyfunc.load_model("models:/{segmenter}@champion")
import nanomorph
by_path = classifier.predict(pd.DataFrame({{"path": files}}), params={{"return_embeddings": True}})
arrays = [np.asarray(json.loads(sys.argv[2])[0], dtype=np.float64)]
by_array = classifier.predict(pd.DataFrame({{"image": arrays}}))
seg = segmenter.predict(pd.DataFrame({{"path": files}}))
tiled = segmenter.predict(pd.DataFrame({{"path": files}}), params={{"tiled": True}})
print(json.dumps({{"by_path": by_path.to_dict(orient="list"), "by_array": by_array.to_dict(orient="list"),
                  "seg": seg.to_dict(orient="list"), "tiled": tiled.to_dict(orient="list"),
                  "nanomorph_file": nanomorph.__file__}}))
"""


@pytest.fixture(scope="module")
def fresh(tiny_registry):
    script = FRESH_PROCESS.format(classifier=CLASSIFIER, segmenter=SEGMENTER)
    files = json.dumps([str(p) for p in tiny_registry.files])
    array = json.dumps([tiny_registry.file_images[0].tolist()])
    done = subprocess.run([sys.executable, "-c", script, files, array], capture_output=True, text=True,
                          env=tiny_registry.env, cwd=tiny_registry.root, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _expected_probabilities(registry, images):
    stack = np.stack([resize_for_model(image, SIZE) for image in images])
    return registry.probe.predict_proba(extract_features(registry.encoder, stack))


def test_classifier_gives_the_trained_probabilities_for_files_of_any_size(fresh, tiny_registry):
    out = fresh["by_path"]
    classes = list(tiny_registry.probe.classes_)
    probs = np.array([out[f"prob_{c}"] for c in classes]).T
    assert probs.shape == (len(tiny_registry.files), 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(probs, _expected_probabilities(tiny_registry, tiny_registry.file_images), atol=1e-5)
    assert out["class"] == [classes[k] for k in probs.argmax(axis=1)]
    assert all(len(e) == tiny_registry.encoder.out_dim for e in out["embedding"])


def test_inline_array_gives_the_same_answer_as_its_file(fresh):
    same = {k: v[0] for k, v in fresh["by_path"].items() if k != "embedding"}
    assert fresh["by_array"]["class"][0] == same["class"]
    for key, value in same.items():
        if key.startswith("prob_"):
            # float32 features reached through two decode paths: equal to float32 rounding, not bit for bit
            assert fresh["by_array"][key][0] == pytest.approx(value, abs=1e-5)
    assert "embedding" not in fresh["by_array"]  # only on request


def test_segmenter_mask_density_percolation_and_objects(fresh, tiny_registry):
    seg = fresh["seg"]
    images = tiny_registry.file_images
    expected = predict_masks(tiny_registry.unet, np.stack([resize_for_model(image, SIZE) for image in images]))
    for k, image in enumerate(images):
        mask = np.asarray(seg["mask"][k], dtype=bool)
        assert mask.shape == image.shape == (seg["height"][k], seg["width"][k])
        # Another process may sum convolutions in another order: a logit within float error of 0 can flip.
        assert (mask == resize_mask(expected[k], image.shape)).mean() > 0.99
        assert seg["density"][k] == pytest.approx(mask.mean())
        assert seg["percolates"][k] == percolates(mask)
        assert seg["objects"][k] == count_objects(mask, min_size=2)


def test_tiled_segmenter_works_at_the_images_own_resolution(fresh, tiny_registry):
    from nanomorph.segment.tiling import tiled_mask

    for k, image in enumerate(tiny_registry.file_images):
        mask = np.asarray(fresh["tiled"]["mask"][k], dtype=bool)
        expected = tiled_mask(tiny_registry.unet, image.astype(np.float32))  # no resize: native resolution
        assert mask.shape == image.shape
        assert (mask == expected).mean() > 0.99  # another process may flip a logit within float error of 0
        assert fresh["tiled"]["density"][k] == pytest.approx(mask.mean())


def test_model_runs_the_code_it_was_logged_with(fresh):
    # code_paths ships a copy of the package with every version; a fresh process imports that copy.
    assert "/code/nanomorph/" in fresh["nanomorph_file"].replace("\\", "/")


def test_bad_rows_are_refused_with_the_row_named(tiny_registry):
    import mlflow

    mlflow.set_tracking_uri(tiny_registry.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{CLASSIFIER}@champion")
    with pytest.raises(Exception, match=r"row 0: 'image' intensities must lie in \[0, 1\]"):
        model.predict(pd.DataFrame({"image": [np.full((8, 8), 255.0)]}))
    with pytest.raises(Exception, match="row 1: set exactly one of 'path' and 'image'"):
        model.predict(pd.DataFrame({"path": [str(tiny_registry.files[0]), None], "image": [None, None]}))
