"""Segmentation sweep: per-image dice/IoU vs number of training images, for several encoders.

For each seed the images are split ONCE into train/test (stratified by `strata` when given); with
`validation_fraction` > 0 a validation part is carved out of the train part the same way. Training sets
are nested seeded subsets of what is left; every model is scored on every validation and every test image
(column `split`). Nothing is early-stopped or selected on the test images: a caller choosing among runs
(e.g. the best encoder) must choose on the validation rows, which no model was trained on. Validation images
are scored only by the runs at each seed's largest training set, where the segment stage makes its choice
(U-Net prediction is ~half a run's time, so the other runs skip it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import segmentation_models_pytorch as smp
import torch
from tqdm.auto import tqdm

from nanomorph.probe.splits import SplitRule, as_rule, nested_stratified_subsets, nested_subsets, random_split
from nanomorph.segment.classical import fit_classical
from nanomorph.segment.metrics import dice_iou
from nanomorph.segment.model import build_unet
from nanomorph.segment.train import (
    predict_masks,
    predict_masks_sharing_encoder,
    train_segmenter,
)

COLUMNS = ["encoder", "seed", "n", "split", "image_index", "dice", "iou"]


@dataclass(frozen=True)
class SweepRun:
    """One finished (encoder, seed, n) run, as handed to `segmentation_sweep`'s `on_run` callback.

    `pred` holds the boolean test masks in the order of `test_idx`; `model` is the trained U-Net (eval mode),
    None for a classical segmenter.
    """

    encoder: str
    seed: int
    n: int
    fit_idx: np.ndarray
    test_idx: np.ndarray
    model: smp.Unet | None
    pred: np.ndarray


class PlannedRun(NamedTuple):
    """One (method, seed, n) run of the sweep's plan: its training, scored validation and test image indices."""

    method: str
    seed: int
    n: int
    fit_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray


def seeded_unet(arch: str, encoder_state: dict | None, freeze_encoder: bool, init_seed: int):
    """`build_unet` under a forked, seeded torch RNG: every encoder gets the same decoder initialisation,
    so runs differ only in the encoder weights, and the caller's global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return build_unet(arch, encoder_state, freeze_encoder)


def _score_rows(name: str, seed: int, n: int, split: str, idx: np.ndarray, pred: np.ndarray,
                masks: np.ndarray) -> list[dict]:
    rows = []
    for i, p in zip(idx, pred):
        dice, iou = dice_iou(p, masks[i])
        rows.append({"encoder": name, "seed": seed, "n": n, "split": split, "image_index": int(i), "dice": dice,
                     "iou": iou})
    return rows


def split_train_validation_test(n_images: int, test_fraction: float | SplitRule, validation_fraction: float,
                                seed: int, strata: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted (train_idx, validation_idx, test_idx): test first, then validation out of the rest, both
    stratified by `strata` when given; validation is empty when `validation_fraction` is 0.

    A SplitRule with the data's own split returns its parts as they are, for every seed (a given split without
    validation images gets its validation part carved out of its train part as above).
    """
    rule = as_rule(test_fraction)
    if rule.given is not None:
        train_idx, given_val, test_idx = rule.given.train, rule.given.validation, rule.given.test
        if len(given_val) or validation_fraction <= 0:
            return train_idx, given_val, test_idx
    else:
        train_idx, test_idx = random_split(n_images, rule.test_fraction, seed, strata)
    if validation_fraction <= 0:
        return train_idx, np.array([], dtype=int), test_idx
    part_strata = None if strata is None else np.asarray(strata)[train_idx]
    keep, held = random_split(len(train_idx), validation_fraction, seed, part_strata)
    return train_idx[keep], train_idx[held], test_idx


