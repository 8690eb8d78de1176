"""Seeded train/test splits and nested label-budget subsets.

Only the train part of a split is ever subsampled; the test part is returned once per split seed and
is used for evaluation only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit, train_test_split


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_idx, test_idx) with every class in the same proportion on both sides (sklearn)."""
    _check_fraction(test_fraction)
    labels = np.asarray(labels)
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    train_idx, test_idx = next(splitter.split(np.zeros(len(labels)), labels))
    return np.sort(train_idx), np.sort(test_idx)


def random_split(
    n_items: int, test_fraction: float, seed: int, strata: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_idx, test_idx) over range(n_items); stratified by `strata` when given."""
    if strata is not None:
        strata = np.asarray(strata)
        if len(strata) != n_items:
            raise ValueError(f"strata has {len(strata)} entries for {n_items} items")
        return stratified_split(strata, test_fraction, seed)
    _check_fraction(test_fraction)
    train_idx, test_idx = train_test_split(np.arange(n_items), test_size=test_fraction, random_state=seed)
    return np.sort(train_idx), np.sort(test_idx)


def _usable_sizes(sizes: Sequence[int], available: int, what: str) -> list[int]:
    """Sizes that fit in `available`; the others are skipped with a warning naming them (never padded)."""
    usable = []
    for n in sorted(set(int(s) for s in sizes)):
        if n < 1:
            raise ValueError(f"subset sizes must be >= 1, got {n}")
        if n > available:
            warnings.warn(f"skipping size {n}: only {available} {what} available", stacklevel=3)
            continue
        usable.append(n)
    return usable


def nested_label_subsets(
    labels: np.ndarray, train_idx: np.ndarray, sizes: Sequence[int], seed: int
) -> dict[int, np.ndarray]:
    """{n: sorted indices with n training examples of every class}, nested in n.

    Each class's train indices get ONE seeded permutation and the subset for n takes its first n, so the
    2-label set contains the 1-label set and budgets differ only in the added labels. A size larger than
    the smallest class's train count is skipped with a warning (a subset with fewer labels of some class
    than its name says would be mislabelled in the sweep's results).
    """
    labels = np.asarray(labels)
    train_idx = np.asarray(train_idx)
    classes = np.unique(labels[train_idx])
    rng = np.random.default_rng(seed)
    # Classes are iterated in sorted order so the draw depends only on the seed, not on dict/set order.
    per_class = [rng.permutation(train_idx[labels[train_idx] == c]) for c in classes]
    smallest = min(len(p) for p in per_class)
    return {
        n: np.sort(np.concatenate([p[:n] for p in per_class]))
        for n in _usable_sizes(sizes, smallest, "training examples in the smallest class")
    }


def nested_subsets(train_idx: np.ndarray, sizes: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    """{n: sorted n of `train_idx`}, nested in n (one seeded permutation, first n); too-large sizes skipped."""
    order = np.random.default_rng(seed).permutation(np.asarray(train_idx))
    return {n: np.sort(order[:n]) for n in _usable_sizes(sizes, len(order), "training items")}
