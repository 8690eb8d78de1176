import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nanomorph.models.encoder import Projector, ResNetEncoder, normalise, random_encoder
from nanomorph.models.precision import cpu_has_bf16
from nanomorph.ssl.simclr import nt_xent_loss
from nanomorph.ssl.train import pretrain, warmup_cosine
from nanomorph.ssl.view_data import _epoch_order, step_views
from nanomorph.ssl.views import make_view_transform

from texture_images import textures

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


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second intra-op thread, and on a busy machine two threads contending
    for cores make every step many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
        assert np.isfinite(h["loss"]) and 0 < h["embedding_std"] < 1
        assert "images_per_s" not in h  # wall-clock: logged, never in the history a rerun must reproduce
        assert 1 <= h["effective_rank"] <= 16
    step_logs = [(s, m) for s, m in logged if "loss" in m]
    assert [s for s, _ in step_logs] == [1, 2, 3, 4]
    assert all(np.isfinite(m["loss"]) for _, m in step_logs)
    assert step_logs[0][1]["lr"] == 0.2 and step_logs[-1][1]["lr"] < 0.2  # cosine decay
    assert [s for s, m in logged if "epoch/embedding_std" in m] == [2, 4]
    assert all(m["epoch/images_per_s"] > 0 for _, m in logged if "epoch/loss" in m)
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


class _Interrupted(Exception):
    pass


def _interrupt_at_step_3(metrics, step):
    if step == 3:  # after step 2's checkpoint, before step 4's
        raise _Interrupted


def test_accumulation_steps_along_the_mean_gradient_of_its_micro_batches(deterministic):
    """accumulate_steps=2: each optimiser step = the mean loss of two 4-image micro-batches, whose negatives
    come from the micro-batch alone; the LR schedule and the logs count optimiser steps."""
    images = textures(16, size=16)  # 2 optimiser steps of 2 micro-batches of 4
    settings = dict(SETTINGS, method="simclr", optimizer="sgd", lr=0.05, momentum=0.0, weight_decay=0.0,
                    batch_size=4, epochs=1, image_size=16, checkpoint_path=None, checkpoint_every=0)
    logged = []
    result = pretrain(images, **settings, accumulate_steps=2, log_fn=lambda m, s: logged.append((s, m)))
    step_logs = [(s, m) for s, m in logged if "loss" in m]
    assert [s for s, _ in step_logs] == [1, 2]
    assert [m["lr"] for _, m in step_logs] == [0.05, pytest.approx(0.025)]  # cosine over 2 optimiser steps

    # The same two steps by hand, from the loop's initialisation, shuffle and per-position views.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder, projector = ResNetEncoder("resnet18", 1), Projector(512, (128, 64, 1024))
    params = [*encoder.parameters(), *projector.parameters()]
    initial = {k: v.detach().clone() for k, v in encoder.named_parameters()}
    transform = make_view_transform(16)
    data = torch.from_numpy(images).unsqueeze(1)
    order = _epoch_order(16, seed=0, epoch=0)
    for step in range(2):
        rows = order[8 * step:8 * step + 8]
        losses = []
        for first in (0, 4):
            v1, v2 = step_views(data[rows[first:first + 4]], transform, 0, step, first)
            losses.append(nt_xent_loss(projector(encoder(normalise(v1))), projector(encoder(normalise(v2))), 0.1))
        grads = torch.autograd.grad(torch.stack(losses).mean(), params)
        lr = 0.05 * warmup_cosine(0, 2)(step)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
        # Step 1 starts from identical weights; step 2 from weights that differ by rounding.
        tolerance = 1e-6 if step == 0 else 1e-4
        assert step_logs[step][1]["loss"] == pytest.approx(torch.stack(losses).mean().item(), rel=tolerance)
    # Summation order differs (two backward passes vs one), so the weights agree to rounding noise amplified
    # by the second step: measured 1.5e-5 where the two steps moved them by up to 43 (step-2 loss: 1.7e-5
    # relative).
    expected, got = dict(encoder.named_parameters()), dict(result.encoder.named_parameters())
    moved = max((expected[k].double() - initial[k]).abs().max().item() for k in expected)
    difference = max((expected[k].double() - got[k].detach()).abs().max().item() for k in expected)
    assert difference < 1e-4 * moved


