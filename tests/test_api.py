"""nanomorph.api: a notebook's few lines run end to end on tiny data, and train what the stages train.

The user script below is what README's "Use it from Python" shows, on 16 synthetic 32 px images in the
nanowire layout with the micro profile shrunk further (one 2-step pretraining epoch, one U-Net step).
The stages and the API share their config -> arguments mappings (`pretrain_arguments`, `sweep_arguments`,
`unet_arguments`); here each API call is also checked against the library function called with the
argument list the stages spelled out by hand before those mappings existed, so neither side can drift.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import nanomorph
from nanomorph.data.synthetic import CLASSES, write_nanowire_dataset

ROOT = Path(__file__).resolve().parents[1]

USER_SCRIPT = """
import dataclasses
import nanomorph as nm
from nanomorph.data.layout import find_nanowire_dataset

cfg = nm.load_config(params, profile="micro")
cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, source_size=32, batch_size=8),
                          probe=dataclasses.replace(cfg.probe, labels_per_class=(1, 2)),
                          segment=dataclasses.replace(cfg.segment, steps=1))
samples = find_nanowire_dataset(folder, cfg.data.classes)
images, labels = [s.image for s in samples], [s.label for s in samples]
encoder = nm.pretrain(images, cfg, method="simclr", device="cpu")
features = nm.extract_features(encoder, images, cfg, device="cpu")
table = nm.probe_sweep({"simclr": features}, labels, cfg)
unet = nm.train_segmenter(encoder, images, [s.mask for s in samples], cfg, n=4, device="cpu")
masks = nm.predict_masks(unet, images[:2], cfg, device="cpu")
"""


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> dict:
    """The user script's namespace after running it on a fresh tiny data set."""
    folder = tmp_path_factory.mktemp("api") / "nanowires"
    write_nanowire_dataset(folder, CLASSES, images_per_class=4, size=32, seed=0, progress=False)
    namespace = {"params": ROOT / "params.yaml", "folder": folder}
    assert len(USER_SCRIPT.strip().splitlines()) < 20
    exec(compile(USER_SCRIPT, "user_script", "exec"), namespace)
    return namespace


def test_the_user_script_runs_and_returns_what_its_docstrings_promise(session):
    from nanomorph.models.encoder import ResNetEncoder

    cfg, encoder, features, table, masks = (session[k] for k in ("cfg", "encoder", "features", "table", "masks"))
    assert isinstance(encoder, ResNetEncoder) and not encoder.training
    stage_dims = {"layer3": 256, "layer4": 512}  # resnet18: the pooled probe.feature_stages, concatenated
    assert features.shape == (16, sum(stage_dims[s] for s in cfg.probe.feature_stages))
    assert features.dtype == np.float32 and np.isfinite(features).all()
    assert isinstance(table, pd.DataFrame)
    assert set(table["encoder"]) == {"simclr", "simclr+knn"} and set(table["n"]) == {1, 2}
    assert len(table) == 2 * cfg.probe.split_seeds * 2  # (linear, knn) x split seeds x budgets
    assert table["accuracy"].between(0, 1).all() and (table["encoder_seed"] == cfg.pretrain.seed).all()
    assert not session["unet"].training
    assert masks.shape == (2, 32, 32) and masks.dtype == bool


def _stage_pretrain_call(images, p, method):
    """ssl.train.pretrain with the argument list the pretrain stage wrote out before `pretrain_arguments`."""
    from nanomorph.ssl.train import pretrain

    return pretrain(
        images, method=method, arch=p.arch, image_size=p.image_size, batch_size=p.batch_size,
        epochs=p.epochs, optimizer=p.optimizer, lr=p.lr, momentum=p.momentum,
        weight_decay=p.weight_decay, warmup_epochs=p.warmup_epochs, temperature=p.temperature,
        lambd=p.lambd, projector_dims=p.projector_dims, crop_side=p.crop_side, flip_p=p.flip_p,
        jitter_p=p.jitter_p, brightness=p.brightness, contrast=p.contrast, seed=p.seed,
        dihedral=p.dihedral, blur_p=p.blur_p, blur_sigma=p.blur_sigma, noise_std=p.noise_std,
        checkpoint_path=None, checkpoint_every=p.checkpoint_every, device="cpu",
        accumulate_steps=p.accumulate_steps, compile_model=p.compile, cpu_bf16=p.cpu_bf16,
        log_fn=None, progress=False,
    ).encoder


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_api_pretrain_trains_the_stages_encoder(session):
    from nanomorph.data.io import load_image_stack

    cfg = session["cfg"]
    images = load_image_stack(session["images"], cfg.pretrain.source_size)  # what the stage's image cache holds
    stage = _stage_pretrain_call(images, cfg.pretrain, "simclr")
    assert _same_weights(session["encoder"].state_dict(), stage.state_dict())


