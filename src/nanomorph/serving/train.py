"""Training the deployable U-Net on every image it is given (the register stage's training part; the probe it
registers is `nanomorph.probe.linear.fit_linear_probe` on the encoder's features)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import segmentation_models_pytorch as smp

from nanomorph.segment.sweep import seeded_unet
from nanomorph.segment.train import train_segmenter

if TYPE_CHECKING:
    from nanomorph.config import SegmentConfig


def unet_arguments(section: SegmentConfig, n_images: int) -> dict[str, Any]:
    """`train_unet`'s keywords that a `segment` config section (nanomorph.config.SegmentConfig) fixes for a
    training set of `n_images`: the epochs `section.epochs_for(n_images)` (unused when `section.steps` is set),
    lr, batch size, frozen encoder, steps, crop size, encoder lr, loss and bf16. The register stage and
    `nanomorph.api.train_segmenter` both call `train_unet(state, images, masks, arch=..., seed=...,
    **unet_arguments(...))`.
    """
    s = section
    return dict(epochs=s.epochs_for(n_images), lr=s.lr, batch_size=s.batch_size, freeze_encoder=s.freeze_encoder,
                steps=s.steps, crop_size=s.crop_size, encoder_lr=s.encoder_lr, loss=s.loss, cpu_bf16=s.cpu_bf16)


def train_unet(encoder_state: dict | None, images: np.ndarray, masks: np.ndarray, *, arch: str,
               epochs: int | None, lr: float, batch_size: int, freeze_encoder: bool, seed: int, device: str = "cpu",
               progress: bool = False, steps: int | None = None, crop_size: int | None = None,
               encoder_lr: float | None = None, loss: str = "dice",
               cpu_bf16: bool = False) -> smp.Unet:
    """U-Net with the transferred encoder trained with `loss` (the segment stage's recipe); on CPU, eval mode.

    `seed` drives the decoder initialisation, the shuffles and the flips.
    """
    model = seeded_unet(arch, encoder_state, freeze_encoder, init_seed=seed)
    train_segmenter(model, images, masks, epochs=None if steps else epochs, steps=steps, lr=lr,
                    batch_size=batch_size, seed=seed, device=device, progress=progress, crop_size=crop_size,
                    encoder_lr=encoder_lr, loss=loss, cpu_bf16=cpu_bf16)
    return model.cpu().eval()
