"""The pretrain stage on a folder of a lab's own images, in one process and as two torchrun (gloo) ranks."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import tifffile
import torch
import yaml
from PIL import Image

from nanomorph.data.io import read_image
from nanomorph.config import load_config
from nanomorph.stages.pretrain import main, set_aside_other_run, training_fingerprint

ROOT = Path(__file__).resolve().parents[2]


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


def test_a_params_mistake_fails_in_one_line_before_the_checkpoint_is_touched(project, capsys):
    work, _ = project
    ckpt = work / "models" / "checkpoints" / "simclr" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"a paper-scale run's resume point")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["pretrain"]["scale"]["micro"]["lr"] = "fast"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["--method", "simclr"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["nanomorph pretrain: error: params.yaml: pretrain.lr = 'fast': input should be a valid number, unable to parse "
                                "string as a number"]
    assert ckpt.read_bytes() == b"a paper-scale run's resume point"
    assert list(ckpt.parent.iterdir()) == [ckpt]


def test_only_training_parameters_change_the_checkpoint_fingerprint(project):
    work, _ = project
    base = yaml.safe_load((work / "params.yaml").read_text())

    def fingerprint(edit) -> str:
        params = json.loads(json.dumps(base))
        edit(params)
        (work / "p.yaml").write_text(yaml.safe_dump(params))
        return training_fingerprint(load_config(work / "p.yaml"), "simclr", "images-key", 1)

    same = fingerprint(lambda p: None)
    assert fingerprint(lambda p: p["probe"].update(C=2.0)) == same            # another stage's section
    assert fingerprint(lambda p: p["pretrain"].update(checkpoint_every=5)) == same
    assert fingerprint(lambda p: p["pretrain"].update(methods=["simclr"])) == same
    assert fingerprint(lambda p: p["pretrain"].update(temperature=0.2)) != same
    assert fingerprint(lambda p: p["pretrain"]["scale"]["micro"].update(epochs=2)) != same
    assert training_fingerprint(load_config(work / "params.yaml"), "simclr", "other-images", 1) != same


def test_another_runs_checkpoint_is_set_aside_not_deleted(tmp_path):
    ckpt = tmp_path / "simclr" / "last.pt"
    assert set_aside_other_run(ckpt, "aaaa") is None          # nothing yet: the stamp is written
    ckpt.write_bytes(b"run A")
    assert set_aside_other_run(ckpt, "aaaa") is None and ckpt.read_bytes() == b"run A"  # same run: resume
    aside = set_aside_other_run(ckpt, "bbbb")
    assert aside is not None and not ckpt.exists() and aside.read_bytes() == b"run A"
    assert json.loads((ckpt.parent / "params_hash.json").read_text()) == {"params_hash": "bbbb"}
