"""The 8 symmetries of the square (4 quarter turns, with and without a left-right flip) on (..., H, W) tensors.

A micrograph has no preferred orientation, so features and predictions are averaged over these (probe features,
segmentation masks). `turn` applies one; `unturn` undoes it, so a prediction on a turned image maps back onto
the original.
"""

from __future__ import annotations

import torch

SYMMETRIES = tuple((flip, k) for flip in (False, True) for k in range(4))  # (left-right flip first?, quarter turns)


def turn(x: torch.Tensor, flip: bool, k: int) -> torch.Tensor:
    """x flipped left-right (when `flip`), then turned by k quarter turns."""
    return torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))


def unturn(x: torch.Tensor, flip: bool, k: int) -> torch.Tensor:
    """The inverse of `turn(., flip, k)`."""
    x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x
