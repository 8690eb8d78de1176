import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nanomorph.models.encoder import random_encoder
from nanomorph.ssl.train import pretrain, warmup_cosine

SETTINGS = dict(
    arch="resnet18", image_size=32, batch_size=8, lr=0.2, momentum=0.9, weight_decay=1e-6, warmup_epochs=0,
    temperature=0.1, lambd=0.005, projector_dims=[128, 64, 1024], crop_side=[0.25, 0.5], flip_p=0.5,
    jitter_p=0.8, brightness=0.4, contrast=0.4, seed=0, progress=False,
)

# Run in a subprocess: train, and once step 5 is done (the last checkpoint was written at step 4, inside the
# second epoch) announce it and wait to be killed.
CHILD = """
import json, sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(int(sys.argv[4]))
torch.use_deterministic_algorithms(True)
from nanomorph.ssl.train import pretrain

def stall_after_step_5(metrics, step):
    if step == 5:
        Path(sys.argv[3]).touch()
        time.sleep(300)

pretrain(np.load(sys.argv[1]), **json.loads(sys.argv[2]), log_fn=stall_after_step_5)
"""


def textures(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Random oriented gratings plus noise: images with structure for the views to crop and jitter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    freq, angle, phase = rng.uniform(2, 8, n), rng.uniform(0, np.pi, n), rng.uniform(0, 2 * np.pi, n)
    waves = np.sin(2 * np.pi * freq[:, None, None] * (np.cos(angle)[:, None, None] * x
                                                     + np.sin(angle)[:, None, None] * y) + phase[:, None, None])
    return np.clip(0.5 + 0.3 * waves + 0.1 * rng.standard_normal((n, size, size)), 0, 1).astype(np.float32)


@pytest.fixture
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("method", ["simclr", "barlow_twins"])
def test_tiny_run_trains_and_records_history(method):
    logged = []
    result = pretrain(textures(16), method=method, epochs=2, checkpoint_path=None, checkpoint_every=0,
                      log_fn=lambda metrics, step: logged.append((step, metrics)), **SETTINGS)
    assert [h["epoch"] for h in result.history] == [1, 2]
    for h in result.history:
        assert np.isfinite(h["loss"]) and h["images_per_s"] > 0 and 0 < h["embedding_std"] < 1
        assert 1 <= h["effective_rank"] <= 16
    step_logs = [(s, m) for s, m in logged if "loss" in m]
    assert [s for s, _ in step_logs] == [1, 2, 3, 4]
    assert all(np.isfinite(m["loss"]) for _, m in step_logs)
    assert step_logs[0][1]["lr"] == 0.2 and step_logs[-1][1]["lr"] < 0.2  # cosine decay
    assert [s for s, m in logged if "epoch/embedding_std" in m] == [2, 4]
    assert not result.encoder.training and next(result.encoder.parameters()).device.type == "cpu"
    init = random_encoder("resnet18", seed=0)  # pretrain's init under the same seed
    assert not torch.equal(result.encoder.trunk.conv1.weight, init.trunk.conv1.weight)


def test_resume_after_sigkill_replays_the_uninterrupted_run(tmp_path, deterministic):
    images = textures(24)  # 3 steps per epoch, 6 in all; checkpoints at steps 2, 4 and 6
    settings = dict(SETTINGS, method="simclr", epochs=2, checkpoint_every=2)
    reference = pretrain(images, **settings, checkpoint_path=None)

    ckpt, marker = tmp_path / "pretrain.ckpt", tmp_path / "step5.done"
    np.save(tmp_path / "images.npy", images)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "images.npy"),
                              json.dumps(dict(settings, checkpoint_path=str(ckpt))), str(marker),
                              str(torch.get_num_threads())], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never reached step 5"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert torch.load(ckpt, weights_only=True)["step"] == 4

    resumed = pretrain(images, **settings, checkpoint_path=ckpt)
    expected, got = reference.encoder.state_dict(), resumed.encoder.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference.history]
    assert torch.load(ckpt, weights_only=True)["step"] == 6


def test_finished_checkpoint_is_reused_and_foreign_one_refused(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    settings = dict(SETTINGS, method="barlow_twins", epochs=1, checkpoint_every=0)
    first = pretrain(textures(8), **settings, checkpoint_path=ckpt)
    again = pretrain(textures(8), **settings, checkpoint_path=ckpt)  # nothing left to train
    assert all(torch.equal(a, b) for a, b in zip(first.encoder.state_dict().values(),
                                                 again.encoder.state_dict().values()))
    assert again.history == first.history
    with pytest.raises(ValueError, match="lambd"):
        pretrain(textures(8), **dict(settings, lambd=0.01), checkpoint_path=ckpt)
    with pytest.raises(ValueError, match="data_sha256"):
        pretrain(textures(8, seed=1), **settings, checkpoint_path=ckpt)


def test_small_data_set_shrinks_the_batch_with_a_warning():
    with pytest.warns(UserWarning, match="batch size 4"):
        result = pretrain(textures(4), method="simclr", epochs=1, checkpoint_path=None, checkpoint_every=0,
                          **SETTINGS)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    with pytest.raises(ValueError, match="at least 2"):
        pretrain(textures(1), method="simclr", epochs=1, checkpoint_path=None, checkpoint_every=0, **SETTINGS)


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(warmup_steps=4, total_steps=12)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == 1.0 and factor(8) == pytest.approx(0.5) and factor(12) == pytest.approx(0.0)
    assert all(factor(s) > factor(s + 1) for s in range(4, 11))


def test_views_built_in_workers_give_the_same_run(deterministic):
    settings = dict(SETTINGS, method="simclr", epochs=1, checkpoint_path=None, checkpoint_every=0)
    in_process = pretrain(textures(16), **settings, view_workers=0)
    in_workers = pretrain(textures(16), **settings, view_workers=2)
    expected, got = in_process.encoder.state_dict(), in_workers.encoder.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
