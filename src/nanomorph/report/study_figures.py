"""Figures of the report for the probe's side studies and pretraining: the anchor study (paper Fig. 3) and
the pretraining curves (loss and the embedding's effective rank per epoch, from metrics/pretrain_*_history.csv)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from nanomorph.plotting.common import save_figure  # noqa: E402


def anchor_figure(anchors: pd.DataFrame, path: Path) -> Path:
    """One-shot test accuracy against how atypical the four anchors are, one panel per encoder.

    `anchors` is metrics/probe_anchor.csv: one row per (encoder, split seed) with the one-shot `accuracy`, the
    anchors' mean distance to their class centre (`atypicality`, in the encoder's standardised feature space) and
    `inverted` (the dispersed anchor is denser than the network anchor, the paper's failure case)."""
    missing = {"encoder", "accuracy", "atypicality", "inverted"} - set(anchors.columns)
    if missing:
        raise ValueError(f"anchor table lacks columns {sorted(missing)}")
    encoders = list(dict.fromkeys(anchors["encoder"]))
    fig, axes = plt.subplots(1, len(encoders), figsize=(3.6 * len(encoders), 3.4), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], encoders):
        rows = anchors[anchors["encoder"] == name]
        inverted = rows["inverted"].astype(bool)
        ax.scatter(rows.loc[~inverted, "atypicality"], rows.loc[~inverted, "accuracy"], s=14, alpha=0.7,
                   label="density ordered")
        ax.scatter(rows.loc[inverted, "atypicality"], rows.loc[inverted, "accuracy"], s=22, marker="x",
                   color="tab:red", label="density inverted")
        ax.set_title(name)
        ax.set_xlabel("anchor atypicality (distance to class centre)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("one-shot test accuracy")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.suptitle("Anchor study: one labelled image per class")
    fig.tight_layout()
    return save_figure(fig, path)


def pretraining_figure(histories: dict[str, pd.DataFrame], path: Path) -> Path:
    """Loss (left) and effective rank of the embeddings (right; a collapse shows as a fall) per epoch, one line
    per pretraining method. Each history has columns epoch, loss and effective_rank."""
    fig, (loss_ax, rank_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, history in histories.items():
        loss_ax.plot(history["epoch"], history["loss"], marker=".", label=name)
        if "effective_rank" in history:
            rank_ax.plot(history["epoch"], history["effective_rank"], marker=".", label=name)
    loss_ax.set_title("Pretraining loss")
    rank_ax.set_title("Effective rank of the embeddings")
    for ax in (loss_ax, rank_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
