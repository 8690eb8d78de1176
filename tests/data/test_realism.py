import numpy as np
import pytest

from nanomorph.data.realism import STATISTICS, image_statistics


def test_white_noise_is_uncorrelated_and_blurred_noise_is_not():
    rng = np.random.default_rng(0)
    white = rng.normal(0.5, 0.1, (256, 256))
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(white, 1.5)
    assert abs(image_statistics(white, 256)["grain_correlation"]) < 0.1  # the high-pass leaves a slight negative lag
    assert image_statistics(smooth, 256)["grain_correlation"] > 0.5


def test_a_darker_object_has_a_higher_contrast_to_noise():
    rng = np.random.default_rng(1)
    base = rng.normal(0.6, 0.03, (128, 128))
    faint, strong = base.copy(), base.copy()
    faint[60:70, :] -= 0.05
    strong[60:70, :] -= 0.3
    assert image_statistics(strong)["contrast_to_noise"] > 2 * image_statistics(faint)["contrast_to_noise"]


def test_statistics_do_not_depend_on_exposure_or_size():
    rng = np.random.default_rng(2)
    image = rng.normal(0.5, 0.1, (300, 300))
    a = image_statistics(image)
    b = image_statistics(0.3 * image + 0.1)
    assert set(a) == set(STATISTICS)
    for k in STATISTICS:
        assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9)
    with pytest.raises(ValueError, match="2-D"):
        image_statistics(np.zeros((4, 4, 3)))