def segmentation_sweep(
    images: np.ndarray,
    masks: np.ndarray,
    encoder_states: dict[str, dict | None],
    *,
    arch: str,
    train_sizes: Sequence[int],
    epochs_for: Callable[[int], int],
    seeds: Sequence[int],
    test_fraction: float | SplitRule,
    lr: float,
    batch_size: int,
    freeze_encoder: bool,
    validation_fraction: float = 0.0,
    strata: np.ndarray | None = None,
    device: str = "cpu",
    progress: bool = True,
    on_run: Callable[[SweepRun], None] | None = None,
    classical: Sequence[str] = (),
    object_min_size: int = 4,
    steps: int | None = None,
    crop_size: int | None = None,
    encoder_lr: float | None = None,
    dihedral: bool = False,
    loss: str = "dice",
    cpu_bf16: bool = False,
    balanced_subsets: bool = False,
    predict_cpu_bf16: bool | None = None,
) -> pd.DataFrame:
    """Rows (encoder, seed, n, split, image_index, dice, iou): one per validation or test image per
    (encoder, seed, n) run.

    `image_index` indexes `images`; validation rows come from the runs at each seed's largest n. Sizes
    larger than the train part are skipped with a warning. The
    seed drives the split, the subset draw, the U-Net initialisation and the training shuffles/flips,
    identically for every encoder. `on_run`, when given, receives every finished run (model and test
    predictions included), e.g. to keep the predictions of some runs for further analysis.
    `steps`, when given, trains every run for that many optimiser steps (whatever n) instead of
    `epochs_for(n)` epochs. `crop_size`, `encoder_lr` and `loss` go to `train_segmenter`,
    `dihedral` to `predict_masks`, `cpu_bf16` to both (`predict_cpu_bf16`, when given, to `predict_masks`
    instead: float32 training with bf16 prediction).
    `balanced_subsets` (with `strata`): training sets spread over the strata's classes
    (`nested_stratified_subsets`: at n = 4 one image of each of 4 morphologies) instead of a plain draw.
    `classical` names classical segmenters (nanomorph.segment.classical) fitted on the same training images of
    every (seed, n) and scored on the same validation and test images; their rows carry the method's name in
    `encoder` (they reach `on_run` with `model=None`).
    """
    images = np.asarray(images, dtype=np.float32)
    masks = np.asarray(masks)
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    plan, classical_plan = [], []
    no_validation = np.array([], dtype=int)
    for seed in seeds:
        train_idx, val_idx, test_idx = split_train_validation_test(len(images), test_fraction, validation_fraction,
                                                                   seed, strata)
        subsets = (nested_stratified_subsets(train_idx, train_sizes, seed, strata)
                   if balanced_subsets and strata is not None else nested_subsets(train_idx, train_sizes, seed))
        for n, fit_idx in subsets.items():
            # Validation images are scored only where a choice is made: at the seed's largest training set.
            scored_val = val_idx if n == max(subsets) else no_validation
            plan.extend(PlannedRun(name, int(seed), n, fit_idx, scored_val, test_idx) for name in encoder_states)
            classical_plan.extend(PlannedRun(name, int(seed), n, fit_idx, scored_val, test_idx) for name in classical)
    predict_bf16 = cpu_bf16 if predict_cpu_bf16 is None else predict_cpu_bf16
    rows: list[dict] = []
    for name, seed, n, fit_idx, val_idx, test_idx in classical_plan:
        segmenter = fit_classical(name, images[fit_idx], masks[fit_idx], min_size=object_min_size)
        if len(val_idx):
            rows.extend(_score_rows(name, seed, n, "validation", val_idx, segmenter.predict(images[val_idx]), masks))
        pred = segmenter.predict(images[test_idx])
        rows.extend(_score_rows(name, seed, n, "test", test_idx, pred, masks))
        if on_run is not None:
            on_run(SweepRun(name, seed, n, fit_idx, test_idx, None, pred))
    # The runs of one (encoder, seed) differ only in their training images and share the test images: trained
    # first, they are scored together, and with a frozen encoder its pass over the test images serves all of them.
    groups: dict[tuple[str, int], list[PlannedRun]] = {}
    for entry in plan:
        groups.setdefault((entry.method, entry.seed), []).append(entry)
    run_rows: dict[tuple[str, int, int], list[dict]] = {}
    progress_bar = tqdm(total=len(plan), desc="segmentation runs", disable=not progress)
    for runs in groups.values():
        models = []
        for name, seed, n, fit_idx, _val_idx, _test_idx in runs:
            model = seeded_unet(arch, encoder_states[name], freeze_encoder, init_seed=seed)
            train_segmenter(
                model, images[fit_idx], masks[fit_idx], epochs=None if steps else epochs_for(n), steps=steps, lr=lr,
                batch_size=batch_size, seed=seed, device=device, crop_size=crop_size, encoder_lr=encoder_lr,
                loss=loss, cpu_bf16=cpu_bf16,
            )
            models.append(model)
            progress_bar.update()
        test_idx = runs[0].test_idx
        predict = {"batch_size": max(batch_size, 8), "device": device, "dihedral": dihedral, "cpu_bf16": predict_bf16}
        preds = predict_masks_sharing_encoder(models, images[test_idx], **predict)
        for (name, seed, n, fit_idx, val_idx, _test_idx), model, pred in zip(runs, models, preds):
            scored = []
            if len(val_idx):
                val_pred = predict_masks(model, images[val_idx], **predict)
                scored.extend(_score_rows(name, seed, n, "validation", val_idx, val_pred, masks))
            scored.extend(_score_rows(name, seed, n, "test", test_idx, pred, masks))
            run_rows[(name, seed, n)] = scored
            if on_run is not None:
                on_run(SweepRun(name, seed, n, fit_idx, test_idx, model, pred))
        del models
    progress_bar.close()
    for name, seed, n, *_ in plan:
        rows.extend(run_rows[(name, seed, n)])
    return pd.DataFrame(rows, columns=COLUMNS)
