"""Test helper: the probe sweep of ONE feature matrix with one classifier, as a plain table."""

from collections.abc import Sequence

import numpy as np
import pandas as pd

from nanomorph.probe.solvers import SolverSettings
from nanomorph.probe.sweep import probe_sweep


def label_budget_sweep(features: np.ndarray, labels: np.ndarray, sizes: Sequence[int], split_seeds: Sequence[int],
                       test_fraction: float, C: float = 1.0, max_iter: int = 1000, classifier: str = "linear",
                       solver: str = "batched", tol: float = 1e-8) -> pd.DataFrame:
    """`probe_sweep` of `features` alone: rows split_seed, n, accuracy, macro_f1, recall_<class>."""
    settings = SolverSettings(solver=solver, C=C, tol=tol, max_iter=max_iter)
    result = probe_sweep({("features", 0): np.asarray(features)}, labels, sizes, split_seeds, test_fraction,
                         settings, classifiers=(classifier,))
    return result.table.drop(columns=["encoder", "classifier", "encoder_seed"]).reset_index(drop=True)
