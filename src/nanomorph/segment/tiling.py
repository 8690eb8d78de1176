"""Sliding-window inference: a probability map for an image of any size with bounded model memory.

The image is reflect-padded and cut into overlapping `tile_size` x `tile_size` tiles on a regular grid with
stride `tile_size - overlap`; tiles go through the model `batch_size` at a time, and the tile probabilities
are blended with a separable window that ramps up over the overlap (cosine or linear). The model therefore
only ever sees (<= batch_size, 1, tile_size, tile_size) inputs, whatever the image size; beyond the model,
memory is the padded image plus two float32 accumulators of its size.

Window. Along one axis a tile's weight rises over its first `overlap` pixels and falls over its last
`overlap`: zero for the outermost `margin` pixels (where zero padding inside the network corrupts the output
most), then a ramp over the `overlap - 2 * margin` pixels between, then 1. The rise and the matching fall of
the next tile sum to exactly 1 at every pixel of their overlap, so the blend is a partition of unity: at
every pixel the weighted average runs over tiles that saw it at least `margin` pixels from their edge.
For a model whose output depends only on inputs within `margin` pixels (a local, fully-convolutional model),
tiled inference therefore equals inference on the whole reflect-padded image exactly (up to float rounding).

Borders. The image is reflect-padded by `overlap` on every side (plus whatever the last row/column of tiles
needs), so image pixels never fall in the ramp of a border tile, and the network sees mirrored content
rather than zeros around the image.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from nanomorph.models.encoder import normalise

WINDOWS = ("cosine", "linear")
# smp's U-Net halves the resolution five times and concatenates skips, so tile sides must divide by 32.
TILE_MULTIPLE = 32


def ramp(overlap: int, margin: int = 0, kind: str = "cosine") -> np.ndarray:
    """Rising weights of length `overlap`: `margin` zeros, then a ramp, then ones; r[i] + r[overlap-1-i] == 1."""
    if kind not in WINDOWS:
        raise ValueError(f"unknown window '{kind}' (choose from {', '.join(WINDOWS)})")
    if overlap < 0 or margin < 0 or (overlap and 2 * margin >= overlap):
        raise ValueError(f"need 0 <= 2 * margin < overlap, got overlap={overlap}, margin={margin}")
    weights = np.ones(overlap, dtype=np.float64)
    weights[:margin] = 0.0
    span = overlap - 2 * margin
    # Sample at pixel centres so the ramp is symmetric: t and 1 - t pair up across the overlap.
    t = (np.arange(span) + 0.5) / span
    weights[margin:margin + span] = 0.5 * (1.0 - np.cos(np.pi * t)) if kind == "cosine" else t
    return weights


def window_1d(tile_size: int, overlap: int, margin: int = 0, kind: str = "cosine") -> np.ndarray:
    """A tile's weight along one axis: rise over the first `overlap` pixels, mirror fall over the last."""
    if overlap * 2 > tile_size:
        raise ValueError(f"overlap {overlap} must be at most half the tile size {tile_size}")
    weights = np.ones(tile_size, dtype=np.float64)
    if overlap:
        rise = ramp(overlap, margin, kind)
        weights[:overlap] = rise
        weights[tile_size - overlap:] = rise[::-1]
    return weights


def window_2d(tile_size: int, overlap: int, margin: int = 0, kind: str = "cosine") -> np.ndarray:
    """Separable (tile_size, tile_size) float32 blending weights."""
    w = window_1d(tile_size, overlap, margin, kind)
    return np.outer(w, w).astype(np.float32)


