"""Sliding-window inference: a probability map for an image of any size with bounded model memory.

Reference. "Whole-image inference" (`whole_image_probabilities`) is one forward pass on the whole image,
reflect-padded after (bottom, right) to a multiple of 32 and cropped back; for sides that are multiples of
32 it is exactly `nanomorph.segment.train.predict_probabilities`. Tiled inference approximates it with
model inputs of at most `tile_size` x `tile_size`.

Layout. The image is padded the same way as the reference (to a multiple of 32, and no further), and each
axis is covered by tiles of `tile_size` (or by one tile of the padded side, if that is smaller) whose origins
are evenly spread multiples of 32, flush with both ends, neighbours sharing at least `overlap` pixels. Tiles
go through the model `batch_size` at a time, so the model only ever sees (<= batch_size, 1, <= tile_size,
<= tile_size) inputs; beyond the model, memory is the padded image plus two float32 accumulators of its size.
Two properties of the layout matter for a U-Net:
  * origins are multiples of 32, the U-Net's total downsampling, so every tile's pooling and strided
    convolutions sample the same pixel phase as whole-image inference (with other origins the deep features
    are computed on a shifted grid and differ even far from any tile edge);
  * there is no padding around the image beyond the reference's, so the tiles on the image border see it
    exactly as whole-image inference does (the network's own zero padding), not mirrored content.

Blend. Along an axis, between two neighbouring tiles the weight passes from the first to the second over a
ramp (cosine or linear) of `overlap - 2 * margin` pixels centred in their shared span; each tile's weight is
the difference of the ramps into and out of it, so the weights of all tiles telescope to exactly 1 at every
pixel (a partition of unity), and a tile only ever gets weight at pixels at least `margin` from its edges
(edges on the image border excepted: there the whole image ends too). 2-D weights are the outer product.

Exactness. If the image fits in one tile (both padded sides <= tile_size), tiled inference IS whole-image
inference: one identical forward pass, equal bit for bit. For a model whose output depends only on inputs
within `margin` pixels (a local, fully-convolutional model) tiled inference equals whole-image inference at
every pixel up to float rounding (1e-5), whatever the size (tests/segment/test_tiling.py).

Tolerance for a U-Net (approximate). A ResNet U-Net's receptive field spans hundreds of pixels (the
bottleneck sees the whole tile), far beyond any margin, so pixels near a seam are computed with less context
than in the whole image. BatchNorm is not a cause: the model runs in eval mode, so tiles in a batch do not
interact and normalisation is a fixed per-channel affine map. The difference is largest where the whole-image
probability is near 0.5, so single pixels can change by a lot while masks barely change. Measured on 1024 px
synthetic nanowire images with three briefly trained resnet18 U-Nets (trained or frozen random encoder, trained
on whole 128 px images or on 128 px crops; 1-2 images each, benchmarks/segment_tiled_inference.py):
  * defaults (tile 512, overlap 64, margin 16): mean |p_tiled - p_whole| <= 0.001, 0.5-thresholded masks
    agree on >= 99.9 % of pixels, dice(tiled mask, whole mask) >= 0.997; max |p_tiled - p_whole| 0.03-0.75,
    at isolated pixels. Images up to 512 px are one tile: exact.
  * tile 256 (same overlap and margin): agreement 99.4-99.9 % and dice 0.965-0.993 for the models trained on
    whole images, but only 88.7 % and 0.84 for the frozen-encoder model trained on crops (whose whole-image
    masks were in fact the worse ones against the truth: dice 0.64 vs 0.78 tiled, as whole 1024 px inputs are
    further from its training inputs than tiles are). A 256 tile's bottleneck is 8 x 8 cells whose receptive
    fields all reach past the tile edge; how much the missing context matters depends on the model, and the
    tile size is the setting that decides the tolerance.
  * overlap and margin matter less, once the image border is padded as in whole-image inference and origins
    lie on the 32-pixel grid. Tile 128 on 512 px images, overlap 0 / 32 / 64 / 64 with margin 0 / 0 / 0 / 16:
    agreement 98.9 / 99.5 / 99.6 / 99.7 % (trained encoder) and 97.1 / 97.7 / 98.2 / 98.3 % (frozen).
tests/segment/test_tiling_trained_unet.py holds a U-Net trained for seconds to mean |diff| <= 0.005,
agreement >= 99.5 % and dice >= 0.98 per image with 64 px tiles (overlap 32, margin 8) on 192 px images, and
checks that abutting tiles (overlap 0) fail that.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from nanomorph.models.encoder import normalise
from nanomorph.segment.model import channels_last_inference

WINDOWS = ("cosine", "linear")
# smp's U-Net halves the resolution five times and concatenates skips: tile sides, tile origins and the
# padded image sides are multiples of 32.
TILE_MULTIPLE = 32
# Defaults chosen from the measurements in the module docstring.
DEFAULT_TILE_SIZE = 512
DEFAULT_OVERLAP = 64
DEFAULT_MARGIN = 16
DEFAULT_BATCH_SIZE = 4


def ramp(span: int, kind: str = "cosine") -> np.ndarray:
    """Weights rising from ~0 to ~1 over `span` pixels, sampled at pixel centres: r[i] + r[span-1-i] == 1."""
    if kind not in WINDOWS:
        raise ValueError(f"unknown window '{kind}' (choose from {', '.join(WINDOWS)})")
    if span < 0:
        raise ValueError(f"ramp span must be >= 0, got {span}")
    t = (np.arange(span) + 0.5) / max(span, 1)
    return 0.5 * (1.0 - np.cos(np.pi * t)) if kind == "cosine" else t


def padded_length(length: int) -> int:
    """`length` rounded up to a multiple of TILE_MULTIPLE: the side whole-image inference runs on."""
    return -(-length // TILE_MULTIPLE) * TILE_MULTIPLE


def axis_tiles(length: int, tile_size: int, overlap: int) -> tuple[list[int], int]:
    """(origins, tile length) of the tiles along one axis of `length` image pixels.

    The padded axis fits in one tile: one tile of the padded length. Otherwise the fewest tiles of
    `tile_size` whose neighbours share >= `overlap` pixels, first at 0, last ending at the padded end, origins
    multiples of 32 spread as evenly as that allows (so shared spans lie between `overlap` and
    `tile_size - 32`).
    """
    padded = padded_length(length)
    if padded <= tile_size:
        return [0], padded
    max_stride = (tile_size - overlap) // TILE_MULTIPLE * TILE_MULTIPLE
    span_units = (padded - tile_size) // TILE_MULTIPLE
    steps = -(-(padded - tile_size) // max_stride)
    # Round half up in whole units of 32; consecutive origins then differ by at most max_stride.
    return [TILE_MULTIPLE * ((2 * k * span_units + steps) // (2 * steps)) for k in range(steps + 1)], tile_size


def _rise_on(rise: np.ndarray, start: int, origin: int, length: int) -> np.ndarray:
    """A step from 0 to 1 that follows `rise` from axis position `start` on, seen on [origin, origin + length)."""
    # Index 0 is the 0 before the rise, len(rise) + 1 the 1 after it; an empty rise is a hard step.
    levels = np.concatenate([[0.0], rise, [1.0]])
    return levels[np.clip(np.arange(origin, origin + length) - start + 1, 0, len(rise) + 1)]


def axis_weights(origins: list[int], tile_length: int, overlap: int, margin: int = 0,
                 kind: str = "cosine") -> list[np.ndarray]:
    """Per-tile blending weights (length `tile_length`, float64) along one axis; they sum to 1 at every pixel.

    With rise_i the step from 0 to 1 (a ramp of `overlap - 2 * margin` pixels centred in the span tile i
    shares with tile i-1), rise_0 = 1 and rise_n = 0, tile i weighs rise_i - rise_{i+1}: the sum telescopes
    to 1, and as every rise has the same shape and they start further right as i grows, no weight is negative.
    """
    span = overlap - 2 * margin
    rise = ramp(span, kind)
    # Centre of the shared span [origin, previous + tile_length); it is >= overlap wide, so the ramp stays
    # >= margin pixels inside both tiles.
    starts = [(origin + previous + tile_length - span) // 2 for previous, origin in zip(origins, origins[1:])]
    weights = []
    for i, origin in enumerate(origins):
        into = _rise_on(rise, starts[i - 1], origin, tile_length) if i > 0 else np.ones(tile_length)
        out_of = _rise_on(rise, starts[i], origin, tile_length) if i < len(starts) else np.zeros(tile_length)
        weights.append(into - out_of)
    return weights


def tile_origins(height: int, width: int, tile_size: int, overlap: int) -> list[tuple[int, int]]:
    """Top-left corners (row, col) of all tiles of an image, row-major."""
    rows, _ = axis_tiles(height, tile_size, overlap)
    cols, _ = axis_tiles(width, tile_size, overlap)
    return [(r, c) for r in rows for c in cols]


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _as_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected one (H, W) image, got shape {image.shape}")
    if min(image.shape) < 1:
        raise ValueError(f"image has no pixels: shape {image.shape}")
    return image


def _check_tiling(tile_size: int, overlap: int, margin: int, window: str, batch_size: int) -> None:
    if tile_size <= 0 or tile_size % TILE_MULTIPLE:
        raise ValueError(f"tile_size must be a positive multiple of {TILE_MULTIPLE}, got {tile_size}")
    # Neighbouring origins must differ by a positive multiple of 32.
    max_overlap = min(tile_size // 2, tile_size - TILE_MULTIPLE)
    if not 0 <= overlap <= max_overlap:
        raise ValueError(f"overlap must lie in [0, {max_overlap}] for tile_size {tile_size}, got {overlap}")
    if margin < 0 or (margin and 2 * margin >= overlap):
        raise ValueError(f"margin must be < overlap / 2 (or 0), got margin={margin}, overlap={overlap}")
    if window not in WINDOWS:
        raise ValueError(f"unknown window '{window}' (choose from {', '.join(WINDOWS)})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _pad_to_multiple(image: np.ndarray) -> np.ndarray:
    # numpy's reflect mode mirrors repeatedly, so pads wider than the image (or 1-pixel axes) work too.
    height, width = image.shape
    return np.pad(image, ((0, padded_length(height) - height), (0, padded_length(width) - width)), mode="reflect")


def _probabilities(model: nn.Module, tiles: np.ndarray, device: str | torch.device) -> np.ndarray:
    """Sigmoid of the model's logits for a (N, h, w) stack of [0, 1] tiles, as (N, h, w) float32."""
    x = normalise(torch.from_numpy(np.ascontiguousarray(tiles)).unsqueeze(1)).to(device)
    x = x.contiguous(memory_format=torch.channels_last)  # the layout of `channels_last_inference`
    logits = model(x)
    if tuple(logits.shape) != (x.shape[0], 1, *x.shape[2:]):
        raise ValueError(f"model returned {tuple(logits.shape)} for tiles {tuple(x.shape)}; "
                         "expected one logit map per tile of the same size")
    return torch.sigmoid(logits[:, 0]).float().cpu().numpy()


