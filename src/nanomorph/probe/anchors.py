"""Anchor study: why some one-shot probes do much better than others.

A one-shot probe is fitted on one labelled image (its anchor) per class. For each one-shot probe we measure

* typicality of its anchors: the distance of each anchor's features to its class median (coordinate-wise
  median over all images of the class, in features standardised over the whole set), divided by the class's
  median distance so 1.0 is an ordinary member of that class; `atypicality` is the mean over the anchors;
* the nanowire pixel density (share of wire pixels in the true mask) of the dispersed and the network anchor.
  Dispersed images are sparse and network images dense, so a probe whose dispersed anchor is denser than its
  network anchor ("inverted") has its anchors on the wrong sides of the density boundary between the classes.

The paper's finding is that inverted one-shot probes do worse; `summarise_anchors` tests it (two-sided
Mann-Whitney U of accuracy, inverted vs correctly ordered; Spearman of accuracy vs the density gap between
the two anchors) and correlates atypicality with accuracy (Spearman). The class medians use every image:
this is a description of the data, not a model choice, and no probe is fitted or selected with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from nanomorph.probe.batched import ProbeTask
from nanomorph.probe.solvers import SolverSettings, fit_predict
from nanomorph.probe.stats import mann_whitney
from nanomorph.probe.splits import SplitRule
from nanomorph.probe.sweep import label_budget_runs

SUMMARY_COLUMNS = ["encoder", "encoder_seed", "probes", "inverted", "median_accuracy_inverted",
                   "median_accuracy_ordered", "U", "p", "spearman_rho", "spearman_p", "gap_spearman_rho",
                   "gap_spearman_p"]


def anchor_distances(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Every image's distance to its class median divided by its class's median distance (1.0 = typical)."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    std = features.std(0)
    z = (features - features.mean(0)) / np.where(std > 0, std, 1.0)
    relative = np.empty(len(labels))
    for c in np.unique(labels):
        rows = labels == c
        dist = np.linalg.norm(z[rows] - np.median(z[rows], axis=0), axis=1)
        relative[rows] = dist / max(float(np.median(dist)), 1e-12)
    return relative


def anchor_study(feature_sets: Mapping[tuple[str, int], np.ndarray], labels: np.ndarray, densities: np.ndarray,
                 split_seeds: Sequence[int], test_fraction: float | SplitRule, settings: SolverSettings,
                 sparse_class: str = "dispersed", dense_class: str = "network",
                 progress: bool = False) -> pd.DataFrame:
    """One row per (feature set, split seed) one-shot probe: accuracy, its anchors, their typicality and
    densities, and whether the sparse-class anchor is denser than the dense-class anchor (`inverted`).

    `densities[i]` is image i's wire pixel density (only the anchors of the two density classes are read).
    The one-shot runs are the sweep's own (`label_budget_runs` with n = 1), so anchors and test sets are
    those of the n = 1 probes of a sweep with these split seeds.
    """
    labels = np.asarray(labels).astype(str)
    densities = np.asarray(densities, dtype=float)
    classes = np.unique(labels)
    for c in (sparse_class, dense_class):
        if c not in classes:
            raise ValueError(f"class '{c}' is not among the labels {list(classes)}")
    codes = np.searchsorted(classes, labels)
    runs = list(label_budget_runs(labels, [1], split_seeds, test_fraction))
    keys = list(feature_sets)
    tasks = [ProbeTask(key, fit_idx, test_idx, seed) for key in keys for seed, _n, fit_idx, test_idx in runs]
    predicted = fit_predict(feature_sets, codes, len(classes), tasks, settings, progress=progress,
                            desc="one-shot anchor probes")
    typicality = {key: anchor_distances(feature_sets[key], labels) for key in keys}
    rows = []
    for task, pred in zip(tasks, predicted):
        anchors = {labels[i]: int(i) for i in task.fit_idx}
        relative = typicality[task.features]
        row = {"encoder": task.features[0], "encoder_seed": int(task.features[1]), "split_seed": task.seed,
               "accuracy": float((pred == codes[task.predict_idx]).mean())}
        row.update({f"anchor_{c}": anchors[c] for c in classes})
        row.update({f"distance_{c}": float(relative[anchors[c]]) for c in classes})
        row["atypicality"] = float(np.mean([relative[anchors[c]] for c in classes]))
        row[f"density_{sparse_class}"] = float(densities[anchors[sparse_class]])
        row[f"density_{dense_class}"] = float(densities[anchors[dense_class]])
        if not np.isfinite([row[f"density_{sparse_class}"], row[f"density_{dense_class}"]]).all():
            raise ValueError(f"anchor images {anchors[sparse_class]} / {anchors[dense_class]} have no density")
        # How far apart, on the right sides, the two anchors sit (negative: inverted).
        row["density_gap"] = row[f"density_{dense_class}"] - row[f"density_{sparse_class}"]
        row["inverted"] = bool(row["density_gap"] < 0)
        rows.append(row)
    return pd.DataFrame(rows)


def _spearman(x: pd.Series, y: pd.Series) -> tuple[float, float]:
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return float("nan"), float("nan")
    rho, p = spearmanr(x, y)
    return float(rho), float(p)


def summarise_anchors(table: pd.DataFrame) -> pd.DataFrame:
    """Per feature set: how many one-shot probes are inverted, median accuracy of inverted vs ordered
    probes, two-sided Mann-Whitney U (of the inverted group) and p, Spearman rho and p of atypicality vs
    accuracy, and of the density gap (dense-class anchor minus sparse-class anchor) vs accuracy -- the
    continuous form of the inversion test, defined even when no draw is inverted. A test with an empty
    group or a constant variable is undefined and reported as NaN."""
    rows = []
    for (encoder, seed), group in table.groupby(["encoder", "encoder_seed"], sort=False):
        inv = group.loc[group["inverted"], "accuracy"].to_numpy(dtype=float)
        ordered = group.loc[~group["inverted"], "accuracy"].to_numpy(dtype=float)
        U, p = mann_whitney(inv, ordered)
        rho, rho_p = _spearman(group["atypicality"], group["accuracy"])
        gap_rho, gap_p = _spearman(group["density_gap"], group["accuracy"])
        rows.append({"encoder": encoder, "encoder_seed": int(seed), "probes": len(group), "inverted": len(inv),
                     "median_accuracy_inverted": float(np.median(inv)) if inv.size else float("nan"),
                     "median_accuracy_ordered": float(np.median(ordered)) if ordered.size else float("nan"),
                     "U": U, "p": p, "spearman_rho": rho, "spearman_p": rho_p,
                     "gap_spearman_rho": gap_rho, "gap_spearman_p": gap_p})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