def _axis_layout(length: int, tile_size: int, stride: int, pad: int) -> tuple[int, int]:
    """(number of tiles, padding after) so tiles of `stride` cover `pad + length + pad` exactly."""
    padded = length + 2 * pad
    n_tiles = max(1, -(-(padded - tile_size) // stride) + 1)
    return n_tiles, (n_tiles - 1) * stride + tile_size - padded + pad


def tile_origins(height: int, width: int, tile_size: int, overlap: int) -> tuple[list[tuple[int, int]], tuple[int, int], tuple[int, int]]:
    """Top-left corners of the tiles in padded coordinates, and the (before, after) padding of rows and cols.

    Padding before is `overlap` on both axes; padding after is at least `overlap` and makes the last tile
    end exactly at the padded edge.
    """
    stride = tile_size - overlap
    n_rows, pad_rows_after = _axis_layout(height, tile_size, stride, overlap)
    n_cols, pad_cols_after = _axis_layout(width, tile_size, stride, overlap)
    origins = [(i * stride, j * stride) for i in range(n_rows) for j in range(n_cols)]
    return origins, (overlap, pad_rows_after), (overlap, pad_cols_after)


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _check_arguments(image: np.ndarray, tile_size: int, overlap: int, margin: int, batch_size: int) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected one (H, W) image, got shape {image.shape}")
    if min(image.shape) < 1:
        raise ValueError(f"image has no pixels: shape {image.shape}")
    if tile_size <= 0 or tile_size % TILE_MULTIPLE:
        raise ValueError(f"tile_size must be a positive multiple of {TILE_MULTIPLE}, got {tile_size}")
    if not 0 <= overlap <= tile_size // 2:
        raise ValueError(f"overlap must lie in [0, tile_size / 2] = [0, {tile_size // 2}], got {overlap}")
    if margin and 2 * margin >= overlap:
        raise ValueError(f"margin must be < overlap / 2 (or 0), got margin={margin}, overlap={overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return image


def tiled_probabilities(
    model: nn.Module,
    image: np.ndarray,
    *,
    tile_size: int = 256,
    overlap: int = 64,
    margin: int = 16,
    window: str = "cosine",
    batch_size: int = 4,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Blended sigmoid probabilities (H, W) float32 of a 1-channel-in, 1-logit-out model on a [0, 1] image.

    The model is put in eval mode and run without gradients. Any H, W >= 1 works (not only multiples of 32):
    the padding makes every tile full-sized. See the module docstring for the window, padding and the
    exactness guarantee for local models.
    """
    image = _check_arguments(image, tile_size, overlap, margin, batch_size)
    height, width = image.shape
    origins, pad_rows, pad_cols = tile_origins(height, width, tile_size, overlap)
    # numpy's reflect mode mirrors repeatedly, so pads wider than the image (or 1-pixel axes) work too.
    padded = np.pad(image, (pad_rows, pad_cols), mode="reflect")
    weights = window_2d(tile_size, overlap, margin, window)
    blended = np.zeros(padded.shape, dtype=np.float32)
    total_weight = np.zeros(padded.shape, dtype=np.float32)
    model.eval()
    model.to(device)
    with torch.no_grad():
        for batch in _batches(origins, batch_size):
            tiles = np.stack([padded[r:r + tile_size, c:c + tile_size] for r, c in batch])
            x = normalise(torch.from_numpy(tiles).unsqueeze(1)).to(device)
            logits = model(x)
            if tuple(logits.shape) != (len(batch), 1, tile_size, tile_size):
                raise ValueError(f"model returned {tuple(logits.shape)} for tiles {tuple(x.shape)}; "
                                 "expected one logit map per tile of the same size")
            probabilities = torch.sigmoid(logits[:, 0]).float().cpu().numpy()
            for (r, c), p in zip(batch, probabilities):
                blended[r:r + tile_size, c:c + tile_size] += weights * p
                total_weight[r:r + tile_size, c:c + tile_size] += weights
    rows = slice(pad_rows[0], pad_rows[0] + height)
    cols = slice(pad_cols[0], pad_cols[0] + width)
    # Every image pixel has total weight 1 by construction (partition of unity); dividing keeps that exact
    # in float32 and would expose a layout bug as a non-finite value rather than a silently scaled one.
    return blended[rows, cols] / total_weight[rows, cols]


def tiled_mask(model: nn.Module, image: np.ndarray, *, threshold: float = 0.5, **kwargs) -> np.ndarray:
    """Boolean (H, W) mask: `tiled_probabilities(model, image, **kwargs) > threshold`."""
    return tiled_probabilities(model, image, **kwargs) > threshold
