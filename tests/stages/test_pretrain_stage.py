"""The pretrain stage on a folder of a lab's own images, in one process and as two torchrun (gloo) ranks."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import tifffile
import torch
import yaml
from PIL import Image

from nanomorph.data.io import read_image
from nanomorph.config import load_config
from nanomorph.stages.pretrain import main, set_aside_other_run, training_code_digest, training_fingerprint

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


def test_the_training_code_is_part_of_the_checkpoint_fingerprint(project, tmp_path):
    # dvc re-runs the stage when the code changes; a finished checkpoint of the old code must not be "resumed".
    work, _ = project
    cfg = load_config(work / "params.yaml")
    assert training_fingerprint(cfg, "simclr", "k", 1, code="aaaa") != training_fingerprint(cfg, "simclr", "k", 1,
                                                                                            code="bbbb")
    assert training_fingerprint(cfg, "simclr", "k", 1) == training_fingerprint(cfg, "simclr", "k", 1,
                                                                               code=training_code_digest())
    package = tmp_path / "nanomorph" / "ssl"
    package.mkdir(parents=True)
    (package / "loss.py").write_text("scale = 1\n")
    before = training_code_digest((package,))
    (package / "notes.txt").write_text("not code")
    assert training_code_digest((package,)) == before
    (package / "loss.py").write_text("scale = 2\n")
    assert training_code_digest((package,)) != before
    (package / "loss.py").write_text("scale = 1\n")
    (package / "views.py").write_text("")
    assert training_code_digest((package,)) != before  # a new module counts too


def test_another_runs_checkpoint_is_set_aside_not_deleted(tmp_path):
    ckpt = tmp_path / "simclr" / "last.pt"
    assert set_aside_other_run(ckpt, "aaaa") is None          # nothing yet: the stamp is written
    ckpt.write_bytes(b"run A")
    assert set_aside_other_run(ckpt, "aaaa") is None and ckpt.read_bytes() == b"run A"  # same run: resume
    aside = set_aside_other_run(ckpt, "bbbb")
    assert aside is not None and not ckpt.exists() and aside.read_bytes() == b"run A"
    assert json.loads((ckpt.parent / "params_hash.json").read_text()) == {"params_hash": "bbbb"}


def _lab_images(folder: Path, n: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):  # micro profile: one optimiser step of the batch of 16
        tifffile.imwrite(folder / f"img{i:02d}.tif", rng.integers(0, 65536, (64, 64), dtype=np.uint16))
    return folder


def _edit_params(work: Path, edit) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    edit(params)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _ours(err: str) -> list[str]:
    """The stage's own error lines (MLflow logs INFO lines of its own to stderr)."""
    return [line for line in err.splitlines() if line.startswith("nanomorph ") or "Traceback" in line]


