import numpy as np
import pytest
import torch

from nanomorph.models.encoder import random_encoder
from nanomorph.probe.splits import random_split
from nanomorph.segment.metrics import dice_iou
from nanomorph.segment.sweep import seeded_unet, segmentation_sweep
from nanomorph.segment.train import (
    _predict,
    predict_masks,
    predict_masks_sharing_encoder,
    predict_probabilities,
    shares_frozen_encoder,
    train_segmenter,
)

ARCH = "resnet18"


def _squares(n, seed, side=32):
    """Bright squares of random size and position on a dark, slightly noisy background."""
    rng = np.random.default_rng(seed)
    images = np.full((n, side, side), 0.2, dtype=np.float32)
    masks = np.zeros((n, side, side), dtype=bool)
    for i in range(n):
        s = rng.integers(8, 14)
        r, c = rng.integers(2, side - s - 2, size=2)
        masks[i, r : r + s, c : c + s] = True
    images[masks] = 0.8
    images += rng.normal(0, 0.03, images.shape).astype(np.float32)
    return images.clip(0, 1), masks


def _mean_dice(model, images, masks):
    return np.mean([dice_iou(p, t)[0] for p, t in zip(predict_masks(model, images), masks)])


def test_training_improves_dice_on_held_out_images():
    train_x, train_y = _squares(8, seed=0)
    test_x, test_y = _squares(4, seed=1)
    model = seeded_unet(ARCH, random_encoder(ARCH, seed=0).resnet_state_dict(), True, init_seed=0)
    untrained = _mean_dice(model, test_x, test_y)
    train_segmenter(model, train_x, train_y, epochs=20, lr=1e-2, batch_size=4, seed=0)  # reaches 0.95
    trained = _mean_dice(model, test_x, test_y)
    assert trained > 0.8 and trained > untrained + 0.3


def test_training_is_seeded():
    x, y = _squares(4, seed=0)
    runs = []
    for _ in range(2):
        model = seeded_unet(ARCH, None, True, init_seed=5)
        train_segmenter(model, x, y, epochs=1, lr=1e-3, batch_size=2, seed=3)
        runs.append(model.decoder.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_predict_masks_shape_and_input_checks():
    x, y = _squares(3, seed=0)
    model = seeded_unet(ARCH, None, True, init_seed=0)
    pred = predict_masks(model, x, batch_size=2)
    assert pred.dtype == bool and pred.shape == (3, 32, 32)
    with pytest.raises(ValueError, match="divisible by 32"):
        predict_masks(model, np.zeros((1, 40, 40), dtype=np.float32))
    with pytest.raises(TypeError):
        train_segmenter(model, x, y.astype(np.float32), epochs=1, lr=1e-3, batch_size=2, seed=0)


def _trained_on_one_encoder(encoder_seed=0, sizes=(1, 2, 4)):
    x, y = _squares(4, seed=0)
    state = random_encoder(ARCH, seed=encoder_seed).resnet_state_dict()
    models = []
    for n in sizes:
        model = seeded_unet(ARCH, state, True, init_seed=n)
        models.append(train_segmenter(model, x[:n], y[:n], steps=3, lr=1e-2, batch_size=2, seed=n))
    return models


@pytest.mark.parametrize("dihedral", [False, True])
def test_u_nets_sharing_a_frozen_encoder_predict_bit_for_bit_what_each_gives_alone(dihedral):
    models = _trained_on_one_encoder()
    images, _ = _squares(5, seed=2)
    assert shares_frozen_encoder(models)
    together = _predict(models, images, batch_size=2, device="cpu", dihedral=dihedral, cpu_bf16=False)
    alone = [predict_probabilities(m, images, batch_size=2, dihedral=dihedral) for m in models]
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))
    assert not np.array_equal(alone[0], alone[2])  # the decoders differ, so the equality says something
    masks = predict_masks_sharing_encoder(models, images, batch_size=2, dihedral=dihedral)
    assert all(np.array_equal(m, predict_masks(model, images, batch_size=2, dihedral=dihedral))
               for m, model in zip(masks, models))


def test_u_nets_with_different_or_trainable_encoders_are_predicted_one_by_one():
    one, other = _trained_on_one_encoder(0, (2,))[0], _trained_on_one_encoder(1, (2,))[0]
    assert not shares_frozen_encoder([one, other])
    images = _squares(2, seed=3)[0]
    masks = predict_masks_sharing_encoder([one, other], images)
    assert all(np.array_equal(m, predict_masks(model, images)) for m, model in zip(masks, (one, other)))
    unfrozen = seeded_unet(ARCH, random_encoder(ARCH, seed=0).resnet_state_dict(), False, init_seed=2)
    assert not shares_frozen_encoder([_trained_on_one_encoder(0, (2,))[0], unfrozen])


