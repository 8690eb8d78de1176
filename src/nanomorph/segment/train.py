"""Dice-loss training of the U-Net and thresholded prediction.

Training uses only the images it is given: there is no validation-based early stopping, so the fixed
number of epochs comes from the caller (params.yaml) and test images are never seen here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn
from tqdm.auto import tqdm

from nanomorph.models.dihedral import SYMMETRIES, turn, unturn
from nanomorph.models.encoder import normalise
from nanomorph.models.precision import cpu_autocast
from nanomorph.segment.model import channels_last_inference, set_train_mode, trainable_parameters

# smp's U-Net halves the resolution five times and concatenates skips, so sides must divide by 32.
_SIDE_MULTIPLE = 32


def _to_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) float [0, 1] -> normalised (N, 1, H, W) float32 tensor."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), got {images.shape}")
    h, w = images.shape[1:]
    if h % _SIDE_MULTIPLE or w % _SIDE_MULTIPLE:
        raise ValueError(f"U-Net needs image sides divisible by {_SIDE_MULTIPLE}, got {h}x{w}")
    return normalise(torch.from_numpy(images).unsqueeze(1))


def _encoder_frozen(model: smp.Unet) -> bool:
    return not any(p.requires_grad for p in model.encoder.parameters())


def random_dihedral(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (image, mask) pair turned by one of the 8 symmetries of the square (k x 90 degrees, then an optional
    left-right flip), drawn uniformly; image and mask get the same one. A micrograph has no preferred
    orientation, so these are free extra training images (square inputs keep their shape).
    """
    turns = torch.randint(0, 4, (len(x),), generator=gen)
    flips = torch.rand(len(x), generator=gen) < 0.5
    xs, ys = [], []
    for xi, yi, k, f in zip(x, y, turns.tolist(), flips.tolist()):
        xi, yi = torch.rot90(xi, k, dims=(-2, -1)), torch.rot90(yi, k, dims=(-2, -1))
        xs.append(xi.flip(-1) if f else xi)
        ys.append(yi.flip(-1) if f else yi)
    return torch.stack(xs), torch.stack(ys)


