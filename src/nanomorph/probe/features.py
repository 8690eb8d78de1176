"""Frozen-encoder feature extraction for the linear probe."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nanomorph.models.dihedral import SYMMETRIES, turn
from nanomorph.models.encoder import normalise


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), got {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"expected float images in [0, 1], got dtype {images.dtype}")
    return images.astype(np.float32, copy=False)


def extract_features(
    encoder: nn.Module,
    images: np.ndarray,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    stages: tuple[str, ...] = ("layer4",),
    dihedral: bool = False,
) -> np.ndarray:
    """Global-average-pooled features (N, D) float32 of (N, H, W) [0, 1] images.

    `stages`: the residual stages whose pooled outputs are concatenated (`ResNetEncoder.pooled_stages`);
    the default, the last stage alone, is the encoder's own output.
    `dihedral`: average each image's features over its 8 rotations/flips (the symmetries of the square).
    A micrograph's morphology does not depend on its orientation, but a CNN's features do; the average is
    exactly invariant, so a few-shot probe need not learn the invariance from its few labels.

    The encoder runs in eval mode so BatchNorm uses its running statistics: a row's features then do not
    depend on which other images share its batch. The encoder's previous train/eval mode is restored.
    """
    images = _check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = encoder.training
    encoder.eval()
    encoder.to(device)
    chunks: list[np.ndarray] = []
    try:
        with torch.no_grad():
            starts = range(0, len(images), batch_size)
            for start in tqdm(starts, desc="features", disable=not progress, leave=False):
                batch = normalise(torch.from_numpy(images[start : start + batch_size]).unsqueeze(1).to(device))
                # Quarter turns swap H and W of non-square images; globally pooled features do not mind.
                views = [turn(batch, flip, k) for flip, k in SYMMETRIES] if dihedral else [batch]
                feats = sum(encoder.pooled_stages(v, tuple(stages)) for v in views) / len(views)
                chunks.append(feats.reshape(len(batch), -1).float().cpu().numpy())
    finally:
        encoder.train(was_training)
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)
