"""Tiled vs whole-image inference for an smp resnet U-Net that has learned to segment wires.

test_tiling.py shows equality on random weights; here the network is trained for a few seconds, so its
probabilities are saturated and its masks meaningful, as in use. The U-Net is smp's resnet18 U-Net cut to
depth 3 (receptive radius 80 px, halo 96), so 64 px tiles make real seams on 384 px images: with the full
depth (halo 352) any image under 1056 px is a single tile.
"""

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from scipy import ndimage

from nanomorph.data.synthetic import CLASSES, rasterise_wire, smooth_curve
from nanomorph.segment.metrics import dice_iou
from nanomorph.segment.model import freeze_encoder_params
from nanomorph.segment.tiling import axis_tiles, default_halo, tiled_probabilities, whole_image_probabilities
from nanomorph.segment.train import predict_probabilities, train_segmenter

TRAIN_SIDE, SIDE = 192, 384  # training images; test images: 3 x 3 tiles of TILE with the default halo
TILE = 64
TRAIN_CROP = 32
TRAIN_STEPS, TRAIN_BATCH, TRAIN_LR = 40, 8, 1e-2  # ~1 s on one core; whole-image dice vs truth ~0.9
TOLERANCE = 1e-4  # max |p_tiled - p_whole|: float rounding only (nanomorph.segment.tiling)

WIRES = {"bundle": 4, "dispersed": 16, "network": 10, "singular": 3}  # wires per 192 px image, by morphology


def wire_image(morphology: str, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gently curved 3 px wires drawn with the generator's primitives, rendered plainly (dark blurred wires,
    light noise).

    The calibrated TEM rendering and its 1-2 px curly wires take minutes of training to learn; these take
    seconds, and what is under test is the network's use of context, not the rendering.
    """
    length = {"dispersed": 0.3, "network": 1.0}.get(morphology, 0.7) * TRAIN_SIDE
    mask = np.zeros((side, side), dtype=bool)
    for _ in range(WIRES[morphology] * (side // TRAIN_SIDE) ** 2):
        points = smooth_curve(rng, rng.uniform(0, side, 2), rng.uniform(0, np.pi), length, 0.6)
        mask |= rasterise_wire(points, 3.0, (side, side))
    image = ndimage.gaussian_filter(0.75 - 0.45 * mask, 1.0) + rng.normal(0.0, 0.05, mask.shape)
    return image.clip(0.0, 1.0).astype(np.float32), mask


def wire_images(side: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [wire_image(morphology, side, rng) for morphology in CLASSES]


def random_crops(pairs, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random TRAIN_CROP x TRAIN_CROP (image, mask) crops of the given pairs."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        image, mask = pairs[rng.integers(len(pairs))]
        r, c = rng.integers(0, TRAIN_SIDE - TRAIN_CROP + 1, size=2)
        images.append(image[r:r + TRAIN_CROP, c:c + TRAIN_CROP])
        masks.append(mask[r:r + TRAIN_CROP, c:c + TRAIN_CROP])
    return np.stack(images), np.stack(masks)


@pytest.fixture(scope="module")
def trained_unet():
    images, masks = random_crops(wire_images(TRAIN_SIDE, seed=0), TRAIN_STEPS * TRAIN_BATCH, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(32, 16, 8),
                         in_channels=1, classes=1)
    # Frozen random encoder, as the pipeline's `random` row: only the decoder trains, which is fastest.
    freeze_encoder_params(model)
    return train_segmenter(model, images, masks, epochs=1, lr=TRAIN_LR, batch_size=TRAIN_BATCH, seed=0)


@pytest.fixture(scope="module")
def test_images(trained_unet) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, true mask, whole-image probabilities) of unseen images, one per morphology."""
    return [(x, m, whole_image_probabilities(trained_unet, x)) for x, m in wire_images(SIDE, seed=1)]


def test_tiled_inference_equals_whole_image_inference(trained_unet, test_images):
    assert default_halo(trained_unet) == 96 and len(axis_tiles(SIDE, TILE, 96)) == 3
    # The model must actually segment, or agreement between two ways of running it means little.
    assert np.mean([dice_iou(whole > 0.5, mask)[0] for _, mask, whole in test_images]) > 0.8
    for image, _, whole in test_images:
        tiled = tiled_probabilities(trained_unet, image, tile_size=TILE)
        assert np.abs(tiled - whole).max() <= TOLERANCE
        np.testing.assert_array_equal(tiled > 0.5, whole > 0.5)


def test_a_short_halo_breaks_the_tolerance(trained_unet, test_images):
    # The tolerance is tight enough to matter: with a third of the receptive field as halo, seams show
    # (measured: max |diff| 0.027-0.044 per image).
    for image, _, whole in test_images:
        assert np.abs(tiled_probabilities(trained_unet, image, tile_size=TILE, halo=32) - whole).max() > 0.01


@pytest.mark.parametrize("shape", [(64, 64), (50, 37), (1, 64), (256, 200)])
def test_an_image_within_one_window_gives_exactly_whole_image_inference(trained_unet, shape):
    image = wire_images(TRAIN_SIDE, seed=2)[2][0]
    image = np.tile(image, (2, 2))[:shape[0], :shape[1]]
    assert len(axis_tiles(max(shape), TILE, 96)) == 1  # 256 <= TILE + 2 * halo
    tiled = tiled_probabilities(trained_unet, image, tile_size=TILE)
    whole = whole_image_probabilities(trained_unet, image)
    np.testing.assert_array_equal(tiled, whole)
    if shape == (64, 64):  # a multiple of 32 needs no padding: plain one-pass inference
        np.testing.assert_array_equal(tiled, predict_probabilities(trained_unet, image[None])[0])
