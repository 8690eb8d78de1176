import numpy as np
import pytest

from nanomorph.segment.classical import CLASSICAL_SEGMENTERS, ClassicalSegmenter, fit_classical
from nanomorph.segment.metrics import dice_iou


def _scene(rng, darker: bool, gradient: float = 0.0, size: int = 64):
    """Bars on a film with noise; objects darker or brighter; optional strong illumination ramp."""
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(4):
        r, c = rng.integers(4, size - 12, 2)
        mask[r:r + 3, c:c + 10] = True
    ramp = np.linspace(0.0, gradient, size)[None, :]
    film = 0.6 + ramp + rng.normal(0, 0.02, (size, size))
    image = np.where(mask, film - 0.25 if darker else film + 0.25, film)
    return np.clip(image, 0, 1).astype(np.float32), mask


@pytest.mark.parametrize("method", CLASSICAL_SEGMENTERS)
@pytest.mark.parametrize("darker", [True, False])
def test_polarity_is_chosen_on_the_training_images(method, darker):
    rng = np.random.default_rng(0)
    train = [_scene(rng, darker) for _ in range(2)]
    segmenter = fit_classical(method, np.stack([t[0] for t in train]), np.stack([t[1] for t in train]))
    assert segmenter.darker is darker
    image, mask = _scene(rng, darker)
    assert dice_iou(segmenter.predict(image), mask)[0] > 0.9


def test_local_threshold_survives_uneven_illumination_where_global_otsu_fails():
    rng = np.random.default_rng(1)
    train = [_scene(rng, True, gradient=0.5) for _ in range(2)]
    images, masks = np.stack([t[0] for t in train]), np.stack([t[1] for t in train])
    test_image, test_mask = _scene(rng, True, gradient=0.5)
    otsu = fit_classical("otsu", images, masks)
    local = fit_classical("local", images, masks)
    assert dice_iou(local.predict(test_image), test_mask)[0] > dice_iou(otsu.predict(test_image), test_mask)[0] + 0.2


def test_small_objects_are_removed_like_the_analysis_does():
    image = np.full((32, 32), 0.8, dtype=np.float32)
    image[5:10, 5:10] = 0.2      # 25 px object
    image[20, 20] = 0.2          # 1 px speck
    mask = ClassicalSegmenter("otsu", darker=True, min_size=4).predict(image)
    assert mask[5:10, 5:10].all() and not mask[20, 20]
    assert ClassicalSegmenter("otsu", darker=True, min_size=1).predict(image)[20, 20]


def test_constant_image_gives_an_empty_mask_and_bad_input_is_refused():
    assert not ClassicalSegmenter("otsu", True).predict(np.full((16, 16), 0.5)).any()
    with pytest.raises(ValueError, match="unknown classical segmenter"):
        fit_classical("watershed", np.zeros((1, 8, 8)), np.zeros((1, 8, 8), bool))
    with pytest.raises(ValueError, match="matching"):
        fit_classical("otsu", np.zeros((2, 8, 8)), np.zeros((1, 8, 8), bool))