def test_resume_with_accumulation_replays_the_uninterrupted_run(tmp_path, deterministic):
    settings = dict(SETTINGS, method="barlow_twins", batch_size=4, accumulate_steps=2, epochs=2, checkpoint_every=2,
                    image_size=16)
    images = textures(16, size=16)  # 2 optimiser steps per epoch, 4 in all
    reference = pretrain(images, **settings, checkpoint_path=None)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(_Interrupted):
        pretrain(images, **settings, checkpoint_path=ckpt, log_fn=_interrupt_at_step_3)
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    resumed = pretrain(images, **settings, checkpoint_path=ckpt)
    expected, got = reference.encoder.state_dict(), resumed.encoder.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference.history]
    with pytest.raises(ValueError, match="accumulate_steps"):  # another accumulation is another run
        pretrain(images, **dict(settings, accumulate_steps=1, batch_size=8), checkpoint_path=ckpt)


def test_batch_layout_is_checked():
    settings = dict(SETTINGS, method="simclr", epochs=1, checkpoint_path=None, checkpoint_every=0)
    with pytest.raises(ValueError, match="fewer than one optimiser step"):
        pretrain(textures(8), **dict(settings, batch_size=8), accumulate_steps=2)
    with pytest.raises(ValueError, match="BatchNorm group"):
        pretrain(textures(8), **dict(settings, batch_size=8), bn_groups=8)


def test_compiled_model_gives_the_eager_run(deterministic):
    """compile_model runs the encoder + projector through torch.compile; with the `aot_eager` backend (traced
    forward and backward graphs, no code generation, so the test stays fast) the run is unchanged."""
    from torch._dynamo.utils import counters

    settings = dict(SETTINGS, method="simclr", batch_size=8, epochs=1, image_size=16, checkpoint_path=None,
                    checkpoint_every=0)
    eager = pretrain(textures(8, size=16), **settings)
    counters.clear()
    compiled = pretrain(textures(8, size=16), **settings, compile_model="aot_eager")
    assert counters["stats"]["unique_graphs"] >= 1
    expected, got = eager.encoder.state_dict(), compiled.encoder.state_dict()
    assert list(got) == list(expected)  # in-place compile: no "_orig_mod." key prefix
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_cpu_bf16_is_used_only_when_asked_and_native():
    from nanomorph.ssl.train import _amp_dtype

    cpu = torch.device("cpu")
    assert _amp_dtype(cpu) is None and _amp_dtype(cpu, cpu_bf16=False) is None
    assert _amp_dtype(cpu, cpu_bf16=True) == (torch.bfloat16 if cpu_has_bf16() else None)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_cpu_bf16_run_trains_differs_from_float32_and_does_not_resume_a_float32_checkpoint(tmp_path):
    settings = dict(SETTINGS, method="barlow_twins", epochs=1, checkpoint_every=0)
    ckpt = tmp_path / "run.ckpt"
    fp32 = pretrain(textures(8), **settings, checkpoint_path=ckpt)
    bf16 = pretrain(textures(8), **settings, checkpoint_path=None, cpu_bf16=True)
    assert np.isfinite([h["loss"] for h in bf16.history]).all()
    assert bf16.history[-1]["loss"] != fp32.history[-1]["loss"]  # the forward pass really ran in bf16
    assert all(p.dtype == torch.float32 for p in bf16.encoder.parameters())  # weights stay float32
    with pytest.raises(ValueError, match="autocast"):
        pretrain(textures(8), **settings, checkpoint_path=ckpt, cpu_bf16=True)
    bf16_ckpt = tmp_path / "bf16.ckpt"
    pretrain(textures(8), **settings, checkpoint_path=bf16_ckpt, cpu_bf16=True)
    with pytest.raises(ValueError, match="autocast"):  # and the other way round
        pretrain(textures(8), **settings, checkpoint_path=bf16_ckpt)


def test_batchnorm_is_synchronised_only_for_ddp_on_cuda():
    # SyncBatchNorm for CUDA DDP (as the Barlow Twins reference); CPU/gloo and single-process runs keep BatchNorm.
    from torch import nn

    from nanomorph.ssl.distributed import sync_batchnorm, syncs_batchnorm

    def kinds(module):
        return {type(m) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

    assert not syncs_batchnorm(torch.device("cpu"), 2) and not syncs_batchnorm(torch.device("cuda"), 1)
    encoder = random_encoder("resnet18", seed=0)
    keys = list(encoder.state_dict())
    assert kinds(sync_batchnorm(encoder, torch.device("cpu"), 2)) == {nn.BatchNorm2d}
    synced = sync_batchnorm(encoder, torch.device("cuda", 0), 2)
    assert synced is encoder and kinds(encoder) == {nn.SyncBatchNorm}  # replaced in place, same module
    assert list(encoder.state_dict()) == keys
