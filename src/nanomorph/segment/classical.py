"""Classical segmenters: what a microscopist gets without training, fitted only on the training images.

* `otsu`: one global Otsu threshold per image (scikit-image `threshold_otsu`); the POLARITY (objects darker or
  brighter than the background) is the one with the higher mean dice on the training images.
* `local`: a local (adaptive) threshold, scikit-image `threshold_sauvola` (the local mean lowered by a multiple
  `k` of how little the local standard deviation varies: flat film stays background under uneven
  illumination); polarity (brighter objects: applied to the inverted image), window (from
  `LOCAL_WINDOW_FRACTIONS` of the image side) and `k` (from `LOCAL_K`) are chosen the same way.

Both apply the clean-up the analysis uses: 8-connected objects with fewer than `min_size` pixels are dropped
(`nanomorph.analysis.objects.label_objects`). "Fitting" is a choice among a handful of settings by training
dice, so one training image suffices; validation and test images are never read by `fit`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.filters import threshold_otsu, threshold_sauvola

from nanomorph.analysis.objects import label_objects
from nanomorph.segment.metrics import dice_iou

CLASSICAL_SEGMENTERS = ("otsu", "local")
# Windows of the local threshold, as fractions of the image side (rounded to the next odd pixel count), and k.
LOCAL_WINDOW_FRACTIONS = (0.125, 0.25, 0.5)
LOCAL_K = (0.05, 0.1, 0.2, 0.4)


@dataclass(frozen=True)
class ClassicalSegmenter:
    """A fitted classical segmenter: `method`, `darker` (polarity) and, for `local`, `window_fraction` and `k`."""

    method: str
    darker: bool
    window_fraction: float | None = None
    k: float | None = None
    min_size: int = 4

    def raw_mask(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, dtype=np.float64)
        if np.ptp(image) == 0:
            return np.zeros(image.shape, dtype=bool)
        if self.method == "otsu":
            threshold = threshold_otsu(image)
            return image < threshold if self.darker else image > threshold
        window = max(3, int(round(self.window_fraction * min(image.shape))) | 1)
        oriented = image if self.darker else image.max() + image.min() - image
        return oriented < threshold_sauvola(oriented, window_size=window, k=self.k)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Boolean (N, H, W) masks of (N, H, W) images (or one (H, W) mask of one image)."""
        images = np.asarray(images)
        if images.ndim == 2:
            return label_objects(self.raw_mask(images), self.min_size) > 0
        return np.stack([label_objects(self.raw_mask(im), self.min_size) > 0 for im in images])

    def describe(self) -> str:
        polarity = "darker" if self.darker else "brighter"
        if self.method == "otsu":
            return f"global Otsu, objects {polarity}"
        return (f"local Sauvola threshold (window {self.window_fraction:g} of the side, k {self.k:g}), "
                f"objects {polarity}")


def _candidates(method: str, min_size: int) -> list[ClassicalSegmenter]:
    if method == "otsu":
        return [ClassicalSegmenter("otsu", darker, None, None, min_size) for darker in (True, False)]
    if method == "local":
        return [ClassicalSegmenter("local", darker, f, k, min_size) for darker in (True, False)
                for f in LOCAL_WINDOW_FRACTIONS for k in LOCAL_K]
    raise ValueError(f"unknown classical segmenter '{method}' (choose from {', '.join(CLASSICAL_SEGMENTERS)})")


def fit_classical(method: str, images: np.ndarray, masks: np.ndarray, min_size: int = 4) -> ClassicalSegmenter:
    """The candidate setting of `method` with the highest mean dice on the training (images, masks).

    Ties go to the first candidate (darker objects; smaller window, smaller k), so the choice is deterministic.
    """
    images, masks = np.asarray(images), np.asarray(masks)
    if len(images) == 0 or len(images) != len(masks):
        raise ValueError(f"need matching training images and masks, got {len(images)} and {len(masks)}")
    best, best_score = None, -1.0
    for candidate in _candidates(method, min_size):
        score = float(np.mean([dice_iou(p, m)[0] for p, m in zip(candidate.predict(images), masks)]))
        if score > best_score:
            best, best_score = candidate, score
    return best
