"""Label-budget sweep: probe accuracy vs labels per class, over many seeded train/test splits.

For every split seed the data are split once (stratified); the probe for each budget n is fitted on the
nested n-per-class subset of the TRAIN part only and scored on the whole TEST part. There is no early
stopping or model selection, so the test part is read only by `predict`.

Tables are tidy: one row per probe. The `encoder` column holds the METHOD label every consumer groups by:
the encoder's name for its linear probe (`simclr`) and `<encoder>+knn` for the k-NN baseline on the same
features; `classifier` says which of the two a row is. Several pretraining seeds of one encoder share a
method label and differ in `encoder_seed`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix
from tqdm.auto import tqdm

from nanomorph.probe.batched import ProbeTask
from nanomorph.probe.linear import knn_probe
from nanomorph.probe.solvers import SolverSettings, fit_predict
from nanomorph.probe.splits import SplitRule, as_rule, nested_label_subsets

if TYPE_CHECKING:
    from nanomorph.config import ProbeConfig

CLASSIFIERS = ("linear", "knn")
# Columns that identify one probe of a sweep table.
SWEEP_KEYS = ("encoder", "classifier", "encoder_seed", "split_seed", "n")


def label_budget_runs(
    labels: np.ndarray, sizes: Sequence[int], split_seeds: Sequence[int], test_fraction: float | SplitRule
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield (split_seed, n, fit_idx, test_idx) for every run of the sweep: the sweep's only index source.

    `test_fraction` may be a SplitRule holding the data's own split (then every seed shares its test part).
    """
    labels = np.asarray(labels)
    rule = as_rule(test_fraction)
    for seed in split_seeds:
        train_idx, test_idx = rule.train_test(labels, seed)
        for n, fit_idx in nested_label_subsets(labels, train_idx, sizes, seed).items():
            yield int(seed), n, fit_idx, test_idx


