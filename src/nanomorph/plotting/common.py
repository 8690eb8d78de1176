"""Figures shared by the stages and the report: the paper's label-efficiency box plot and dice vs training-set size."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Write `fig` to `path` (folders made as needed) and release it: stages draw many figures in a loop."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def grouped_boxplot(table: pd.DataFrame, value: str, xlabel: str, ylabel: str, title: str, path: Path,
                    legend_outside: bool = False) -> Path:
    """Notched box plots of `value` per n, one coloured box per encoder at each n (paper Fig. 2C style).

    `legend_outside` puts the legend beside the axes: with many methods a legend inside covers the boxes.
    """
    encoders = list(dict.fromkeys(table["encoder"]))
    sizes = sorted(table["n"].unique())
    width = 0.8 / max(len(encoders), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(sizes)) + (2 if legend_outside else 0), 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(encoders):
        data = [table[(table["encoder"] == name) & (table["n"] == n)][value].to_numpy() for n in sizes]
        positions = [i + (k - (len(encoders) - 1) / 2) * width for i in range(len(sizes))]
        notch = all(len(d) >= 5 for d in data)  # notches on tiny groups are meaningless and warn
        parts = ax.boxplot(data, positions=positions, widths=width * 0.9, notch=notch, patch_artist=True,
                           showfliers=True, manage_ticks=False)
        for box in parts["boxes"]:
            box.set_facecolor(colours[k % len(colours)])
            box.set_alpha(0.7)
        ax.plot([], [], color=colours[k % len(colours)], linewidth=8, alpha=0.7, label=name)
    ax.set_xticks(range(len(sizes)), [str(int(n)) for n in sizes])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if legend_outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)
