"""Tiled inference: the whole-image probability map of an image of any size, with bounded model memory.

Reference. "Whole-image inference" (`whole_image_probabilities`) is one forward pass on the whole image,
reflect-padded after (bottom, right) to a multiple of 32 and cropped back; for sides that are multiples of
32 it is exactly `nanomorph.segment.train.predict_probabilities`. Its memory grows with the image (about
0.4 kB per pixel for a resnet18 U-Net on CPU: ~7 GB at 4096^2).

Tiles. Along each padded axis the image is cut into cores (the pixels a tile outputs) and each core is run
with a halo of real pixels on both sides, except where the core meets the image border, which is the
border of the whole image too; the output keeps only the core (no blending). Every window of an image
larger than one window is `tile_size + 2 * halo` per side (`axis_tiles`), so every forward pass has one
shape. By default that side is DEFAULT_WINDOW (2048): `tile_size` = 2048 - 2 * halo. Three things make a
window's core equal to the same pixels of whole-image inference:
  * the halo covers the network's receptive field (`receptive_radius`), so every core pixel is computed
    from the same input pixels, and the zero padding at a window edge inside the image does not reach it;
  * window origins are multiples of 32, the U-Net's total stride, so pooling and strided convolutions sample
    the same pixel phase as in the whole image;
  * windows at the image border see the padding whole-image inference sees (reflect padding to a multiple of
    32, then the network's own zero padding): windows are cut from the reflect-padded image, so no other
    padding ever enters. BatchNorm in eval mode is a fixed per-channel affine map, so it does not care
    where a window lies.
Tiled and whole-image inference then do the same arithmetic per output pixel, up to the order of float32
sums inside convolutions, which oneDNN/cuDNN may choose per input size. The stated tolerance is
max |p_tiled - p_whole| <= 1e-4 (tests, benchmarks/segment_tiled_inference.py); measured on CPU it is 0,
bit for bit, at 1024^2 and 2048^2 with the trained resnet18 U-Net and in every test. An image whose padded
sides fit in one window is one forward pass identical to whole-image inference.

Cost. Tiling recomputes the halos: along an axis of padded length P the network sees n windows of W
pixels, n = ceil((P - 2 * halo) / tile_size). The resnet18 U-Net's receptive radius is 344 px (halo 352),
so with the default 2048 px window (1344 px core) images up to 2048^2 are one pass (1.0x whole-image
compute) and 4096^2 and 8192^2 cost 2.25x; a larger window lowers that towards (W / tile_size)^2 at the
price of memory per pass. A smaller explicit `halo` is cheaper but no longer exact near seams.

Memory. Beyond the model, the large buffers are the image (the caller's; a memmap works, only windows are
read), the output (float32 probabilities, or a boolean mask from `tiled_mask`; `out=` can be a memmap) and
one window with its activations. Every image larger than one window is run in windows of the same side, so
that part is the same for every such image, however large (about 1.6 GB on CPU for the resnet18 U-Net's
2048 px window; benchmarks/segment_tiled_inference.py).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.modules.utils import _pair

from nanomorph.models.encoder import normalise
from nanomorph.segment.model import channels_last_inference

# smp's U-Net halves the resolution five times and concatenates skips: window origins, halos and padded image
# sides are multiples of 32.
TILE_MULTIPLE = 32
# Side of every forward pass on an image larger than it: images up to 2048^2 (a common TEM camera) are one
# pass, and a resnet18 U-Net pass at 2048 px holds ~1.6 GB on CPU.
DEFAULT_WINDOW = 2048
PROBE_SIDE = 64  # input side of the forward pass that `receptive_radius` observes
_HALOS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()  # `default_halo` per model


def padded_length(length: int) -> int:
    """`length` rounded up to a multiple of TILE_MULTIPLE: the side whole-image inference runs on."""
    return -(-length // TILE_MULTIPLE) * TILE_MULTIPLE


def receptive_radius(model: nn.Module, device: str | torch.device = "cpu") -> int:
    """An upper bound, in input pixels, on how far from an output pixel the inputs it depends on can lie.

    One forward pass on a PROBE_SIDE^2 input records every Conv2d / MaxPool2d / AvgPool2d layer with its
    stride relative to the input (`jump`). Along any path through the network the reach adds up layer by
    layer, and every path (U-Net skips included) uses a subset of the layers, so the sum of all layers'
    reaches bounds it. Upsampling (a function in smp's decoder, so not seen here) shifts the reach by less than
    one coarse cell per level for nearest or bilinear 2x upsampling, which sums to under twice the largest
    stride. Other spatial operations (transposed convolutions, attention) are not covered: pass `halo`.
    For smp's resnet18 U-Net: 280 + 2 * 32 = 344 (the gradient of single outputs reaches at most 296 px).
    """
    reach = 0
    jumps = [0]

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal reach
        jump = math.ceil(PROBE_SIDE / inputs[0].shape[-1])
        kernel, dilation = _pair(module.kernel_size), _pair(getattr(module, "dilation", 1))
        # 'same' / 'valid' padding: bound by the whole kernel extent
        padding = (0, 0) if isinstance(module.padding, str) else _pair(module.padding)
        # A layer maps output m to inputs stride * m - padding + [0, (kernel - 1) * dilation].
        reach += jump * max(max(p, (k - 1) * d - p) for k, d, p in zip(kernel, dilation, padding))
        jumps.append(jump)

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        with channels_last_inference(model, device):
            model(torch.zeros(1, 1, PROBE_SIDE, PROBE_SIDE, device=device).contiguous(
                memory_format=torch.channels_last))
    finally:
        for handle in handles:
            handle.remove()
    return reach + 2 * max(jumps)


def default_halo(model: nn.Module, device: str | torch.device = "cpu") -> int:
    """`receptive_radius` rounded up to a multiple of 32: the halo that makes tiles exact.

    Cached per model object (the radius depends on the layers, not the weights): the probe's forward pass and
    layout changes cost ~0.1 s, 10 % of a 1024^2 image's inference on a CPU.
    """
    if model not in _HALOS:
        _HALOS[model] = padded_length(receptive_radius(model, device))
    return _HALOS[model]


def axis_tiles(length: int, tile_size: int, halo: int) -> list[tuple[int, int, int, int]]:
    """(window start, window stop, core start, core stop) of the tiles along an axis of `length` image pixels.

    Positions are in the padded axis (`padded_length(length)` = P), multiples of 32. If P fits in one window
    (P <= W = tile_size + 2 * halo) there is one tile, the whole axis. Otherwise every window is exactly W
    long, so every forward pass has the same shape and the memory of one pass does not depend on the image
    (windows that shrank towards the border, or that varied with P, would let it grow towards W as images
    grow). There are as few windows as cores of `tile_size` with a halo on both inner sides allow,
    n = ceil((P - 2 * halo) / tile_size), with starts spread evenly over [0, P - W] on the 32-pixel grid.
    Consecutive windows overlap by at least 2 * halo; the core boundary between them lies in the middle of
    the part of the overlap where both have a halo, so each core pixel has at least `halo` pixels of context
    in its window on each side that is not the border of the axis. The price is compute: the network sees
    n * W pixels per axis instead of P + 2 * halo * (n - 1) for windows cut to the core (5 % more at 8192 px
    per axis for the resnet18 U-Net's default window).
    """
    padded = padded_length(length)
    window = tile_size + 2 * halo
    if padded <= window:
        return [(0, padded, 0, padded)]
    units = (padded - window) // TILE_MULTIPLE
    n = -(-(padded - 2 * halo) // tile_size)
    # Spread P - W over n - 1 gaps of floor or ceil of their mean, each of 1..tile_size/32 units: n is minimal
    # so (n - 1) * tile_size >= P - W, and n - 1 <= ceil((P - W) / tile_size) <= units.
    starts = [TILE_MULTIPLE * (k * units // (n - 1)) for k in range(n)]
    # Boundary k lies in [starts[k + 1] + halo, starts[k] + tile_size + halo] (both windows keep a halo), at
    # its middle rounded down to the grid; consecutive boundaries differ by >= 32 as starts[k+1] - starts[k-1]
    # >= 64.
    inner = [halo + TILE_MULTIPLE * ((a + b + tile_size) // (2 * TILE_MULTIPLE)) for a, b in zip(starts, starts[1:])]
    bounds = [0, *inner, padded]
    return [(start, start + window, core_start, core_stop)
            for start, core_start, core_stop in zip(starts, bounds, bounds[1:])]


def _reflect(start: int, stop: int, length: int) -> np.ndarray:
    """Indices into an axis of `length` of positions [start, stop) of that axis reflect-padded after it.

    The same as numpy's `np.pad(..., mode="reflect")`, also for pads longer than the axis (it mirrors again).
    """
    positions = np.arange(start, stop)
    if length == 1:
        return np.zeros_like(positions)
    period = 2 * (length - 1)
    positions %= period
    return np.where(positions < length, positions, period - positions)


def _window(image: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Float32 copy of rows x cols of the image reflect-padded to a multiple of 32 (only the window is read)."""
    height, width = image.shape
    return image[np.ix_(_reflect(*rows, height), _reflect(*cols, width))].astype(np.float32, copy=False)


def _as_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)  # no copy: a float32 array or memmap is read in windows as it is
    if image.ndim != 2:
        raise ValueError(f"expected one (H, W) image, got shape {image.shape}")
    if min(image.shape) < 1:
        raise ValueError(f"image has no pixels: shape {image.shape}")
    return image


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
    height, width = image.shape
    with channels_last_inference(model, device):
        window = _window(image, (0, padded_length(height)), (0, padded_length(width)))
        return _probabilities(model, window[None], device)[0, :height, :width]


def default_tile_size(halo: int) -> int:
    """The core side whose window is DEFAULT_WINDOW for this halo (at least 32)."""
    return max(TILE_MULTIPLE, DEFAULT_WINDOW - 2 * halo)


def _core_probabilities(model: nn.Module, image: np.ndarray, tile_size: int | None, halo: int | None,
                        device: str | torch.device) -> Iterator[tuple[slice, slice, np.ndarray]]:
    """(rows, cols, probabilities) of each tile's core, clipped to the image, one forward pass at a time."""
    if tile_size is not None and (tile_size <= 0 or tile_size % TILE_MULTIPLE):
        raise ValueError(f"tile_size must be a positive multiple of {TILE_MULTIPLE}, got {tile_size}")
    if halo is None:
        halo = default_halo(model, device)  # before the block below: it sets the model's layout itself
    elif halo < 0 or halo % TILE_MULTIPLE:
        raise ValueError(f"halo must be a non-negative multiple of {TILE_MULTIPLE}, got {halo}")
    if tile_size is None:
        tile_size = default_tile_size(halo)
    height, width = image.shape
    row_tiles, col_tiles = axis_tiles(height, tile_size, halo), axis_tiles(width, tile_size, halo)
    with channels_last_inference(model, device):
        for row0, row1, core_row0, core_row1 in row_tiles:
            core_row1 = min(core_row1, height)
            for col0, col1, core_col0, core_col1 in col_tiles:
                core_col1 = min(core_col1, width)
                prob = _probabilities(model, _window(image, (row0, row1), (col0, col1))[None], device)[0]
                yield (slice(core_row0, core_row1), slice(core_col0, core_col1),
                       prob[core_row0 - row0:core_row1 - row0, core_col0 - col0:core_col1 - col0])


def tiled_probabilities(
    model: nn.Module,
    image: np.ndarray,
    *,
    tile_size: int | None = None,
    halo: int | None = None,
    device: str | torch.device = "cpu",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Sigmoid probabilities (H, W) float32 of a 1-channel-in, 1-logit-out model on a [0, 1] image, by tiles.

    Equal to `whole_image_probabilities` up to float rounding (module docstring) with forward passes on
    windows of `tile_size + 2 * halo` per side. `tile_size`: side of a tile's core, a multiple of 32; None is
    `default_tile_size(halo)`, windows of DEFAULT_WINDOW.
    `halo`: context on each side of a core, a multiple of 32; None is `default_halo(model)`, which makes the
    result exact. `out`: a float32 (H, W) array (e.g. a np.memmap) to write into; it is returned. The model
    is put in eval mode and run without gradients. Any H, W >= 1 works.
    """
    image = _as_image(image)
    if out is None:
        out = np.empty(image.shape, dtype=np.float32)
    elif out.shape != image.shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {image.shape}, got {out.dtype} {out.shape}")
    for rows, cols, prob in _core_probabilities(model, image, tile_size, halo, device):
        out[rows, cols] = prob
    return out


def tiled_mask(model: nn.Module, image: np.ndarray, *, threshold: float = 0.5, tile_size: int | None = None,
               halo: int | None = None, device: str | torch.device = "cpu") -> np.ndarray:
    """Boolean (H, W) mask: `tiled_probabilities(model, image, ...) > threshold`, without a float32 map."""
    image = _as_image(image)
    mask = np.empty(image.shape, dtype=bool)
    for rows, cols, prob in _core_probabilities(model, image, tile_size, halo, device):
        mask[rows, cols] = prob > threshold
    return mask