def random_crops(x: torch.Tensor, y: torch.Tensor, side: int,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One `side` x `side` window per (image, mask) pair at a uniformly drawn position, the same for both.

    Training on native-resolution windows keeps thin wires a few pixels wide (downsampling a whole image to the
    training size would thin them below a pixel) at the cost of one window's pixels per step; the fully
    convolutional U-Net then predicts whole images at inference.
    """
    h, w = x.shape[-2:]
    if side > min(h, w):
        raise ValueError(f"crop side {side} exceeds the {h}x{w} training images")
    tops = torch.randint(0, h - side + 1, (len(x),), generator=gen).tolist()
    lefts = torch.randint(0, w - side + 1, (len(x),), generator=gen).tolist()
    xs = [xi[..., t : t + side, l : l + side] for xi, t, l in zip(x, tops, lefts)]
    ys = [yi[..., t : t + side, l : l + side] for yi, t, l in zip(y, tops, lefts)]
    return torch.stack(xs), torch.stack(ys)


LOSSES = ("dice", "dice+bce")


def segmentation_loss(name: str):
    """smp's binary dice loss (the paper's), or dice + pixel-wise binary cross-entropy (`dice+bce`): the
    cross-entropy term keeps a gradient on every pixel, so a run on a few sparse masks cannot settle on
    predicting nothing, where the dice gradient is weak."""
    if name not in LOSSES:
        raise ValueError(f"unknown segmentation loss '{name}' (choose from {', '.join(LOSSES)})")
    dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
    if name == "dice":
        return dice
    bce = smp.losses.SoftBCEWithLogitsLoss()
    return lambda logits, target: dice(logits, target) + bce(logits, target)


def _batches(n_items: int, batch_size: int, epochs: int | None, steps: int | None,
             gen: torch.Generator) -> list[torch.Tensor]:
    """Index batches: `epochs` passes over freshly shuffled items, or `steps` batches of min(batch_size,
    n_items) items cut from a stream of shuffles (so few images still give full-length training)."""
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs and steps")
    if steps is None:
        orders = [torch.randperm(n_items, generator=gen) for _ in range(epochs)]
        return [o[start : start + batch_size] for o in orders for start in range(0, n_items, batch_size)]
    size = min(batch_size, n_items)
    stream = torch.cat([torch.randperm(n_items, generator=gen) for _ in range(math.ceil(steps * size / n_items))])
    return [stream[i * size : (i + 1) * size] for i in range(steps)]


def train_segmenter(
    model: smp.Unet,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    lr: float,
    batch_size: int,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
    crop_size: int | None = None,
    encoder_lr: float | None = None,
    loss: str = "dice",
    cpu_bf16: bool = False,
) -> smp.Unet:
    """Train `model` in place with Adam on its trainable parameters and `loss` (`segmentation_loss`); returns it.

    Length: `epochs` passes over the images, or a fixed number of optimiser `steps` whatever their number.
    Every batch is augmented by `random_dihedral` (the 8 rotations/flips of the square); with `crop_size`, each
    image of a batch is first cut to a random window of that side (`random_crops`, a multiple of 32).
    `cpu_bf16`: the forward pass under bf16 autocast on a CPU with native bfloat16 (loss in float32).
    `encoder_lr`, when given, is the learning rate of the encoder's trainable parameters (partial unfreezing:
    a pretrained encoder adapts slowly while the fresh decoder learns at `lr`); its BatchNorm statistics stay
    fixed then too, as a few images' batch statistics would overwrite the pretrained ones.

    A frozen encoder (no parameter requiring grad, as `build_unet(freeze_encoder=True)` leaves it) is
    kept in eval mode so its BatchNorm statistics are not updated either. Shuffling and flips draw from
    one generator seeded by `seed`.
    """
    masks = np.asarray(masks)
    if masks.dtype != bool:
        raise TypeError(f"masks must be boolean, got {masks.dtype}")
    x_all = _to_input(images)
    if masks.shape != tuple(x_all.shape[:1]) + tuple(x_all.shape[2:]):
        raise ValueError(f"masks {masks.shape} do not match images {tuple(images.shape)}")
    y_all = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1)
    if crop_size is not None and (crop_size < _SIDE_MULTIPLE or crop_size % _SIDE_MULTIPLE):
        raise ValueError(f"crop_size must be a positive multiple of {_SIDE_MULTIPLE}, got {crop_size}")
    params = trainable_parameters(model)
    if not params:
        raise ValueError("model has no trainable parameters")
    frozen = _encoder_frozen(model)
    model.to(device)
    encoder_params = {id(q) for q in model.encoder.parameters()}
    groups = [{"params": [q for q in params if id(q) not in encoder_params], "lr": lr}]
    trunk = [q for q in params if id(q) in encoder_params]
    if trunk:
        groups.append({"params": trunk, "lr": lr if encoder_lr is None else encoder_lr})
    optimiser = torch.optim.Adam(groups, lr=lr)
    loss_fn = segmentation_loss(loss)
    gen = torch.Generator().manual_seed(seed)
    set_train_mode(model, frozen or encoder_lr is not None)
    for idx in tqdm(_batches(len(x_all), batch_size, epochs, steps, gen), desc="segment steps",
                    disable=not progress, leave=False):
        x, y = x_all[idx], y_all[idx]
        if crop_size is not None:
            x, y = random_crops(x, y, crop_size, gen)
        x, y = random_dihedral(x, y, gen)
        optimiser.zero_grad(set_to_none=True)
        with cpu_autocast(device, cpu_bf16):
            logits = model(x.to(device))
        loss = loss_fn(logits.float(), y.to(device))
        loss.backward()
        optimiser.step()
    model.eval()
    return model


def _mean_maps(trunk: Callable[[torch.Tensor], Any], heads: Sequence[Callable[[Any], torch.Tensor]],
               x: torch.Tensor, dihedral: bool) -> list[torch.Tensor]:
    """sigmoid(head(trunk(x))) for each head, the trunk run once for all of them. With `dihedral`, each map is the
    mean over the 8 symmetries of the square: the turned/flipped input's map is turned back before averaging, so
    it is exactly equivariant and an orientation-dependent error averages out (8 trunk passes)."""
    if not dihedral:
        shared = trunk(x)
        return [torch.sigmoid(head(shared).float()) for head in heads]
    sums: list[Any] = [0] * len(heads)
    for flip, k in SYMMETRIES:
        shared = trunk(turn(x, flip, k))
        sums = [total + unturn(torch.sigmoid(head(shared).float()), flip, k) for total, head in zip(sums, heads)]
    return [total / len(SYMMETRIES) for total in sums]


def shares_frozen_encoder(models: Sequence[smp.Unet]) -> bool:
    """True when every U-Net's encoder is frozen (`build_unet(freeze_encoder=True)`) and holds the first one's
    weights and BatchNorm statistics exactly: then one encoder pass serves all their decoders."""
    reference = models[0].encoder.state_dict()
    return all(_encoder_frozen(m) for m in models) and all(
        reference.keys() == m.encoder.state_dict().keys()
        and all(torch.equal(reference[key], value) for key, value in m.encoder.state_dict().items())
        for m in models[1:])


def _predict(models: Sequence[nn.Module], images: np.ndarray, batch_size: int, device: str | torch.device,
             dihedral: bool, cpu_bf16: bool) -> list[np.ndarray]:
    """Probability maps of one model, or of several that share one frozen encoder (the caller has checked
    `shares_frozen_encoder`): its output then feeds every decoder."""
    x_all = _to_input(images)
    if len(models) == 1:
        trunk, heads = (lambda x: x), [models[0]]
    else:
        trunk = models[0].encoder
        heads = [lambda features, m=m: m.segmentation_head(m.decoder(features)) for m in models]
    out: list[list[np.ndarray]] = [[] for _ in models]
    with ExitStack() as layouts, cpu_autocast(device, cpu_bf16):
        for model in models:
            layouts.enter_context(channels_last_inference(model, device))
        for start in range(0, len(x_all), batch_size):
            x = x_all[start : start + batch_size].to(device).contiguous(memory_format=torch.channels_last)
            for kept, prob in zip(out, _mean_maps(trunk, heads, x, dihedral)):
                kept.append(prob.squeeze(1).float().cpu().numpy())
    if not len(x_all):
        return [np.zeros((0, *x_all.shape[2:]), dtype=np.float32) for _ in models]
    return [np.concatenate(kept) for kept in out]


def predict_probabilities(
    model: nn.Module, images: np.ndarray, batch_size: int = 8, device: str | torch.device = "cpu",
    dihedral: bool = False, cpu_bf16: bool = False,
) -> np.ndarray:
    """Float32 (N, H, W) sigmoid(logit) maps, without gradients; leaves the model in eval mode.

    `dihedral`: the mean map over the image's 8 rotations/flips (`_mean_maps`; 8 forward passes).
    `cpu_bf16`: the network under bf16 autocast on a CPU with native bfloat16.

    (Eval mode is not undone afterwards: a blanket model.train() would also unfreeze a frozen encoder's
    BatchNorm; `train_segmenter` sets the right modes itself.)
    """
    return _predict([model], images, batch_size, device, dihedral, cpu_bf16)[0]


def predict_masks(
    model: nn.Module, images: np.ndarray, batch_size: int = 8, device: str | torch.device = "cpu",
    threshold: float = 0.5, dihedral: bool = False, cpu_bf16: bool = False,
) -> np.ndarray:
    """Boolean (N, H, W) masks: `predict_probabilities` > threshold (0.5: the logit's sign)."""
    return predict_probabilities(model, images, batch_size, device, dihedral, cpu_bf16) > threshold


def predict_masks_sharing_encoder(
    models: Sequence[smp.Unet], images: np.ndarray, batch_size: int = 8, device: str | torch.device = "cpu",
    threshold: float = 0.5, dihedral: bool = False, cpu_bf16: bool = False,
) -> list[np.ndarray]:
    """`predict_masks` of each of several U-Nets, bit for bit what each gives alone. When they share one frozen
    encoder (`shares_frozen_encoder`) it runs once per batch (and symmetry) and feeds every decoder, else each
    model runs alone. The few-shot sweep trains one U-Net per training-set size on the same frozen encoder and
    scores them all on the same test images, so this saves all but one of their encoder passes."""
    if len(models) > 1 and not shares_frozen_encoder(models):
        return [predict_masks(m, images, batch_size, device, threshold, dihedral, cpu_bf16) for m in models]
    return [p > threshold for p in _predict(models, images, batch_size, device, dihedral, cpu_bf16)]
