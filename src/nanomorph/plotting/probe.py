"""Figures of the probe stage: accuracy box plots, pooled confusion matrices, t-SNE of frozen features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from nanomorph.plotting.common import grouped_boxplot, save_figure  # noqa: E402


def accuracy_boxplot(table: pd.DataFrame, path: Path) -> Path:
    """Notched box plots of test accuracy vs labels per class, one box per method (the `encoder` column)."""
    return grouped_boxplot(table, "accuracy", "labelled images per class", "test accuracy",
                           "Few-shot probes on frozen features (box: split seeds and encoder seeds)", Path(path),
                           legend_outside=True)


def confusion_grid(matrices: Mapping[str, np.ndarray], classes: Sequence[str], n: int, path: Path) -> Path:
    """One row-normalised confusion matrix per method (counts pooled over splits), side by side."""
    names = list(matrices)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        counts = np.asarray(matrices[name], dtype=float)
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ConfusionMatrixDisplay(share, display_labels=list(classes)).plot(
            ax=ax, colorbar=False, values_format=".2f", cmap="Blues", im_kw={"vmin": 0, "vmax": 1})
        ax.set_title(f"{name} (n={n}/class, {int(counts.sum())} predictions)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=45)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Confusion (rows: true class, share of its test images), pooled over splits")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def tsne_embedding(features: np.ndarray, seed: int, perplexity: float) -> np.ndarray:
    """2-D t-SNE (PCA init, seeded) of standardised features; perplexity must be below the sample count."""
    features = np.asarray(features, dtype=np.float64)
    if not 0 < perplexity < len(features):
        raise ValueError(f"t-SNE perplexity must lie in (0, {len(features)}) for {len(features)} samples, "
                         f"got {perplexity}")
    z = StandardScaler().fit_transform(features)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(z)


def tsne_figure(embedding: np.ndarray, true_labels: np.ndarray, predicted: np.ndarray, anchors: np.ndarray,
                classes: Sequence[str], title: str, path: Path) -> Path:
    """Two panels of the same embedding: coloured by true class, and by the probe's predicted class; the
    probe's training images are ringed in both."""
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharex=True, sharey=True)
    for ax, values, heading in zip(axes, (true_labels, predicted), ("true class", "predicted class")):
        for k, c in enumerate(classes):
            rows = np.asarray(values) == c
            ax.scatter(embedding[rows, 0], embedding[rows, 1], s=10, color=colours[k % len(colours)], label=c,
                       alpha=0.8)
        ax.scatter(embedding[anchors, 0], embedding[anchors, 1], s=60, facecolors="none", edgecolors="black",
                   linewidths=1.0, label="probe's training images")
        ax.set_title(heading)
        ax.set_xticks([]), ax.set_yticks([])
    axes[1].legend(loc="best", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