def _code_scores(t: np.ndarray, p: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1 and per-class recall of true and predicted class codes (indices into `classes`), from
    one confusion matrix: the definitions of scikit-learn's accuracy_score, f1_score(average="macro") and
    recall_score(average=None) over `classes` with zero_division=0 (tests/probe/test_sweep.py checks equality),
    without their input validation, which cost 5 ms per probe, as much as solving the probe (a 700-probe sweep
    spent 4 s in it)."""
    k = len(classes)
    confusion = np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(float)
    hits, actual, predicted = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    recall = np.divide(hits, actual, out=np.zeros(k), where=actual > 0)
    # scikit-learn's own form of F1: 2 tp / (true + predicted), 0 where both are empty
    f1 = np.divide(2 * hits, actual + predicted, out=np.zeros(k), where=actual + predicted > 0)
    row = {"accuracy": float(hits.sum() / max(len(t), 1)), "macro_f1": float(f1.mean())}
    row.update({f"recall_{c}": float(r) for c, r in zip(classes, recall)})
    return row


def method_name(encoder: str, classifier: str) -> str:
    """The label a method goes by in tables and figures: `simclr` (linear probe), `simclr+knn`."""
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier '{classifier}' (choose from {', '.join(CLASSIFIERS)})")
    return encoder if classifier == "linear" else f"{encoder}+{classifier}"


@dataclass
class SweepResult:
    """The tidy table (one row per probe) and, row for row, each probe's test indices and predicted labels."""

    table: pd.DataFrame
    predictions: list[tuple[np.ndarray, np.ndarray]]

    def pooled_confusion(self, method: str, n: int, classes: Sequence[str], labels: np.ndarray) -> np.ndarray:
        """Confusion counts (true x predicted, `classes` order) of `method` at `n`, summed over all its probes."""
        rows = np.flatnonzero((self.table["encoder"] == method).to_numpy() & (self.table["n"] == n).to_numpy())
        if rows.size == 0:
            raise ValueError(f"no probes of method '{method}' at n={n}")
        total = np.zeros((len(classes), len(classes)), dtype=int)
        for r in rows:
            test_idx, y_pred = self.predictions[r]
            total += confusion_matrix(np.asarray(labels)[test_idx], y_pred, labels=list(classes))
        return total


def probe_sweep(
    feature_sets: Mapping[tuple[str, int], np.ndarray],
    labels: np.ndarray,
    sizes: Sequence[int],
    split_seeds: Sequence[int],
    test_fraction: float | SplitRule,
    settings: SolverSettings | None = None,
    classifiers: Sequence[str] = ("linear", "knn"),
    knn_k: int = 5,
    progress: bool = False,
) -> SweepResult:
    """The label-budget sweep of every (encoder, encoder_seed) feature set, all linear probes fitted together.

    Rows: encoder (the method label, see `method_name`), classifier, encoder_seed, split_seed, n, accuracy,
    macro_f1, recall_<class>. The splits and label subsets depend only on the labels and split seed, so every
    method is scored on exactly the same runs.
    """
    settings = settings or SolverSettings()
    labels = np.asarray(labels).astype(str)
    classes = np.unique(labels)
    codes = np.searchsorted(classes, labels)
    for key, features in feature_sets.items():
        if len(features) != len(labels):
            raise ValueError(f"feature set {key!r} has {len(features)} rows for {len(labels)} labels")
    for classifier in classifiers:
        method_name("x", classifier)
    runs = list(label_budget_runs(labels, sizes, split_seeds, test_fraction))
    keys = list(feature_sets)
    meta = [(key, seed, n, fit_idx, test_idx) for key in keys for seed, n, fit_idx, test_idx in runs]
    by_classifier: dict[str, list[np.ndarray]] = {}
    if "linear" in classifiers:
        tasks = [ProbeTask(key, fit_idx, test_idx, seed) for key, seed, n, fit_idx, test_idx in meta]
        codes_pred = fit_predict(feature_sets, codes, len(classes), tasks, settings, progress=progress,
                                 desc=f"probe sweep ({settings.solver})")
        by_classifier["linear"] = codes_pred  # class codes: scored without a search over the label strings
    if "knn" in classifiers:
        by_classifier["knn"] = [
            np.searchsorted(classes, knn_probe(feature_sets[key][fit_idx], labels[fit_idx], k=knn_k)
                            .predict(feature_sets[key][test_idx]))
            for key, seed, n, fit_idx, test_idx in tqdm(meta, desc="k-NN sweep", disable=not progress, leave=False)
        ]
    rows, predictions = [], []
    for classifier in classifiers:
        for (key, seed, n, fit_idx, test_idx), pred in zip(meta, by_classifier[classifier]):
            encoder, encoder_seed = key
            rows.append({"encoder": method_name(encoder, classifier), "classifier": classifier,
                         "encoder_seed": int(encoder_seed), "split_seed": seed, "n": n,
                         **_code_scores(codes[test_idx], pred, classes)})
            predictions.append((test_idx, classes[pred]))
    columns = [*SWEEP_KEYS, "accuracy", "macro_f1", *(f"recall_{c}" for c in classes)]
    return SweepResult(pd.DataFrame(rows, columns=columns), predictions)


def solver_settings(section: ProbeConfig) -> SolverSettings:
    """The probe solver a `probe` config section (nanomorph.config.ProbeConfig) names, with its C, tol,
    max_iter and the paper solver's lr, batch size and epochs: the settings of every probe the probe stage fits."""
    return SolverSettings(solver=section.solver, C=section.C, tol=section.tol, max_iter=section.max_iter,
                          paper_lr=section.paper_lr, paper_batch_size=section.paper_batch_size,
                          paper_epochs=section.paper_epochs)


def sweep_arguments(section: ProbeConfig) -> dict[str, Any]:
    """`probe_sweep`'s keywords that a `probe` config section fixes: the label budgets (`labels_per_class`),
    split seeds 0 .. split_seeds-1, the solver settings and k-NN's k. The probe stage and
    `nanomorph.api.probe_sweep` both call `probe_sweep(features, labels, test_fraction=..., **sweep_arguments(...))`.
    """
    return dict(sizes=section.labels_per_class, split_seeds=list(range(section.split_seeds)),
                settings=solver_settings(section), knn_k=section.knn_k)
