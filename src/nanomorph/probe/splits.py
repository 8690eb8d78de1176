"""Seeded train/test splits, a data set's own split, and nested label-budget subsets.

Only the train part of a split is ever subsampled; the test part is returned once per split seed and
is used for evaluation only. When the data come with their own split (a lab's `split` column: train, val,
test), `SplitRule` with a `GivenSplit` returns it for every seed: seeds then vary only which labelled
training images a few-shot run draws, and the lab's test images are never resplit.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedShuffleSplit, train_test_split

from nanomorph.errors import NanomorphError


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


SPLIT_NAMES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


@dataclass(frozen=True)
class GivenSplit:
    """A data set's own split: sorted row indices of its train, validation and test parts."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    @classmethod
    def from_column(cls, splits: Sequence[object], what: str = "manifest") -> GivenSplit | None:
        """The split named row by row (train | val | validation | test, any case); None when no row names one.

        A partial column (some rows without a split) or an unknown name is refused: guessing would put a
        lab's test image into training. Train and test must not be empty.
        """
        names = [s.strip().casefold() if isinstance(s, str) and s.strip() else None for s in splits]
        if all(n is None for n in names):
            return None
        missing = [i for i, n in enumerate(names) if n is None]
        if missing:
            raise ValueError(f"{what}: {len(missing)} of {len(names)} rows have no split (e.g. row {missing[0]}) "
                             "while others do; give every row train, val or test")
        unknown = sorted({n for n in names if n not in SPLIT_NAMES})
        if unknown:
            raise ValueError(f"{what}: unknown split names {unknown} (use train, val or test)")
        parts = np.array([SPLIT_NAMES[n] for n in names])
        given = cls(*(np.flatnonzero(parts == p) for p in ("train", "validation", "test")))
        if not len(given.train) or not len(given.test):
            raise ValueError(f"{what}: its split has {len(given.train)} train and {len(given.test)} test rows; "
                             "both are needed")
        return given


@dataclass(frozen=True)
class SplitRule:
    """How a split seed becomes (train, test): a seeded stratified split of `test_fraction`, or `given`."""

    test_fraction: float
    given: GivenSplit | None = None

    def train_test(self, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if self.given is not None:
            return self.given.train, self.given.test
        return stratified_split(labels, self.test_fraction, seed)


def as_rule(split: float | SplitRule) -> SplitRule:
    """A bare test fraction as the seeded-split rule; a SplitRule as it is."""
    return split if isinstance(split, SplitRule) else SplitRule(float(split))


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


def nested_stratified_subsets(
    train_idx: np.ndarray, sizes: Sequence[int], seed: int, strata: np.ndarray
) -> dict[int, np.ndarray]:
    """{n: sorted n of `train_idx`}, nested in n, spread over the classes of `strata` (indexed like the data).

    Each class's train indices get one seeded permutation and the classes (in a seeded order) take turns, so
    every n-subset holds floor(n / classes) or one more of each class while it lasts: what a microscopist
    labelling a few images would choose (one of each morphology) rather than a draw that may miss a class.
    """
    train_idx = np.asarray(train_idx)
    strata = np.asarray(strata)[train_idx]
    rng = np.random.default_rng(seed)
    per_class = [list(rng.permutation(train_idx[strata == c])) for c in rng.permutation(np.unique(strata))]
    order = []
    while any(per_class):
        order.extend(p.pop(0) for p in per_class if p)
    return {n: np.sort(np.array(order[:n], dtype=int)) for n in _usable_sizes(sizes, len(order), "training items")}


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


def split_rule(rows: pd.DataFrame, test_fraction: float, manifest: str) -> SplitRule:
    """The data's own split when the manifest gives one (train, val, test per row), else seeded splits."""
    try:
        given = GivenSplit.from_column(rows["split"].tolist() if "split" in rows else [None] * len(rows), manifest)
    except ValueError as exc:
        raise NanomorphError(str(exc)) from None
    if given is not None:
        print(f"{manifest}: using its own split ({len(given.train)} train, {len(given.validation)} validation, "
              f"{len(given.test)} test images); split seeds vary only the labelled training subsets")
    return SplitRule(test_fraction, given)