def test_same_decoder_init_across_encoders():
    a = seeded_unet(ARCH, None, True, init_seed=4)
    b = seeded_unet(ARCH, random_encoder(ARCH, seed=9).resnet_state_dict(), True, init_seed=4)
    sa, sb = a.decoder.state_dict(), b.decoder.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a.encoder.conv1.weight, b.encoder.conv1.weight)


def test_sweep_rows_cover_every_run_and_only_test_images():
    images, masks = _squares(10, seed=2)
    strata = np.repeat([0, 1], 5)
    states = {"pretrained": random_encoder(ARCH, seed=1).resnet_state_dict(), "smp_init": None}
    runs = []
    with pytest.warns(UserWarning, match="skipping size 50"):
        df = segmentation_sweep(
            images, masks, states, arch=ARCH, train_sizes=[1, 2, 50], epochs_for=lambda n: 1, seeds=[0, 1],
            test_fraction=0.4, lr=1e-3, batch_size=2, freeze_encoder=True, strata=strata, progress=False,
            on_run=runs.append,
        )
    # The callback sees every run, with the very predictions that were scored.
    assert sorted((r.encoder, r.seed, r.n) for r in runs) == sorted(
        (e, s, n) for e in states for s in (0, 1) for n in (1, 2))
    for run in runs:
        assert len(run.fit_idx) == run.n and not set(run.fit_idx) & set(run.test_idx)
        scored = df[(df.encoder == run.encoder) & (df.seed == run.seed) & (df.n == run.n)].set_index("image_index")
        for i, p in zip(run.test_idx, run.pred):
            assert scored.loc[i, "dice"] == dice_iou(p, masks[i])[0]
    assert list(df.columns) == ["encoder", "seed", "n", "split", "image_index", "dice", "iou"]
    assert set(df.split) == {"test"}  # no validation part was asked for
    assert len(df) == 2 * 2 * 2 * 4  # encoders x seeds x sizes x test images
    for seed in (0, 1):
        _, test_idx = random_split(10, 0.4, seed, strata)
        assert sorted(strata[test_idx].tolist()) == [0, 0, 1, 1]
        for (_, n), group in df[df.seed == seed].groupby(["encoder", "n"]):
            assert sorted(group.image_index) == sorted(test_idx.tolist())
    assert df[["dice", "iou"]].apply(lambda c: c.between(0, 1)).all().all()


def test_balanced_subsets_give_learned_and_classical_the_same_class_spread_training_sets():
    images, masks = _squares(24, seed=4)
    strata = np.repeat([0, 1, 2, 3], 6)
    runs = []
    segmentation_sweep(
        images, masks, {"smp_init": None}, arch=ARCH, train_sizes=[4], epochs_for=lambda n: 1, seeds=[2],
        test_fraction=0.25, lr=1e-3, batch_size=2, freeze_encoder=True, strata=strata, progress=False,
        on_run=runs.append, classical=["otsu"], balanced_subsets=True,
    )
    assert {r.encoder for r in runs} == {"smp_init", "otsu"}
    assert np.array_equal(runs[0].fit_idx, runs[1].fit_idx)
    assert sorted(strata[runs[0].fit_idx].tolist()) == [0, 1, 2, 3]


def test_validation_part_is_scored_and_never_trained_on():
    from nanomorph.segment.sweep import split_train_validation_test

    images, masks = _squares(20, seed=3)
    strata = np.repeat([0, 1], 10)
    train_idx, val_idx, test_idx = split_train_validation_test(20, 0.2, 0.25, seed=5, strata=strata)
    assert len(test_idx) == 4 and len(val_idx) == 4 and len(train_idx) == 12
    assert not (set(train_idx) & set(val_idx)) and not (set(train_idx) & set(test_idx))
    assert sorted(strata[val_idx].tolist()) == [0, 0, 1, 1]
    # Same seed, same parts; the test part is the one a sweep without validation uses.
    again = split_train_validation_test(20, 0.2, 0.25, seed=5, strata=strata)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train_idx, val_idx, test_idx)))
    assert np.array_equal(random_split(20, 0.2, 5, strata)[1], test_idx)

    runs = []
    df = segmentation_sweep(
        images, masks, {"smp_init": None}, arch=ARCH, train_sizes=[2, 12], epochs_for=lambda n: 1, seeds=[5],
        test_fraction=0.2, validation_fraction=0.25, lr=1e-3, batch_size=2, freeze_encoder=True, strata=strata,
        progress=False, on_run=runs.append,
    )
    assert {len(r.fit_idx) for r in runs} == {2, 12}
    for run in runs:  # even the largest training set (the whole remaining train part) leaves validation alone
        assert not set(run.fit_idx) & set(val_idx) and set(run.fit_idx) <= set(train_idx)
    for n in (2, 12):
        rows = df[df.n == n]
        assert sorted(rows[rows.split == "test"].image_index) == sorted(test_idx.tolist())
    # Validation is scored where the stage chooses: at the largest training set only.
    assert sorted(df[df.split == "validation"].image_index) == sorted(val_idx.tolist())
    assert set(df[df.split == "validation"].n) == {12}


