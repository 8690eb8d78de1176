"""Per-image overlap metrics for binary masks."""

from __future__ import annotations

import numpy as np


def dice_iou(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(dice, iou) of two boolean masks of equal shape.

    dice = 2|P&T| / (|P|+|T|), iou = |P&T| / |P|T|. When both masks are empty the prediction is exactly
    right, so both are defined as 1.0 (instead of 0/0). Non-boolean inputs are refused rather than
    thresholded, so probabilities cannot slip in unthresholded.
    """
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.dtype != bool or true.dtype != bool:
        raise TypeError(f"dice_iou expects boolean masks, got {pred.dtype} and {true.dtype}")
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {true.shape}")
    inter = int(np.logical_and(pred, true).sum())
    total = int(pred.sum()) + int(true.sum())
    if total == 0:
        return 1.0, 1.0
    union = total - inter
    return 2.0 * inter / total, inter / union
