import tracemalloc

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from nanomorph.models.encoder import normalise
from nanomorph.segment.sweep import seeded_unet
from nanomorph.segment.tiling import (
    _reflect, axis_tiles, default_halo, padded_length, receptive_radius, tiled_mask, tiled_probabilities,
    whole_image_probabilities,
)

# Tiles compute every output pixel from the same inputs as the whole image; only the order of float32 sums
# inside convolutions may differ with the input size (measured on CPU: 0, bit for bit, here and in the benchmark).
TOLERANCE = 1e-4
# Image sides around and between multiples of the 64 px tiles, several not multiples of 32.
SHAPES = [(96, 96), (150, 97), (200, 256), (256, 256), (33, 200), (1, 130)]


def local_model(seed: int = 0) -> nn.Module:
    """Three 3x3 convolutions: each output pixel depends on inputs at most 3 pixels away."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(),
        nn.Conv2d(4, 1, 3, padding=1),
    ).eval()


class TinyUNet(nn.Module):
    """A U-Net in miniature (receptive radius 11 px, so 64 px tiles have real seams on 96-256 px images):
    strided-convolution and max-pool downsampling (total stride 4), BatchNorm in eval mode with non-trivial
    statistics, nearest upsampling and skip concatenations, as in smp's U-Net."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)

        def block(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        self.enc0, self.enc1 = block(1, 6), block(6, 8, stride=2)
        self.bottom = nn.Sequential(nn.MaxPool2d(3, 2, 1), block(8, 8))
        self.dec1, self.dec0 = block(16, 8), block(14, 6)
        self.head = nn.Conv2d(6, 1, 1)
        for bn in (m for m in self.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.bias.data.uniform_(-0.2, 0.2)
        self.eval()

    def forward(self, x):
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        s0 = self.enc0(x)
        s1 = self.enc1(s0)
        d1 = self.dec1(torch.cat([up(self.bottom(s1)), s1], 1))
        return self.head(self.dec0(torch.cat([up(d1), s0], 1)))


def small_smp_unet() -> nn.Module:
    """smp's resnet18 U-Net cut to depth 3 (stride 8; receptive radius 80, halo 96): the real layers."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(32, 16, 8),
                        in_channels=1, classes=1).eval()


def image_of(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def n_tiles(shape, tile_size: int, halo: int) -> int:
    return len(axis_tiles(shape[0], tile_size, halo)) * len(axis_tiles(shape[1], tile_size, halo))


def gradient_reach(model: nn.Module, side: int, phases: int, inputs: int = 3) -> int:
    """The farthest input pixel on which one of `phases` diagonal output pixels near the centre depends, by
    the gradient on a few random inputs (ReLUs that are off block some paths on any one input)."""
    reach = 0
    for seed in range(inputs):
        x = torch.randn(1, 1, side, side, generator=torch.Generator().manual_seed(seed), requires_grad=True)
        for c in range(side // 2, side // 2 + phases):
            x.grad = None
            model(x)[0, 0, c, c].backward()
            grad = x.grad[0, 0].abs().numpy()
            rows, cols = np.nonzero(grad.sum(1))[0], np.nonzero(grad.sum(0))[0]
            if len(rows):
                reach = max(reach, c - rows.min(), rows.max() - c, c - cols.min(), cols.max() - c)
    return int(reach)


@pytest.mark.parametrize("shape", SHAPES + [(1, 1), (5, 7)])
def test_tiled_equals_whole_image_for_a_local_model(shape):
    model = local_model()
    tiled = tiled_probabilities(model, image_of(shape, sum(shape)), tile_size=32)
    assert tiled.shape == shape and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, whole_image_probabilities(model, image_of(shape, sum(shape))),
                               atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_tiled_equals_whole_image_for_a_tiny_unet(shape):
    model = TinyUNet(seed=sum(shape))
    assert default_halo(model) == 32
    image = image_of(shape, 1)
    whole = whole_image_probabilities(model, image)
    tiled = tiled_probabilities(model, image, tile_size=64)
    assert np.abs(tiled - whole).max() <= TOLERANCE
    np.testing.assert_array_equal(tiled_mask(model, image, tile_size=64), tiled > 0.5)


def test_the_tiny_unet_tests_have_seams():
    # Not vacuous: most of SHAPES split into several tiles whose windows are cut inside the image.
    assert sum(n_tiles(shape, 64, 32) > 1 for shape in SHAPES) >= 4
    assert n_tiles((256, 256), 64, 32) == 9


@pytest.mark.parametrize("shape", [(384, 384), (333, 500)])
def test_tiled_equals_whole_image_for_smp_resnet_layers(shape):
    model = small_smp_unet()
    assert default_halo(model) == 96
    assert n_tiles(shape, 64, 96) >= 9
    image = image_of(shape, 2)
    tiled = tiled_probabilities(model, image, tile_size=64)
    assert np.abs(tiled - whole_image_probabilities(model, image)).max() <= TOLERANCE


def test_a_halo_short_of_the_receptive_field_breaks_equality():
    # Proof that the checks above can fail: with too little context the seams show.
    image = image_of((256, 256), 3)
    tiny = TinyUNet(seed=3)
    assert np.abs(tiled_probabilities(tiny, image, tile_size=64, halo=0)
                  - whole_image_probabilities(tiny, image)).max() > 100 * TOLERANCE
    image = image_of((384, 384), 3)
    unet = small_smp_unet()
    assert np.abs(tiled_probabilities(unet, image, tile_size=64, halo=32)
                  - whole_image_probabilities(unet, image)).max() > 100 * TOLERANCE


def test_receptive_radius_bounds_the_gradient_reach():
    tiny, unet = TinyUNet(), small_smp_unet()
    assert receptive_radius(local_model()) == 3 + 2  # three 3x3 convolutions; + 2 x stride 1
    assert receptive_radius(tiny) == 11 + 2 * 4
    assert gradient_reach(tiny, 96, phases=4) <= receptive_radius(tiny) <= gradient_reach(tiny, 96, 4) + 2 * 4
    reach = gradient_reach(unet, 256, phases=8)
    assert reach <= receptive_radius(unet) == 80 <= reach + 2 * 8


def test_receptive_radius_of_the_resnet18_unet():
    # The benchmark's and the served models' network: 280 px of layers + 2 x stride 32; single outputs'
    # gradients reach 296 px (measured on 768 px inputs, too slow for a test).
    model = seeded_unet("resnet18", None, True, init_seed=0)
    assert receptive_radius(model) == 344 and default_halo(model) == 352
    assert next(model.parameters()).is_contiguous()  # the probe restores the model's layout


def test_equals_plain_inference_up_to_the_image_border():
    # Sides that are multiples of 32 need no padding, and tiles on the border see the network's own zero
    # padding exactly where plain inference does: equal at every pixel, the border included.
    image = image_of((160, 128), 1)
    model = local_model(1)
    tiled = tiled_probabilities(model, image, tile_size=32)
    with torch.no_grad():
        plain = torch.sigmoid(model(normalise(torch.from_numpy(image)[None, None])))[0, 0].numpy()
    np.testing.assert_allclose(tiled, plain, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("length", [1, 31, 32, 33, 64, 100, 129, 300, 1000, 4096])
@pytest.mark.parametrize("tile_size, halo", [(32, 0), (64, 32), (96, 32), (64, 96), (1024, 352)])
def test_layout_cores_partition_the_axis_and_windows_hold_their_halo(length, tile_size, halo):
    tiles = axis_tiles(length, tile_size, halo)
    padded = padded_length(length)
    # Cores partition the padded axis, in order.
    assert tiles[0][2] == 0 and tiles[-1][3] == padded
    assert all(a[3] == b[2] for a, b in zip(tiles, tiles[1:]))
    for start, stop, core_start, core_stop in tiles:
        assert start % 32 == 0 and core_start < core_stop  # windows on the U-Net's 32-pixel grid
        # The core has `halo` pixels of context in its window on each side that is not the axis border.
        assert 0 <= start <= core_start and core_stop <= stop <= padded
        assert start == 0 or core_start - start >= halo
        assert stop == padded or stop - core_stop >= halo
    # One window for an axis that fits, else every window has the same side (the memory of one pass does not
    # depend on the image), and as few as windows of that size allow.
    window = tile_size + 2 * halo
    if padded <= window:
        assert tiles == [(0, padded, 0, padded)]
    else:
        assert {stop - start for start, stop, _, _ in tiles} == {window}
        assert (len(tiles) - 1) * tile_size < padded - 2 * halo


def test_identity_model_returns_the_sigmoid_of_the_normalised_image():
    # A pointwise model: every core must land back where it came from.
    class Identity(nn.Module):
        def forward(self, x):
            return x[:, :1]

    image = image_of((77, 130), 4)
    prob = tiled_probabilities(Identity(), image, tile_size=32, halo=32)
    expected = torch.sigmoid(normalise(torch.from_numpy(image))).numpy()
    np.testing.assert_allclose(prob, expected, atol=1e-6, rtol=0)


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return x[:, :1]


@pytest.mark.parametrize("side", [256, 1000, 3000])
def test_model_input_does_not_grow_with_the_image(side):
    # One window per forward pass, every one of side tile_size + 2 * halo, whatever the image size.
    recorder = Recorder()
    tiled_probabilities(recorder, np.zeros((side, side), dtype=np.float32), tile_size=64, halo=32)
    assert len(recorder.shapes) == n_tiles((side, side), 64, 32)
    assert set(recorder.shapes) == {(1, 1, 128, 128)}


def test_no_image_sized_temporaries():
    # Beyond the output (here the caller's), memory is one window: no padded copy, no accumulators.
    image = image_of((3000, 3000), 5)  # 36 MB
    out = np.empty_like(image)
    tracemalloc.start()
    try:
        tiled_probabilities(Recorder(), image, tile_size=64, halo=32, out=out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1e6, peak
    np.testing.assert_allclose(out, torch.sigmoid(normalise(torch.from_numpy(image))).numpy(), atol=1e-6)


def test_output_into_a_memmap(tmp_path):
    image = image_of((150, 97), 6)
    model = local_model()
    out = np.lib.format.open_memmap(tmp_path / "prob.npy", mode="w+", dtype=np.float32, shape=image.shape)
    assert tiled_probabilities(model, image, tile_size=32, out=out) is out
    np.testing.assert_allclose(np.load(tmp_path / "prob.npy"), whole_image_probabilities(model, image),
                               atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("length, pad", [(7, 0), (7, 3), (7, 20), (2, 5), (1, 4)])
def test_reflect_indices_pad_as_numpy_does(length, pad):
    axis = np.arange(length)
    np.testing.assert_array_equal(axis[_reflect(0, length + pad, length)], np.pad(axis, (0, pad), mode="reflect"))


def test_argument_checks():
    image = np.zeros((40, 40), dtype=np.float32)
    with pytest.raises(ValueError, match="multiple of 32"):
        tiled_probabilities(local_model(), image, tile_size=48)
    with pytest.raises(ValueError, match="halo"):
        tiled_probabilities(local_model(), image, tile_size=64, halo=16)
    with pytest.raises(ValueError, match="out must be float32"):
        tiled_probabilities(local_model(), image, out=np.zeros((40, 41), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        tiled_probabilities(local_model(), np.zeros((1, 40, 40), dtype=np.float32))
    with pytest.raises(ValueError, match="expected one logit map"):
        tiled_probabilities(nn.AvgPool2d(2), image, tile_size=64)  # half-size output
