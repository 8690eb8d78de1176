"""The realism statistics on small arrays whose answers are known."""

import numpy as np
import pytest
from scipy import ndimage, stats
from skimage.draw import line

from nanomorph.data.realism import (
    MASK_STATISTICS,
    STATISTICS,
    background_level,
    background_moments,
    branch_tortuosity,
    contrast_to_noise,
    correlation_length,
    crop_flat_borders,
    image_statistics,
    masked_autocorrelation,
    normalise,
    overlay_mask,
    path_length,
    drop_small_objects,
    rough_wire_mask,
    spectral_slope,
    wire_widths,
)


def noise(seed, shape=(256, 256), sigma=0.0):
    field = np.random.default_rng(seed).standard_normal(shape)
    return ndimage.gaussian_filter(field, sigma, mode="wrap") if sigma else field


def test_white_noise_has_a_flat_spectrum_and_no_correlation_length():
    white = noise(0)
    assert abs(spectral_slope(white)) < 0.2
    # The autocorrelation falls from 1 at lag 0 to ~0 at lag 1: it crosses 1/e at 1 - 1/e.
    assert correlation_length(white) == pytest.approx(1 - np.exp(-1), abs=0.05)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0])
def test_filtered_noise_has_its_correlation_length(sigma):
    # Gaussian-filtered white noise: autocorrelation exp(-r^2 / (4 sigma^2)), 1/e at r = 2 sigma.
    field = noise(1, sigma=sigma)
    assert correlation_length(field) == pytest.approx(2 * sigma, rel=0.1)
    assert spectral_slope(field) < -3  # smooth: power falls steeply with frequency