def test_api_pretrain_hands_on_its_overrides(monkeypatch, tmp_path):
    from nanomorph.config import load_config
    from nanomorph.ssl import train

    seen = {}
    monkeypatch.setattr(train, "pretrain", lambda images, **kw: seen.update(kw) or train.PretrainResult("encoder"))
    section = load_config(ROOT / "params.yaml", "micro").pretrain
    images = np.zeros((2, 8, 8), np.float32)
    assert nanomorph.pretrain(images, section, method="barlow_twins", seed=7, checkpoint=tmp_path / "c.pt",
                              device="cpu", progress=True) == "encoder"
    assert seen == {**train.pretrain_arguments(section, "barlow_twins"), "seed": 7,
                    "checkpoint_path": tmp_path / "c.pt", "device": "cpu", "log_fn": None, "progress": True}


def test_pretrain_arguments_cover_every_training_keyword():
    from nanomorph.config import load_config
    from nanomorph.ssl.train import RUNTIME_ARGUMENTS, pretrain, pretrain_arguments

    keywords = set(inspect.signature(pretrain).parameters) - {"images"}
    mapped = pretrain_arguments(load_config(ROOT / "params.yaml", "micro").pretrain, "barlow_twins")
    assert set(mapped) == keywords - set(RUNTIME_ARGUMENTS)
    assert mapped["method"] == "barlow_twins"


def test_api_probe_sweep_is_the_stages_sweep(session):
    from nanomorph.probe.solvers import SolverSettings
    from nanomorph.probe.sweep import probe_sweep

    cfg, features, labels = session["cfg"], session["features"], np.asarray(session["labels"])
    pr = cfg.probe
    # the probe stage's call as it was written out before `sweep_arguments`
    settings = SolverSettings(solver=pr.solver, C=pr.C, tol=pr.tol, max_iter=pr.max_iter, paper_lr=pr.paper_lr,
                              paper_batch_size=pr.paper_batch_size, paper_epochs=pr.paper_epochs)
    stage = probe_sweep({("simclr", cfg.pretrain.seed): features}, labels, pr.labels_per_class,
                        list(range(pr.split_seeds)), pr.test_fraction, settings, knn_k=pr.knn_k).table
    pd.testing.assert_frame_equal(session["table"], stage)


def test_api_train_segmenter_is_the_register_stages_recipe(session):
    from nanomorph.data.io import load_image_stack, load_mask_stack
    from nanomorph.probe.splits import nested_subsets
    from nanomorph.serving.train import train_unet

    cfg, encoder = session["cfg"], session["encoder"]
    sg = cfg.segment
    chosen = nested_subsets(np.arange(16), [4], sg.seed)[4]
    images = load_image_stack([session["images"][i] for i in chosen], sg.image_size)
    masks = load_mask_stack([session["samples"][i].mask for i in chosen], sg.image_size)
    # the register stage's call as it was written out before `unet_arguments`
    stage = train_unet(encoder.resnet_state_dict(), images, masks, arch=cfg.pretrain.arch,
                       epochs=sg.epochs_for(len(images)), lr=sg.lr, batch_size=sg.batch_size,
                       freeze_encoder=sg.freeze_encoder, seed=sg.seed, device="cpu", progress=False, steps=sg.steps,
                       crop_size=sg.crop_size, encoder_lr=sg.encoder_lr, loss=sg.loss, cpu_bf16=sg.cpu_bf16)
    assert _same_weights(session["unet"].state_dict(), stage.state_dict())


def test_wrong_config_section_and_bad_n_are_refused(session):
    cfg = session["cfg"]
    with pytest.raises(TypeError, match="PretrainConfig"):
        nanomorph.pretrain(np.zeros((2, 32, 32), np.float32), cfg.probe)
    with pytest.raises(ValueError, match="n = 99"):
        nanomorph.train_segmenter(session["encoder"], session["images"], [s.mask for s in session["samples"]],
                                  cfg, n=99)


def test_import_nanomorph_stays_light_and_re_exports_the_api():
    probe = ("import sys, nanomorph; heavy = [m for m in ('torch', 'pandas', 'nanomorph.api') if m in sys.modules]; "
             "print(heavy); assert nanomorph.load_config is nanomorph.api.load_config")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    assert set(nanomorph.api.__all__) <= set(dir(nanomorph))


def test_readme_example_uses_only_the_api():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    compile(code, "README example", "exec")
    assert len(code.strip().splitlines()) <= 16
    used = set(re.findall(r"\bnm\.(\w+)", code))
    assert used and used <= set(nanomorph.api.__all__)
