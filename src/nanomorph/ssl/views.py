"""The paper's augmentation pipeline for single-channel EM images, built from torchvision.transforms.v2.

A view is: a random square crop of 25-50 % of the image side resized back to `image_size`, a horizontal flip
(p = 0.5), and a brightness/contrast jitter (p = 0.8); intensities stay in [0, 1]. That is the paper's recipe.

EM additions (off by default, so the paper's views are unchanged): `dihedral` adds a vertical flip and a
90-degree rotation (each p = 0.5; with the horizontal flip at p = 0.5 every one of the 8 symmetries of the square
is equally likely -- a micrograph has no up or left); `blur_p` a Gaussian blur (sigma 0.1-`blur_sigma` px,
defocus); `noise_std` additive Gaussian noise of a std drawn uniformly from 0 to `noise_std` (shot noise, grain).

v2 transforms draw ONE set of random parameters per call, so a batched (B, 1, H, W) tensor would get the same
crop, flip and jitter on every image; the transform is therefore applied image by image. The
training loop (train.py) builds each image's views under a (seed, step, position in the step's batch) seed,
in the training process by default on CPU -- there they cost ~3.5 % of a step (benchmarks/
pretrain_throughput.py: 15 ms of 0.43 s for resnet18, 64 px, batch 64 on 2 cores) and DataLoader workers
would take cores from the model -- and in DataLoader workers ahead of the trainer on CUDA, where the model
step is short. Being seeded per image, the views are the same either way, and whichever DDP rank or
accumulation micro-batch embeds the image.
"""

from __future__ import annotations

import functools

import torch
from torchvision.transforms import v2

# The paper crops squares ("25-50 % of the side"), so the aspect ratio is fixed at 1.
_SQUARE = (1.0, 1.0)


def make_view_transform(
    image_size: int,
    crop_side: tuple[float, float] = (0.25, 0.5),
    flip_p: float = 0.5,
    jitter_p: float = 0.8,
    brightness: float = 0.4,
    contrast: float = 0.4,
    dihedral: bool = False,
    blur_p: float = 0.0,
    blur_sigma: float = 1.5,
    noise_std: float = 0.0,
) -> v2.Compose:
    """One random view of a (1, H, W) [0, 1] float image (or, with shared parameters, of a batch)."""
    lo, hi = crop_side
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop_side must satisfy 0 < lo <= hi <= 1, got {crop_side}")
    if not 0 <= blur_p <= 1 or blur_sigma < 0.1 or noise_std < 0:
        raise ValueError(f"need 0 <= blur_p <= 1, blur_sigma >= 0.1, noise_std >= 0; got {blur_p}, {blur_sigma}, "
                         f"{noise_std}")
    steps: list = [
        # RandomResizedCrop samples the crop AREA, so a side fraction s maps to the area fraction s**2.
        v2.RandomResizedCrop(image_size, scale=(lo**2, hi**2), ratio=_SQUARE, antialias=True),
        v2.RandomHorizontalFlip(flip_p),
    ]
    if dihedral:
        steps += [v2.RandomVerticalFlip(0.5), v2.RandomApply([v2.Lambda(_rotate90)], p=0.5)]
    steps.append(v2.RandomApply([v2.ColorJitter(brightness=brightness, contrast=contrast)], p=jitter_p))
    if blur_p > 0:
        kernel = 2 * int(round(3 * blur_sigma)) + 1
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, blur_sigma))], p=blur_p))
    if noise_std > 0:
        steps.append(v2.Lambda(functools.partial(_random_noise, max_std=noise_std)))
    # Guarantees the [0, 1] contract of the views whatever the resize filter or jitter implementation does.
    steps.append(v2.Lambda(functools.partial(torch.clamp, min=0.0, max=1.0)))
    return v2.Compose(steps)


def _rotate90(image: torch.Tensor) -> torch.Tensor:
    return torch.rot90(image, 1, dims=(-2, -1))


def _random_noise(image: torch.Tensor, max_std: float) -> torch.Tensor:
    """Add N(0, s^2) noise, s ~ U(0, max_std), from torch's global generator (seeded per image by the loop)."""
    std = float(torch.rand(())) * max_std
    return image + std * torch.randn_like(image)