class _Payload:
    """Unpickling this would create the marker file: what a malicious checkpoint does with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_an_edit_elsewhere_resumes_the_checkpoint_and_a_training_edit_sets_it_aside_until_success(project, capsys):
    work, _ = project
    images = _lab_images(work / "lab_images")
    ckpt = work / "models" / "checkpoints" / "simclr" / "last.pt"
    aside = ckpt.with_name("last.other-run.pt")
    assert main(["--method", "simclr", "--images", str(images)]) == 0
    first = ckpt.read_bytes()
    capsys.readouterr()

    _edit_params(work, lambda p: p["probe"].update(C=2.0))                    # another stage's section
    assert main(["--method", "simclr", "--images", str(images)]) == 0
    err = capsys.readouterr().err
    assert "resuming from step 1 of 1 (models/checkpoints/simclr/last.pt)" in err  # shown by the stage's logging
    assert "written under other training parameters or code" not in err and not aside.exists()

    _edit_params(work, lambda p: p["pretrain"].update(temperature=0.2))        # shapes training
    assert main(["--method", "simclr", "--images", str(images)]) == 0
    err = capsys.readouterr().err
    assert ("models/checkpoints/simclr/last.pt: written under other training parameters or code; kept as "
            "models/checkpoints/simclr/last.other-run.pt until this run finishes") in err
    assert "resuming" not in err
    assert ckpt.is_file() and ckpt.read_bytes() != first
    assert not aside.exists()  # deleted only once the new run had finished


def test_a_malicious_checkpoint_is_refused_in_one_line_kept_on_disk_and_its_run_ends_failed(project, capsys):
    from nanomorph.stages.pretrain import Process, load_pretraining_images

    work, uri = project
    images = _lab_images(work / "lab_images")
    cfg = load_config(work / "params.yaml")
    data = load_pretraining_images(cfg, images, Process(0, 0, 1, "cpu"))
    ckpt = work / "models" / "checkpoints" / "simclr" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    marker = work / "pwned"
    torch.save({"step": 1, "model": _Payload(marker)}, ckpt)
    # stamped with this run's fingerprint, so the stage tries to resume from it (the dangerous case)
    (ckpt.parent / "params_hash.json").write_text(json.dumps(
        {"params_hash": training_fingerprint(cfg, "simclr", data.key, 1)}))
    evil = ckpt.read_bytes()
    capsys.readouterr()

    assert main(["--method", "simclr", "--images", str(images)]) == 2
    err = capsys.readouterr().err
    lines = _ours(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("nanomorph pretrain: error: models/checkpoints/simclr/last.pt: refused for safety")
    assert "weights_only=False" not in err
    assert not marker.exists()                     # nothing in the file ran
    assert ckpt.read_bytes() == evil               # refused, not deleted: the user decides
    assert not (work / "models" / "encoders" / "simclr.pt").exists()
    assert [run.info.status for run in _pretrain_runs(uri, "simclr")] == ["FAILED"]


def test_a_data_error_keeps_another_runs_checkpoint_where_it_is(project, capsys):
    work, _ = project
    ckpt = work / "models" / "checkpoints" / "simclr" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"a paper-scale run's resume point")
    (ckpt.parent / "params_hash.json").write_text(json.dumps({"params_hash": "another-run"}))
    (work / "empty").mkdir()
    assert main(["--method", "simclr", "--images", str(work / "empty")]) == 2
    assert _ours(capsys.readouterr().err) == [
        f"nanomorph pretrain: error: {work / 'empty'}: no image files (.png, .jpg, .jpeg, .tif, .tiff) anywhere under it"]
    assert ckpt.read_bytes() == b"a paper-scale run's resume point"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.pt", "params_hash.json"]
    assert json.loads((ckpt.parent / "params_hash.json").read_text()) == {"params_hash": "another-run"}


def test_setting_aside_twice_overwrites_no_earlier_checkpoint(tmp_path):
    """Run A's checkpoint set aside for run B; B stopped after writing its own; a third configuration (or A's
    again) must not replace A's file with B's."""
    ckpt = tmp_path / "simclr" / "last.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"run A")
    set_aside_other_run(ckpt, "bbbb")
    ckpt.write_bytes(b"run B")
    set_aside_other_run(ckpt, "aaaa")
    kept = sorted(p.read_bytes() for p in ckpt.parent.glob("*.pt"))
    assert kept == [b"run A", b"run B"]


def _running(uri: str) -> bool:
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name("nanomorph") is None:
        return False
    return any(run.info.status == "RUNNING" for run in _pretrain_runs(uri, "simclr"))


def test_a_new_run_stopped_by_sigterm_keeps_the_set_aside_checkpoint(project):
    """The other run's checkpoint is deleted only after the new run finished: a run killed part way (as dvc or a
    scheduler stops a stage) leaves it on disk, says so in one line and ends its MLflow run KILLED."""
    import signal

    work, uri = project
    images = _lab_images(work / "lab_images")
    _edit_params(work, lambda p: p["pretrain"]["scale"]["micro"].update(epochs=500))  # long enough to stop
    ckpt = work / "models" / "checkpoints" / "simclr" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"a paper-scale run's resume point")
    mlflow.set_tracking_uri(uri)
    mlflow.search_experiments()  # the store's tables exist before both processes open it
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "nanomorph.stages.pretrain", "--method", "simclr", "--images",
                             str(images)], cwd=work, env=env, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "until this run finishes" in line:
                break
        deadline = time.monotonic() + 120
        while not _running(uri) and time.monotonic() < deadline:  # into its MLflow run (store set up) and training
            time.sleep(0.5)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(seen) + rest
    assert proc.returncode == 130, err[-3000:]
    lines = _ours(err)
    assert len(lines) == 1 and lines[0].startswith("nanomorph pretrain: interrupted (stopped by signal SIGTERM)"), err
    assert ckpt.with_name("last.other-run.pt").read_bytes() == b"a paper-scale run's resume point"
    assert {run.info.status for run in _pretrain_runs(uri, "simclr")} == {"KILLED"}


def test_an_undecodable_file_whose_name_is_not_utf8_is_reported_with_a_safe_name(project, capsys):
    """The skipped file is shown with %XX for the bytes that are not UTF-8, on stderr and in the MLflow run's
    skipped_images.tsv, and the stage finishes (writing such a name as text used to crash it after training)."""
    work, uri = project
    images = _lab_images(work / "lab_images")
    with open(os.fsencode(images) + b"/caf\xe9.png", "wb") as f:
        f.write(b"not an image")
    assert main(["--method", "simclr", "--images", str(images)]) == 0
    err = capsys.readouterr().err
    assert f"  {images}/caf%E9.png: not a recognised image format (cannot identify the file)" in err.splitlines()
    assert "\\udc" not in err
    (run,) = _pretrain_runs(uri, "simclr")
    assert run.info.status == "FINISHED"
    listed = Path(mlflow.MlflowClient().download_artifacts(run.info.run_id, "skipped_images.tsv", str(work)))
    assert listed.read_text(encoding="utf-8") == (f"{images}/caf%E9.png\tnot a recognised image format "
                                                  "(cannot identify the file)\n")
