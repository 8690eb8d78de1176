"""Overlay figures: an image with its true mask and its predicted mask, side by side."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from nanomorph.plotting.common import save_figure  # noqa: E402

# Fill colours of the masks (RGBA), drawn over the gray image; transparent where the mask is False.
_TRUE_FILL = ListedColormap([(0, 0, 0, 0), (0.1, 0.8, 0.2, 0.45)])
_PRED_FILL = ListedColormap([(0, 0, 0, 0), (0.95, 0.2, 0.1, 0.45)])


def _contour(ax, mask: np.ndarray, colour: str) -> None:
    if mask.any() and not mask.all():  # a contour of a constant mask does not exist (matplotlib warns)
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.8)


def overlay_figure(image: np.ndarray, true_mask: np.ndarray, pred_mask: np.ndarray, path: Path,
                   title: str) -> Path:
    """Three panels: the image; the true mask (green fill); the predicted mask (red fill) with the true
    mask's outline (green) on top, so misses and false alarms are visible. Writes a PNG to `path`."""
    image, true_mask, pred_mask = np.asarray(image), np.asarray(true_mask, bool), np.asarray(pred_mask, bool)
    if not image.shape == true_mask.shape == pred_mask.shape:
        raise ValueError(f"shapes differ: image {image.shape}, true {true_mask.shape}, predicted {pred_mask.shape}")
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.6))
    panels = [("image", None), ("true mask", _TRUE_FILL), ("predicted (red) vs true outline (green)", _PRED_FILL)]
    for ax, (name, fill) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        if fill is _TRUE_FILL:
            ax.imshow(true_mask, cmap=fill, vmin=0, vmax=1, interpolation="nearest")
        elif fill is _PRED_FILL:
            ax.imshow(pred_mask, cmap=fill, vmin=0, vmax=1, interpolation="nearest")
            _contour(ax, true_mask, "lime")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
