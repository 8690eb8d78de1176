"""The paper's augmentation pipeline for single-channel EM images, built from torchvision.transforms.v2.

A view is: a random square crop of 25-50 % of the image side resized back to `image_size`, a horizontal flip
(p = 0.5), and a brightness/contrast jitter (p = 0.8); intensities stay in [0, 1].

v2 transforms draw ONE set of random parameters per call, so a batched (B, 1, H, W) tensor would get the same
crop, flip and jitter on every image. `two_views` therefore applies the transform image by image. The
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
) -> v2.Compose:
    """One random view of a (1, H, W) [0, 1] float image (or, with shared parameters, of a batch)."""
    lo, hi = crop_side
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop_side must satisfy 0 < lo <= hi <= 1, got {crop_side}")
    return v2.Compose([
        # RandomResizedCrop samples the crop AREA, so a side fraction s maps to the area fraction s**2.
        v2.RandomResizedCrop(image_size, scale=(lo**2, hi**2), ratio=_SQUARE, antialias=True),
        v2.RandomHorizontalFlip(flip_p),
        v2.RandomApply([v2.ColorJitter(brightness=brightness, contrast=contrast)], p=jitter_p),
        # Guarantees the [0, 1] contract of the views whatever the resize filter or jitter implementation does.
        v2.Lambda(functools.partial(torch.clamp, min=0.0, max=1.0)),
    ])


def two_views(batch: torch.Tensor, transform: v2.Compose) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of every image of a (B, 1, H, W) batch, each (B, 1, S, S).

    The transform is called once per image and view, so no two images (or views) share crop/flip/jitter
    parameters. Randomness comes from torch's global generator; seed it to make the views reproducible.
    """
    view1 = torch.stack([transform(image) for image in batch])
    view2 = torch.stack([transform(image) for image in batch])
    return view1, view2
