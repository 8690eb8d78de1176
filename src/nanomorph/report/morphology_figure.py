"""Figure of the analyse stage's results: wire pixel density per class and share of percolating masks."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from nanomorph.plotting.common import save_figure  # noqa: E402


def morphology_figure(table: pd.DataFrame, path: Path) -> Path:
    """Left: box plot of pixel density per class; right: fraction of masks per class that percolate.

    `table` has one row per mask with columns label, density, percolates (metrics/morphology.csv).
    """
    missing = {"label", "density", "percolates"} - set(table.columns)
    if missing:
        raise ValueError(f"morphology table lacks columns {sorted(missing)}")
    classes = sorted(table["label"].astype(str).unique())
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.boxplot([table.loc[table["label"] == c, "density"].to_numpy() for c in classes], showfliers=True)
    left.set_xticks(range(1, len(classes) + 1), classes)
    left.set_ylabel("wire pixel density")
    left.set_title("Nanowire density per class")
    left.grid(axis="y", alpha=0.3)
    share = [table.loc[table["label"] == c, "percolates"].astype(bool).mean() for c in classes]
    bars = right.bar(classes, share, color="tab:orange", alpha=0.8)
    right.bar_label(bars, labels=[f"{s:.0%}" for s in share])
    right.set_ylim(0, 1.1)
    right.set_ylabel("share of masks that percolate")
    right.set_title("Percolation (DBSCAN eps=2, min_samples=2)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