def test_random_crops_cut_the_same_window_from_image_and_mask():
    from nanomorph.segment.train import random_crops

    x = torch.arange(2 * 64 * 64, dtype=torch.float32).reshape(2, 1, 64, 64)
    y = x.clone()
    gen = torch.Generator().manual_seed(0)
    cx, cy = random_crops(x, y, 32, gen)
    assert cx.shape == cy.shape == (2, 1, 32, 32)
    assert torch.equal(cx, cy)
    for image, crop in zip(x, cx):  # each crop is a contiguous window of its own image
        top, left = divmod(int(crop[0, 0, 0] - image[0, 0, 0]), 64)
        assert torch.equal(crop, image[..., top : top + 32, left : left + 32])
    with pytest.raises(ValueError):
        random_crops(x, y, 96, gen)


def test_crop_training_learns_and_predicts_whole_images():
    images, masks = _squares(8, seed=0, side=64)
    test_images, test_masks = _squares(6, seed=1, side=64)
    model = seeded_unet(ARCH, random_encoder(ARCH, seed=0).resnet_state_dict(), True, init_seed=0)
    before = _mean_dice(model, test_images, test_masks)
    train_segmenter(model, images, masks, steps=120, lr=1e-2, batch_size=4, seed=0, crop_size=32)
    assert predict_masks(model, test_images).shape == test_masks.shape
    after = _mean_dice(model, test_images, test_masks)
    assert after > 0.7 and after > before + 0.3
    with pytest.raises(ValueError, match="multiple of 32"):
        train_segmenter(model, images, masks, steps=1, lr=1e-3, batch_size=4, seed=0, crop_size=40)


def test_encoder_lr_fine_tunes_the_encoder_but_keeps_its_batchnorm_statistics():
    images, masks = _squares(4, seed=0)
    state = random_encoder(ARCH, 3).resnet_state_dict()
    model = seeded_unet(ARCH, state, freeze_encoder=False, init_seed=0)
    weights_before = model.encoder.layer1[0].conv1.weight.detach().clone()
    stats_before = model.encoder.bn1.running_mean.clone()
    train_segmenter(model, images, masks, steps=3, lr=1e-3, batch_size=2, seed=0, encoder_lr=1e-4)
    assert not torch.equal(model.encoder.layer1[0].conv1.weight, weights_before)
    assert torch.equal(model.encoder.bn1.running_mean, stats_before)


def test_dice_plus_bce_adds_the_pixel_cross_entropy_and_unknown_losses_are_refused():
    import segmentation_models_pytorch as smp

    from nanomorph.segment.train import segmentation_loss

    logits = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    target = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    dice = smp.losses.DiceLoss(mode="binary", from_logits=True)(logits, target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(segmentation_loss("dice")(logits, target), dice)
    assert torch.allclose(segmentation_loss("dice+bce")(logits, target), dice + bce)
    # On an empty-looking prediction of a sparse mask, the cross-entropy term still pushes the wire pixels up.
    flat = torch.full((1, 1, 8, 8), -4.0, requires_grad=True)
    sparse = torch.zeros(1, 1, 8, 8)
    sparse[..., 3, :] = 1
    segmentation_loss("dice+bce")(flat, sparse).backward()
    assert (flat.grad[..., 3, :] < 0).all()
    with pytest.raises(ValueError, match="unknown segmentation loss"):
        segmentation_loss("focal")


@pytest.mark.skipif(not __import__("nanomorph.models.precision", fromlist=["x"]).cpu_has_bf16(),
                    reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_cpu_bf16_training_and_prediction_run_in_bf16_and_return_float32_maps():
    from nanomorph.segment.train import predict_probabilities

    rng = np.random.default_rng(0)
    images = rng.random((4, 32, 32)).astype(np.float32)
    masks = images > 0.6
    runs = []
    for bf16 in (True, False):
        model = seeded_unet("resnet18", random_encoder("resnet18", 0).resnet_state_dict(), True, init_seed=0)
        train_segmenter(model, images, masks, steps=3, lr=1e-3, batch_size=2, seed=0, cpu_bf16=bf16)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        runs.append(predict_probabilities(model, images, cpu_bf16=bf16, dihedral=True))
    assert runs[0].dtype == np.float32 and ((runs[0] >= 0) & (runs[0] <= 1)).all()
    assert not np.array_equal(runs[0], runs[1])  # bf16 really ran
    assert np.abs(runs[0] - runs[1]).mean() < 0.05  # ... and agrees with float32 to bf16 rounding