def whole_image_probabilities(model: nn.Module, image: np.ndarray, *,
                              device: str | torch.device = "cpu") -> np.ndarray:
    """Sigmoid probabilities (H, W) float32 from ONE forward pass on the whole image (the tiling reference).

    The image is reflect-padded after to a multiple of 32 and the output cropped back. Memory grows with the
    image: use `tiled_probabilities` for large ones.
    """
    image = _as_image(image)
    with channels_last_inference(model, device):
        probabilities = _probabilities(model, _pad_to_multiple(image)[None], device)[0]
    return probabilities[:image.shape[0], :image.shape[1]]


def tiled_probabilities(
    model: nn.Module,
    image: np.ndarray,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    margin: int = DEFAULT_MARGIN,
    window: str = "cosine",
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Blended sigmoid probabilities (H, W) float32 of a 1-channel-in, 1-logit-out model on a [0, 1] image.

    The model is put in eval mode and run without gradients. Any H, W >= 1 works. See the module docstring
    for the layout, the blend, what is exact and how far a U-Net's result is from whole-image inference.
    """
    image = _as_image(image)
    _check_tiling(tile_size, overlap, margin, window, batch_size)
    height, width = image.shape
    padded = _pad_to_multiple(image)
    row_origins, tile_height = axis_tiles(height, tile_size, overlap)
    col_origins, tile_width = axis_tiles(width, tile_size, overlap)
    row_weights = dict(zip(row_origins, axis_weights(row_origins, tile_height, overlap, margin, window)))
    col_weights = dict(zip(col_origins, axis_weights(col_origins, tile_width, overlap, margin, window)))
    blended = np.zeros(padded.shape, dtype=np.float32)
    total_weight = np.zeros(padded.shape, dtype=np.float32)
    with channels_last_inference(model, device):
        for batch in _batches(tile_origins(height, width, tile_size, overlap), batch_size):
            tiles = np.stack([padded[r:r + tile_height, c:c + tile_width] for r, c in batch])
            for (r, c), p in zip(batch, _probabilities(model, tiles, device)):
                weights = np.outer(row_weights[r], col_weights[c]).astype(np.float32)
                blended[r:r + tile_height, c:c + tile_width] += weights * p
                total_weight[r:r + tile_height, c:c + tile_width] += weights
    # Every pixel has total weight 1 by construction (partition of unity); dividing keeps that exact in
    # float32 and would expose a layout bug as a non-finite value rather than a silently scaled one.
    return blended[:height, :width] / total_weight[:height, :width]


def tiled_mask(model: nn.Module, image: np.ndarray, *, threshold: float = 0.5, **kwargs) -> np.ndarray:
    """Boolean (H, W) mask: `tiled_probabilities(model, image, **kwargs) > threshold`."""
    return tiled_probabilities(model, image, **kwargs) > threshold
