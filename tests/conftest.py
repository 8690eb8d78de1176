"""Shared test fixtures: the project root and the real data beside it (../shared), when present."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (../shared is absent in this checkout)")
    return SHARED_DATA


def register_project(tmp_path: Path, beat_classical: bool = False) -> Path:
    """A tiny project the register stage can run in: micro params, 16 synthetic 32 px images with masks in a
    validated manifest, two random-init "pretrained" encoders and a segment metrics file."""
    from nanomorph.data.synthetic import CLASSES, write_nanowire_dataset
    from nanomorph.data.io import file_digest
    from nanomorph.models.encoder import random_encoder, save_encoder

    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["profile"] = "micro"
    params["registry"]["cv_folds"] = 3  # 3 training images per class here
    params["registry"]["beat_classical"] = beat_classical
    # two pretrained candidates (as the paper profile has), so the encoder choice is exercised
    params["probe"]["encoders"] = ["simclr", "barlow_twins", "random", "classical"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_nanowire_dataset(project / "data/raw/nanowires", CLASSES, images_per_class=4, size=32, seed=0, progress=False)
    rows = []
    for image in sorted((project / "data/raw/nanowires").glob("*/images/*.tif")):
        label = image.parent.parent.name
        rows.append({"kind": "nanowire", "path": str(image.relative_to(project)), "label": label,
                     "mask_path": str((image.parent.parent / "labels" / f"{image.stem}.png").relative_to(project)),
                     "sha256": file_digest(image), "status": "ok"})
    (project / "data/validated").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(project / "data/validated/manifest.csv", index=False)
    for seed, name in enumerate(("simclr", "barlow_twins"), start=1):
        save_encoder(project / f"models/encoders/{name}.pt", random_encoder("resnet18", seed), {"method": name})
    (project / "metrics").mkdir()
    (project / "metrics/segment.json").write_text(json.dumps({"median": {
        "simclr": {"n1": {"dice": 0.3, "iou": 0.2}, "n4": {"dice": 0.5, "iou": 0.4}},
        "barlow_twins": {"n1": {"dice": 0.2, "iou": 0.1}, "n4": {"dice": 0.6, "iou": 0.5}}}}))
    return project


@pytest.fixture(scope="session")
def make_register_project():
    """`register_project` as a fixture (any scope can use it)."""
    def make(tmp_path: Path, beat_classical: bool = False) -> Path:
        return register_project(tmp_path, beat_classical)
    return make
