"""Nanowire pixel density: the share of the field of view covered by wires."""

from __future__ import annotations

import numpy as np


def pixel_density(mask: np.ndarray) -> float:
    """Fraction of pixels of a 2-D mask that are wire (True / non-zero), in [0, 1]."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.size == 0:
        raise ValueError("mask has no pixels; its density is undefined")
    return float(np.count_nonzero(mask) / mask.size)
