import numpy as np
import pytest
import torch
from torch import nn

from nanomorph.models.encoder import normalise
from nanomorph.segment.sweep import seeded_unet
from nanomorph.segment.tiling import (
    axis_tiles, axis_weights, padded_length, ramp, tile_origins, tiled_mask, tiled_probabilities,
    whole_image_probabilities,
)

# Three 3x3 convolutions: each output pixel depends on inputs at most RADIUS pixels away.
RADIUS = 3
# float32 sums of up to four weighted tiles vs one direct evaluation: rounding differences only.
TOLERANCE = 1e-5


def local_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(),
        nn.Conv2d(4, 1, 3, padding=1),
    ).eval()


@pytest.mark.parametrize("shape", [(150, 97), (64, 64), (33, 200), (1, 1), (5, 7)])
@pytest.mark.parametrize("window", ["cosine", "linear"])
def test_tiled_equals_whole_image_for_a_local_model(shape, window):
    image = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    model = local_model()
    tiled = tiled_probabilities(model, image, tile_size=64, overlap=16, margin=RADIUS + 1, window=window,
                                batch_size=3)
    assert tiled.shape == shape and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, whole_image_probabilities(model, image), atol=TOLERANCE, rtol=0)


def test_equals_plain_inference_up_to_the_image_border():
    # Sides that are multiples of 32 need no padding, and tiles on the border see the network's own zero
    # padding exactly where plain inference does: equal at every pixel, the border included.
    image = np.random.default_rng(1).random((160, 128), dtype=np.float32)
    model = local_model(1)
    tiled = tiled_probabilities(model, image, tile_size=64, overlap=24, margin=5, batch_size=2)
    with torch.no_grad():
        plain = torch.sigmoid(model(normalise(torch.from_numpy(image)[None, None])))[0, 0].numpy()
    np.testing.assert_allclose(tiled, plain, atol=TOLERANCE, rtol=0)


def test_without_margin_tile_edges_leak_into_the_blend():
    # The margin is what makes the result exact: with none, tile-edge pixels (wrong near zero padding) count.
    # Overlap 32 on tile 64 gives a stride of exactly 32, so the ramp starts right at the tile edge.
    image = np.random.default_rng(2).random((150, 150), dtype=np.float32)
    model = local_model(2)
    tiled = tiled_probabilities(model, image, tile_size=64, overlap=32, margin=0, batch_size=4)
    assert np.abs(tiled - whole_image_probabilities(model, image)).max() > TOLERANCE


class Constant(nn.Module):
    """Logit 1.5 everywhere, whatever the input."""

    def forward(self, x):
        return torch.full_like(x, 1.5)


@pytest.mark.parametrize("window", ["cosine", "linear"])
def test_blend_weights_are_a_partition_of_unity(window):
    prob = tiled_probabilities(Constant(), np.zeros((300, 211), dtype=np.float32), tile_size=64, overlap=32,
                               margin=6, window=window)
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-1.5)), rtol=1e-6)


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return x[:, :1]


def test_model_only_sees_bounded_batches_of_full_tiles():
    recorder = Recorder()
    image = np.random.default_rng(3).random((300, 170), dtype=np.float32)
    tiled_probabilities(recorder, image, tile_size=96, overlap=32, margin=4, batch_size=4)
    origins = tile_origins(300, 170, 96, 32)
    assert sum(s[0] for s in recorder.shapes) == len(origins)
    assert all(s[0] <= 4 and s[1:] == (1, 96, 96) for s in recorder.shapes)


def test_identity_model_returns_the_sigmoid_of_the_normalised_image():
    # A pointwise model: the blend of overlapping tiles must put every value back where it came from.
    image = np.random.default_rng(4).random((77, 130), dtype=np.float32)
    prob = tiled_probabilities(Recorder(), image, tile_size=64, overlap=16, margin=2)
    expected = torch.sigmoid(normalise(torch.from_numpy(image))).numpy()
    np.testing.assert_allclose(prob, expected, atol=TOLERANCE, rtol=0)


def test_unet_on_sizes_that_are_not_multiples_of_32():
    model = seeded_unet("resnet18", None, True, init_seed=0)
    image = np.random.default_rng(5).random((50, 70), dtype=np.float32)
    one = tiled_probabilities(model, image, tile_size=64, overlap=16, margin=4, batch_size=1)
    many = tiled_probabilities(model, image, tile_size=64, overlap=16, margin=4, batch_size=4)
    assert one.shape == (50, 70) and np.isfinite(one).all() and one.min() >= 0 and one.max() <= 1
    np.testing.assert_allclose(one, many, atol=1e-5)  # eval mode: tiles in a batch do not interact
    mask = tiled_mask(model, image, threshold=0.5, tile_size=64, overlap=16, margin=4)
    np.testing.assert_array_equal(mask, one > 0.5)


@pytest.mark.parametrize("length", [1, 31, 32, 33, 64, 100, 129, 300, 1000])
@pytest.mark.parametrize("tile_size, overlap, margin", [(64, 16, 4), (64, 32, 8), (96, 40, 0), (256, 64, 16)])
def test_layout_is_aligned_flush_and_blends_to_one(length, tile_size, overlap, margin):
    origins, tile_length = axis_tiles(length, tile_size, overlap)
    # Flush with both ends of the padded axis; origins on the U-Net's 32-pixel grid; neighbours share >= overlap.
    assert origins[0] == 0 and origins[-1] + tile_length == padded_length(length)
    assert tile_length == min(tile_size, padded_length(length))
    assert all(o % 32 == 0 for o in origins)
    assert all(0 < b - a <= tile_length - overlap for a, b in zip(origins, origins[1:]))
    weights = axis_weights(origins, tile_length, overlap, margin)
    total = np.zeros(padded_length(length))
    for i, (origin, w) in enumerate(zip(origins, weights)):
        assert w.min() >= 0
        # No weight within `margin` of an edge that lies inside the image's padded span.
        assert i == 0 or not w[:margin].any()
        assert i == len(origins) - 1 or not w[tile_length - margin:].any()
        total[origin:origin + tile_length] += w
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)


def test_ramp_and_argument_checks():
    rise = ramp(10, "linear")
    np.testing.assert_allclose(rise + rise[::-1], 1.0)
    assert ramp(0).shape == (0,)
    image = np.zeros((40, 40), dtype=np.float32)
    with pytest.raises(ValueError, match="multiple of 32"):
        tiled_probabilities(Constant(), image, tile_size=48, overlap=8, margin=0)
    with pytest.raises(ValueError, match="overlap"):
        tiled_probabilities(Constant(), image, tile_size=64, overlap=40, margin=0)
    with pytest.raises(ValueError, match="overlap"):  # stride would be 0 on the 32-pixel grid
        tiled_probabilities(Constant(), image, tile_size=32, overlap=16, margin=0)
    with pytest.raises(ValueError, match="margin"):
        tiled_probabilities(Constant(), image, tile_size=64, overlap=16, margin=8)
    with pytest.raises(ValueError, match="window"):
        tiled_probabilities(Constant(), image, tile_size=64, overlap=16, margin=0, window="gaussian")
    with pytest.raises(ValueError, match="expected one logit map"):
        tiled_probabilities(nn.AvgPool2d(2), image, tile_size=64, overlap=16, margin=0)  # half-size output
