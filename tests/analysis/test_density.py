import numpy as np
import pytest

from nanomorph.analysis.density import pixel_density


def test_density_is_the_wire_fraction():
    mask = np.zeros((10, 20), dtype=bool)
    mask[:5, :4] = True
    assert pixel_density(mask) == pytest.approx(20 / 200)
    assert pixel_density(np.zeros((3, 3))) == 0.0
    assert pixel_density(np.full((3, 3), 255, dtype=np.uint8)) == 1.0


def test_density_refuses_bad_shapes():
    with pytest.raises(ValueError):
        pixel_density(np.zeros((2, 3, 3), dtype=bool))
    with pytest.raises(ValueError):
        pixel_density(np.zeros((0, 3), dtype=bool))
