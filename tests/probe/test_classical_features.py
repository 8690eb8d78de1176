import numpy as np
import pytest

from nanomorph.probe.classical import FEATURE_NAMES, classical_features


def _bars(n_bars: int, spanning: bool, size: int = 64) -> np.ndarray:
    image = np.full((size, size), 0.7, dtype=np.float32)
    for k in range(n_bars):
        row = 4 + 8 * k
        image[row:row + 2, 2:size - 2 if spanning else 14] = 0.2
    return image


def test_shape_names_and_determinism():
    rng = np.random.default_rng(0)
    images = rng.random((3, 32, 32)).astype(np.float32)
    features = classical_features(images)
    assert features.shape == (3, len(FEATURE_NAMES)) and features.dtype == np.float32
    assert np.isfinite(features).all()
    np.testing.assert_array_equal(features, classical_features(images))
    assert classical_features(np.zeros((0, 8, 8))).shape == (0, len(FEATURE_NAMES))


def test_morphology_features_measure_what_they_say():
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    short, long_ = classical_features(np.stack([_bars(3, spanning=False), _bars(3, spanning=True)]))
    assert short[col["objects_per_kpx"]] == pytest.approx(3 / (64 * 64 / 1000))
    assert long_[col["largest_extent_cols"]] == pytest.approx(60 / 64)
    assert short[col["largest_extent_cols"]] == pytest.approx(12 / 64)
    assert long_[col["fg_fraction"]] > short[col["fg_fraction"]]


def test_blank_and_constant_images_give_finite_features():
    features = classical_features(np.stack([np.zeros((16, 16)), np.full((16, 16), 0.5)]).astype(np.float32))
    assert np.isfinite(features).all()
    with pytest.raises(ValueError, match="shape"):
        classical_features(np.zeros((16, 16)))
