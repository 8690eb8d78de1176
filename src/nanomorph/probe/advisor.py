"""Label-budget advisor: which k unlabelled images to send to an expert first.

With k labels and no knowledge of the classes, a random choice wastes labels on near-duplicates and often
misses a class entirely (with 4 labels and 4 balanced classes, 91 % of random draws miss one). The advisor
picks k images that are representative and diverse: k-means with k clusters on the standardised features of
the unlabelled pool, then for each centre the pool image nearest to it (a medoid-like real image, never
the same image twice). It never sees a label.

`evaluate_advisor` measures whether that helps: for held-out split seeds, the stratified split's train part
is the unlabelled pool and its test part is scored; the advisor's k images and `random_draws` uniform
random draws of k images from the same pool are labelled (their true labels revealed) and a softmax probe
is fitted on each. A class with no chosen image is simply absent from that probe's softmax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler

from nanomorph.probe.batched import ProbeTask
from nanomorph.probe.solvers import SolverSettings, fit_predict
from nanomorph.probe.splits import SplitRule, as_rule

SUMMARY_COLUMNS = ["encoder", "encoder_seed", "k", "seeds", "advisor_accuracy", "random_accuracy",
                   "advisor_minus_random", "advisor_wins", "wilcoxon_p", "advisor_classes_covered",
                   "random_classes_covered"]


def propose_labels(features: np.ndarray, k: int, seed: int, n_init: int = 10) -> np.ndarray:
    """Indices (into `features`) of the k images to label: the image nearest each k-means centre."""
    features = np.asarray(features, dtype=np.float64)
    if not 1 <= k <= len(features):
        raise ValueError(f"budget k must lie in [1, {len(features)}], got {k}")
    z = StandardScaler().fit_transform(features)
    centres = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(z).cluster_centers_
    dist = np.linalg.norm(z[None, :, :] - centres[:, None, :], axis=2)  # (k, N)
    chosen: list[int] = []
    # Centres are served in order of how close their best image is, so a tight cluster keeps its medoid.
    for c in np.argsort(dist.min(1)):
        for i in np.argsort(dist[c]):
            if int(i) not in chosen:
                chosen.append(int(i))
                break
    return np.array(sorted(chosen))


def random_labels(n_pool: int, k: int, seed: int) -> np.ndarray:
    """k distinct positions in range(n_pool), uniformly at random (the no-advice baseline)."""
    if not 1 <= k <= n_pool:
        raise ValueError(f"budget k must lie in [1, {n_pool}], got {k}")
    return np.sort(np.random.default_rng(seed).choice(n_pool, size=k, replace=False))


def evaluate_advisor(feature_sets: Mapping[tuple[str, int], np.ndarray], labels: np.ndarray,
                     budgets: Sequence[int], split_seeds: Sequence[int], test_fraction: float | SplitRule,
                     settings: SolverSettings, random_draws: int = 10, progress: bool = False,
                     kmeans_restarts: int = 10) -> pd.DataFrame:
    """One row per (feature set, k, split seed, choice): choice `advisor` or `random` (draw index in
    `draw`), accuracy on the split's test part, and how many classes the k labels covered."""
    labels = np.asarray(labels).astype(str)
    classes = np.unique(labels)
    codes = np.searchsorted(classes, labels)
    tasks, meta = [], []
    for key, features in feature_sets.items():
        for seed in split_seeds:
            pool, test_idx = as_rule(test_fraction).train_test(labels, seed)
            for k in budgets:
                picks = [("advisor", -1, pool[propose_labels(features[pool], k, seed, kmeans_restarts)])]
                picks += [("random", d, pool[random_labels(len(pool), k, seed * 1000 + d)])
                          for d in range(random_draws)]
                for choice, draw, fit_idx in picks:
                    tasks.append(ProbeTask(key, fit_idx, test_idx, seed))
                    meta.append({"encoder": key[0], "encoder_seed": int(key[1]), "k": int(k), "split_seed": int(seed),
                                 "choice": choice, "draw": draw, "classes_covered": len(np.unique(codes[fit_idx]))})
    predicted = fit_predict(feature_sets, codes, len(classes), tasks, settings, progress=progress,
                            desc="label-budget advisor")
    for row, task, pred in zip(meta, tasks, predicted):
        row["accuracy"] = float((pred == codes[task.predict_idx]).mean())
    return pd.DataFrame(meta)


def summarise_advisor(table: pd.DataFrame) -> pd.DataFrame:
    """Per (feature set, k): mean accuracy of the advisor and of random choice over split seeds (random first
    averaged over its draws within a seed), their difference, on how many seeds the advisor won, the
    two-sided Wilcoxon signed-rank p of the paired per-seed accuracies (NaN when undefined), and the mean
    number of classes covered by the chosen labels."""
    rows = []
    for (encoder, eseed, k), group in table.groupby(["encoder", "encoder_seed", "k"], sort=False):
        per_seed = group.groupby(["split_seed", "choice"])[["accuracy", "classes_covered"]].mean().unstack("choice")
        adv, rnd = per_seed[("accuracy", "advisor")], per_seed[("accuracy", "random")]
        diff = (adv - rnd).to_numpy()
        p = float(wilcoxon(diff).pvalue) if len(diff) > 1 and np.any(diff != 0) else float("nan")
        rows.append({"encoder": encoder, "encoder_seed": int(eseed), "k": int(k), "seeds": len(per_seed),
                     "advisor_accuracy": float(adv.mean()), "random_accuracy": float(rnd.mean()),
                     "advisor_minus_random": float(diff.mean()), "advisor_wins": int((diff > 0).sum()),
                     "wilcoxon_p": p,
                     "advisor_classes_covered": float(per_seed[("classes_covered", "advisor")].mean()),
                     "random_classes_covered": float(per_seed[("classes_covered", "random")].mean())})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
