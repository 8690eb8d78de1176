import numpy as np
import pytest

from nanomorph.segment.metrics import dice_iou


def _mask(rows, cols, shape=(4, 4)):
    m = np.zeros(shape, dtype=bool)
    m[rows, cols] = True
    return m


def test_partial_overlap_by_hand():
    pred = _mask([0, 0], [0, 1])  # pixels (0,0), (0,1)
    true = _mask([0, 1], [1, 1])  # pixels (0,1), (1,1)
    dice, iou = dice_iou(pred, true)
    assert dice == pytest.approx(2 * 1 / (2 + 2))
    assert iou == pytest.approx(1 / 3)


def test_perfect_disjoint_and_empty_cases():
    m = _mask([1, 2, 3], [1, 2, 3])
    assert dice_iou(m, m) == (1.0, 1.0)
    assert dice_iou(m, ~m) == (0.0, 0.0)
    empty = np.zeros((4, 4), dtype=bool)
    assert dice_iou(empty, empty) == (1.0, 1.0)
    assert dice_iou(empty, m) == (0.0, 0.0)
    assert dice_iou(m, empty) == (0.0, 0.0)


def test_subset_prediction_and_dice_iou_relation():
    true = np.ones((2, 5), dtype=bool)
    pred = np.zeros((2, 5), dtype=bool)
    pred[0] = True
    dice, iou = dice_iou(pred, true)
    assert (dice, iou) == (pytest.approx(10 / 15), pytest.approx(0.5))
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.random((2, 8, 8)) > 0.5
        dice, iou = dice_iou(a, b)
        assert dice == pytest.approx(2 * iou / (1 + iou))


def test_rejects_non_boolean_and_mismatched_masks():
    with pytest.raises(TypeError):
        dice_iou(np.full((2, 2), 0.7), np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="shapes"):
        dice_iou(np.ones((2, 2), dtype=bool), np.ones((2, 3), dtype=bool))