def test_holes_do_not_bias_the_autocorrelation():
    field = noise(2, sigma=2.0)
    valid = np.random.default_rng(3).random(field.shape) > 0.5
    valid[100:160, :] = False  # and a wide band, like a bundle
    acf = masked_autocorrelation(field, valid)
    assert acf[acf.shape[0] // 2, acf.shape[1] // 2] == pytest.approx(1.0)
    assert correlation_length(field, valid) == pytest.approx(correlation_length(field), rel=0.05)


@pytest.mark.parametrize("width", [1, 2, 3, 4, 7, 12])
def test_a_band_of_known_width_gives_that_width(width):
    mask = np.zeros((64, 96), dtype=bool)
    mask[20 : 20 + width, 5:90] = True
    widths = wire_widths(mask)
    assert np.median(widths) == pytest.approx(width)
    assert wire_widths(np.zeros((8, 8), dtype=bool)).size == 0


@pytest.mark.parametrize("angle", [0.0, 0.3, 0.6, np.pi / 4, 1.2])
def test_straight_wires_have_tortuosity_one_at_any_angle(angle):
    mask = np.zeros((128, 128), dtype=bool)
    r0, c0 = 64 - 50 * np.sin(angle), 64 - 50 * np.cos(angle)
    r1, c1 = 64 + 50 * np.sin(angle), 64 + 50 * np.cos(angle)
    rows, cols = line(int(round(r0)), int(round(c0)), int(round(r1)), int(round(c1)))
    mask[rows, cols] = True
    tortuosity = branch_tortuosity(ndimage.binary_dilation(mask))
    assert len(tortuosity) == 1 and tortuosity[0] == pytest.approx(1.0, abs=0.01)


def test_a_semicircle_has_tortuosity_half_pi():
    rows, cols = np.mgrid[0:128, 0:128]
    radius = np.hypot(rows - 64, cols - 64)
    mask = (np.abs(radius - 40) < 1.5) & (rows >= 64)
    assert branch_tortuosity(mask) == pytest.approx([np.pi / 2], rel=0.02)
    assert path_length(np.array([[0, 0], [0, 1], [1, 2], [2, 3]])) == pytest.approx(np.hypot(2, 3))


def test_branches_are_cut_at_junctions_and_short_ones_dropped():
    mask = np.zeros((80, 80), dtype=bool)
    mask[40, 5:75] = True   # a cross: four arms of ~35 px
    mask[5:75, 40] = True
    assert len(branch_tortuosity(mask, min_length=10)) == 4
    assert len(branch_tortuosity(mask, min_length=50)) == 0


def test_background_moments_and_level():
    values = np.random.default_rng(4).normal(0.6, 0.1, 200000)
    mean, std, skew = background_moments(values, np.ones(values.shape, dtype=bool))
    assert (mean, std, skew) == pytest.approx((0.6, 0.1, 0.0), abs=0.01)
    # Dark objects mixed in do not move the background's mode or its bright-side spread.
    mixed = np.concatenate([values, np.random.default_rng(5).normal(0.2, 0.1, 80000)])
    level, spread = background_level(mixed)
    assert level == pytest.approx(0.6, abs=0.02) and spread == pytest.approx(0.1, rel=0.1)
    exponential = np.random.default_rng(6).exponential(1.0, 20000)
    assert background_moments(exponential, np.ones(exponential.shape, dtype=bool))[2] == pytest.approx(
        stats.skew(exponential))


def test_contrast_to_noise_of_a_band():
    image = 0.6 + 0.1 * noise(7, (128, 128))
    wires = np.zeros(image.shape, dtype=bool)
    wires[60:66, :] = True
    image[wires] -= 0.3
    background = ~ndimage.binary_dilation(wires)
    assert contrast_to_noise(image, wires, background, 0.1) == pytest.approx(3.0, rel=0.1)


def test_rough_mask_finds_a_dark_wire_and_little_in_pure_noise():
    image = 0.6 + 0.1 * noise(8, (128, 128))
    wires = np.zeros(image.shape, dtype=bool)
    wires[30:34, 10:120] = True
    rows, cols = np.mgrid[0:128, 0:128]
    dark = image - 0.25 * wires - 0.1 * (rows / 128)  # and an illumination gradient
    found = rough_wire_mask(dark)
    dice = 2 * (found & wires).sum() / (found.sum() + wires.sum())
    assert dice > 0.7
    assert rough_wire_mask(image).mean() < 0.02
    specks = np.zeros((20, 20), dtype=bool)
    specks[2, 2] = True            # a lone pixel: dropped
    specks[10:13, 10:13] = True
    specks[13, 13] = True          # touches the square diagonally: 8-connected, kept
    kept = specks.copy()
    kept[2, 2] = False
    np.testing.assert_array_equal(drop_small_objects(specks, 4), kept)


def test_overlays_and_flat_borders_are_found():
    image = 0.5 + 0.05 * noise(9, (120, 120))
    image = np.clip(image, 0, 0.99)
    image[np.random.default_rng(10).random(image.shape) > 0.995] = 1.0  # scattered saturated pixels
    image[100:112, 70:118] = 1.0        # a scale bar's white box ...
    image[103:105, 74:114] = 0.0        # ... with its black bar
    found = overlay_mask(image)
    assert found[100:112, 70:118].all() and found.sum() < 1.5 * 12 * 48
    speckled = np.clip(0.5 + 0.05 * noise(9, (120, 120)), 0, 0.99)
    speckled[np.random.default_rng(10).random(speckled.shape) > 0.995] = 1.0
    assert not overlay_mask(speckled).any()  # saturated noise pixels are no overlay
    framed = np.pad(image, ((5, 0), (0, 3)), constant_values=0.0)
    np.testing.assert_array_equal(crop_flat_borders(framed), image)


def test_statistics_do_not_depend_on_exposure_and_little_on_size():
    image = 0.6 + 0.08 * noise(11, (256, 256), sigma=1.5)
    rows, cols = np.mgrid[0:256, 0:256]
    image[np.abs(rows - 0.5 * cols - 60) < 4] -= 0.3
    a = image_statistics(image)
    b = image_statistics(0.3 * image + 0.1)
    assert set(a) == set(STATISTICS) and set(MASK_STATISTICS) <= set(STATISTICS)
    for key in STATISTICS:
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    # The same field of view at another resolution: the statistics are measured at one side.
    small = image_statistics(ndimage.zoom(image, 0.75, order=1))
    for key in ("bg_mean", "cnr", "coverage", "width_median"):
        assert small[key] == pytest.approx(a[key], rel=0.25), key
    exact = image_statistics(image, mask=np.abs(rows - 0.5 * cols - 60) < 4)
    assert exact["width_median"] == pytest.approx(7 / 256 * 128 * np.cos(np.arctan(0.5)), rel=0.3)
    with pytest.raises(ValueError, match="2-D"):
        image_statistics(np.zeros((4, 4, 3)))
    assert normalise(image).max() > 0.99
