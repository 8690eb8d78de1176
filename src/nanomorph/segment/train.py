"""Dice-loss training of the U-Net and thresholded prediction.

Training uses only the images it is given: there is no validation-based early stopping, so the fixed
number of epochs comes from the caller (params.yaml) and test images are never seen here.
"""

from __future__ import annotations

import math

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn
from tqdm.auto import tqdm

from nanomorph.models.encoder import normalise
from nanomorph.segment.model import set_train_mode, trainable_parameters

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
) -> smp.Unet:
    """Train `model` in place with Adam on its trainable parameters and binary dice loss; returns it.

    Length: `epochs` passes over the images, or a fixed number of optimiser `steps` whatever their number.
    Every batch is augmented by `random_dihedral` (the 8 rotations/flips of the square).

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
    params = trainable_parameters(model)
    if not params:
        raise ValueError("model has no trainable parameters")
    frozen = _encoder_frozen(model)
    model.to(device)
    optimiser = torch.optim.Adam(params, lr=lr)
    loss_fn = smp.losses.DiceLoss(mode="binary", from_logits=True)
    gen = torch.Generator().manual_seed(seed)
    set_train_mode(model, frozen)
    for idx in tqdm(_batches(len(x_all), batch_size, epochs, steps, gen), desc="segment steps",
                    disable=not progress, leave=False):
        x, y = random_dihedral(x_all[idx], y_all[idx], gen)
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(x.to(device)), y.to(device))
        loss.backward()
        optimiser.step()
    model.eval()
    return model


def predict_probabilities(
    model: nn.Module, images: np.ndarray, batch_size: int = 8, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Float32 (N, H, W) sigmoid(logit) maps, without gradients; leaves the model in eval mode.

    (Eval mode is not undone afterwards: a blanket model.train() would also unfreeze a frozen encoder's
    BatchNorm; `train_segmenter` sets the right modes itself.)
    """
    x_all = _to_input(images)
    model.eval()
    model.to(device)
    out = []
    with torch.no_grad():
        for start in range(0, len(x_all), batch_size):
            logits = model(x_all[start : start + batch_size].to(device))
            out.append(torch.sigmoid(logits).squeeze(1).float().cpu().numpy())
    if not out:
        return np.zeros((0, *x_all.shape[2:]), dtype=np.float32)
    return np.concatenate(out)


def predict_masks(
    model: nn.Module, images: np.ndarray, batch_size: int = 8, device: str | torch.device = "cpu",
    threshold: float = 0.5,
) -> np.ndarray:
    """Boolean (N, H, W) masks: `predict_probabilities` > threshold (0.5: the logit's sign)."""
    return predict_probabilities(model, images, batch_size, device) > threshold
