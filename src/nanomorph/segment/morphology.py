"""Morphology read off predicted masks vs the same read off the true masks.

The downstream uses of a segmentation in Lu et al. are the pixel density and the percolation verdict
(dispersed wires do not percolate, networks do). `morphology_table` measures both, plus per-object
statistics, on every (predicted, true) mask pair; `morphology_agreement` condenses the table: how often the
percolation verdict from PREDICTED masks matches the class label, next to the same for the TRUE masks (the
ceiling the segmentation could reach), how well predicted densities track the true ones, and the object
statistics of both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from nanomorph.analysis.density import pixel_density
from nanomorph.analysis.objects import measure_objects, orientation_order
from nanomorph.analysis.percolation import PERCOLATING_CLASS, percolates

SOURCES = ("predicted", "true")
OBJECT_FIELDS = ("objects", "median_length", "median_width", "orientation_order")


def _mask_morphology(mask: np.ndarray, min_size: int) -> dict[str, float]:
    objects = measure_objects(mask, min_size)
    empty = objects.empty
    return {
        "density": pixel_density(mask),
        "percolates": bool(percolates(mask)),
        "objects": int(len(objects)),
        "median_length": float("nan") if empty else float(objects["length"].median()),
        "median_width": float("nan") if empty else float(objects["mean_width"].median()),
        "orientation_order": orientation_order(objects["orientation_deg"].to_numpy()),
    }


def morphology_table(pred_masks: np.ndarray, true_masks: np.ndarray, labels: Sequence[str],
                     min_size: int = 1) -> pd.DataFrame:
    """One row per image: label, and density / percolates / objects / median_length / median_width /
    orientation_order for the predicted (`predicted_*`) and true (`true_*`) mask."""
    pred_masks, true_masks = np.asarray(pred_masks), np.asarray(true_masks)
    if pred_masks.shape != true_masks.shape:
        raise ValueError(f"predicted masks {pred_masks.shape} and true masks {true_masks.shape} differ in shape")
    if len(labels) != len(pred_masks):
        raise ValueError(f"{len(labels)} labels for {len(pred_masks)} masks")
    rows = []
    for pred, true, label in zip(pred_masks, true_masks, labels):
        row = {"label": str(label)}
        for source, mask in zip(SOURCES, (pred, true)):
            row.update({f"{source}_{k}": v for k, v in _mask_morphology(mask, min_size).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _correlation(method, x: np.ndarray, y: np.ndarray) -> float | None:
    """Correlation coefficient, or None where it is undefined (fewer than 2 points or a constant side)."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(method(x, y)[0])


def _median_or_none(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.median()) if len(values) else None


def morphology_agreement(table: pd.DataFrame) -> dict:
    """Summary of `morphology_table`; None marks a statistic that the images at hand leave undefined."""
    judged = table[table["label"].isin(PERCOLATING_CLASS)]
    expected = judged["label"].map(PERCOLATING_CLASS)

    def agreement(column: str) -> float | None:
        return float((judged[column] == expected).mean()) if len(judged) else None

    pred_density, true_density = table["predicted_density"].to_numpy(), table["true_density"].to_numpy()
    return {
        "percolation": {
            "images": int(len(judged)),
            "agreement_predicted": agreement("predicted_percolates"),
            "agreement_true": agreement("true_percolates"),
            "predicted_matches_true_verdict": (float((judged["predicted_percolates"] == judged["true_percolates"])
                                                     .mean()) if len(judged) else None),
        },
        "density": {
            "images": int(len(table)),
            "pearson_r": _correlation(stats.pearsonr, pred_density, true_density),
            "spearman_rho": _correlation(stats.spearmanr, pred_density, true_density),
            "mean_abs_error": float(np.abs(pred_density - true_density).mean()) if len(table) else None,
            "median_predicted": _median_or_none(table["predicted_density"]),
            "median_true": _median_or_none(table["true_density"]),
        },
        # Medians over images of the per-image statistics.
        "objects": {
            **{source: {field: _median_or_none(table[f"{source}_{field}"]) for field in OBJECT_FIELDS}
               for source in SOURCES},
            "count_spearman_rho": _correlation(stats.spearmanr, table["predicted_objects"].to_numpy(),
                                               table["true_objects"].to_numpy()),
        },
    }
