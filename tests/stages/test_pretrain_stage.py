"""The pretrain stage on a folder of a lab's own images, in one process and as two torchrun (gloo) ranks."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from nanomorph.data.io import read_image
from nanomorph.stages.pretrain import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A scratch project on the micro profile, tracked to its own MLflow store; returns (folder, tracking URI)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "micro"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path, uri


def _add_broken_files(folder: Path) -> list[str]:
    (folder / "junk.png").write_bytes(b"this is not a PNG")
    (folder / "nested").mkdir(exist_ok=True)
    (folder / "nested" / "empty.tif").write_bytes(b"")
    return ["empty.tif", "junk.png"]


def _pretrain_runs(uri: str, method: str) -> list:
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("nanomorph")
    return mlflow.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = 'pretrain-{method}'",
                              output_format="list")


def test_folder_of_own_images_skips_undecodable_files(project, shared_data, capsys):
    work, uri = project
    images = work / "lab_images"
    shutil.copytree(shared_data / "cem500k-examples" / "images", images / "cem500k")
    # The formats a lab may have: 16-bit gray PNG and RGB JPEG beside the set's 8-bit PNG and TIFF.
    gray = read_image(images / "cem500k" / "er.png")
    Image.fromarray((gray * 65535).astype(np.uint16)).save(images / "er_16bit.png")
    Image.fromarray((gray * 255).astype(np.uint8)).convert("RGB").save(images / "er_rgb.jpg")
    broken = _add_broken_files(images)
    usable = 18 + 2

    assert main(["--method", "simclr", "--images", str(images)]) == 0
    err = capsys.readouterr().err
    assert f"skipped 2 of {usable + 2} image files" in err
    assert all(name in err for name in broken)
    metrics = json.loads((work / "metrics" / "pretrain_simclr.json").read_text())
    assert metrics["n_images"] == usable and metrics["n_skipped_files"] == 2 and np.isfinite(metrics["loss"])
    encoder = torch.load(work / "models" / "encoders" / "simclr.pt", weights_only=True)
    assert encoder["meta"]["n_images"] == usable
    assert len(list((work / "data" / "cache").glob("*.npy"))) == 1  # decoded once, for later runs
    run = _pretrain_runs(uri, "simclr")[0]
    assert run.data.params["n_skipped_files"] == "2" and run.data.params["image_source"] == str(images)


def test_no_images_is_a_one_line_error(project, capsys):
    work, _ = project
    (work / "empty").mkdir()
    assert main(["--method", "simclr", "--images", str(work / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err


def test_two_torchrun_ranks_train_once_and_only_rank0_writes(project):
    work, uri = project
    images = work / "lab_images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):  # micro profile: one optimiser step of the global batch of 16, 8 per rank
        tifffile.imwrite(images / f"img{i:02d}.tif", rng.integers(0, 65536, (64, 64), dtype=np.uint16))
    _add_broken_files(images)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "nanomorph.stages.pretrain", "--method", "barlow_twins", "--images", str(images)],
        cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("skipped 2 of 18 image files") == 1  # reported by rank 0 only
    metrics = json.loads((work / "metrics" / "pretrain_barlow_twins.json").read_text())
    assert metrics["n_images"] == 16 and np.isfinite(metrics["loss"])
    assert (work / "models" / "encoders" / "barlow_twins.pt").is_file()
    assert torch.load(work / "models" / "checkpoints" / "barlow_twins" / "last.pt", weights_only=True)["step"] == 1
    runs = _pretrain_runs(uri, "barlow_twins")
    assert len(runs) == 1 and runs[0].data.params["world_size"] == "2"
