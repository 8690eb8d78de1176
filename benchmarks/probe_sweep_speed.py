"""How much faster is the batched probe solver than training the paper's probes one by one?

Times, in one process on one device, the full label-budget sweep -- every (labels per class n) x (split seed)
x (encoder seed) linear probe -- with
  batched  all probes of the sweep at once (`solver: batched`: exact L2 softmax optimum, float64), and
  paper    the paper's per-probe training (`solver: paper`: torch linear softmax, Adam lr 1e-3, batch 4,
           300 epochs), timed on `--paper-probes-per-n` probes per n and extrapolated per probe: its cost
           is a fixed number of Adam steps per probe, ceil(4 n / 4) x 300, so the seconds of a probe depend
           on n only;
  sklearn  (optional reference) one scikit-learn LogisticRegression per probe, extrapolated the same way;
and reports the sweep seconds and the ratio paper / batched. Features are random 512-d, non-negative and
weakly class-informative (one matrix per encoder seed), 400 images in 4 classes, unless `--features-dir`
points at the probe stage's feature cache (data/features), whose entries then stand for the encoder seeds.
All solvers run on `--threads` torch threads (the batched solver caps itself at one by default).

    python benchmarks/probe_sweep_speed.py --splits 20 --encoder-seeds 5 --paper-probes-per-n 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _tracking import benchmark_run
from nanomorph.probe.batched import ProbeTask
from nanomorph.probe.cache import load_indexed_features
from nanomorph.probe.solvers import SolverSettings, fit_predict
from nanomorph.probe.sweep import label_budget_runs, probe_sweep

CLASSES = np.array(["bundle", "dispersed", "network", "singular"])


def random_feature_sets(n_images: int, dim: int, encoder_seeds: int) -> tuple[dict, np.ndarray]:
    """One (n_images, dim) matrix per encoder seed: ReLU of a weak class signal plus correlated noise."""
    labels = np.repeat(CLASSES, n_images // len(CLASSES))
    codes = np.searchsorted(CLASSES, labels)
    sets = {}
    for seed in range(encoder_seeds):
        rng = np.random.default_rng(seed)
        latent = rng.normal(size=(len(labels), 32)) + 0.3 * rng.normal(size=(len(CLASSES), 32))[codes]
        sets[("random_features", seed)] = np.maximum(latent @ rng.normal(size=(32, dim)) / 4
                                                     + rng.normal(size=(len(labels), dim)), 0).astype(np.float32)
    return sets, labels


def cached_feature_sets(features_dir: Path, manifest: Path) -> tuple[dict, np.ndarray]:
    rows = pd.read_csv(manifest)
    rows = rows[(rows["kind"] == "nanowire") & (rows["status"] == "ok")]
    return load_indexed_features(features_dir), rows["label"].to_numpy(dtype=str)


def per_probe_seconds(feature_sets, labels, sizes, split_seeds, test_fraction, settings, per_n) -> tuple:
    """Seconds and accuracies of `per_n` probes per n (the first split seeds, cycling over the feature sets),
    and those probes with their predictions."""
    classes = np.unique(labels)
    codes = np.searchsorted(classes, labels)
    keys = list(feature_sets)
    seconds: dict[int, list] = {n: [] for n in sizes}
    accuracy: dict[int, list] = {n: [] for n in sizes}
    tasks, predictions = [], []
    for j, (seed, n, fit_idx, test_idx) in enumerate(label_budget_runs(labels, sizes, split_seeds[:per_n],
                                                                       test_fraction)):
        task = ProbeTask(keys[j % len(keys)], fit_idx, test_idx, seed)
        started = time.perf_counter()
        (pred,) = fit_predict(feature_sets, codes, len(classes), [task], settings)
        seconds[n].append(time.perf_counter() - started)
        accuracy[n].append(float((pred == codes[test_idx]).mean()))
        tasks.append(task)
        predictions.append(pred)
    return {n: seconds[n] for n in sizes}, {n: accuracy[n] for n in sizes}, tasks, predictions


def log_to_mlflow(params: dict, metrics: dict) -> None:
    with benchmark_run("probe_sweep_speed") as mlflow:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 80])
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--encoder-seeds", type=int, default=5)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument("--paper-probes-per-n", type=int, default=2)
    parser.add_argument("--sklearn-probes-per-n", type=int, default=2, help="0 skips the sklearn reference")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--features-dir", type=Path, default=None,
                        help="use the probe stage's cached features (index.json) instead of random ones")
    parser.add_argument("--manifest", type=Path, default=Path("data/validated/manifest.csv"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/probe_sweep_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.features_dir is None:
        feature_sets, labels = random_feature_sets(args.images, args.dim, args.encoder_seeds)
    else:
        feature_sets, labels = cached_feature_sets(args.features_dir, args.manifest)
    split_seeds = list(range(args.splits))
    runs_per_set = {n: 0 for n in args.sizes}
    for _seed, n, _fit, _test in label_budget_runs(labels, args.sizes, split_seeds, args.test_fraction):
        runs_per_set[n] += 1
    probes_per_n = {n: c * len(feature_sets) for n, c in runs_per_set.items()}
    n_probes = sum(probes_per_n.values())

    batched = SolverSettings(solver="batched", C=args.C, tol=args.tol)
    started = time.perf_counter()
    sweep = probe_sweep(feature_sets, labels, args.sizes, split_seeds, args.test_fraction, batched,
                        classifiers=("linear",))
    batched_seconds = time.perf_counter() - started
    medians = sweep.table.groupby("n")["accuracy"].median()

    paper_seconds, paper_accuracy, _, _ = per_probe_seconds(feature_sets, labels, args.sizes, split_seeds,
                                                      args.test_fraction, SolverSettings(solver="paper"),
                                                      args.paper_probes_per_n)
    paper_extrapolated = sum(float(np.mean(paper_seconds[n])) * probes_per_n[n] for n in args.sizes)
    metrics = {
        "probes": n_probes,
        "batched_sweep_seconds": batched_seconds,
        "batched_seconds_per_probe": batched_seconds / n_probes,
        "paper_sweep_seconds_extrapolated": paper_extrapolated,
        "paper_seconds_measured": float(sum(sum(v) for v in paper_seconds.values())),
        "paper_over_batched": paper_extrapolated / batched_seconds,
    }
    per_n = {int(n): {"probes": probes_per_n[n], "batched_median_accuracy": float(medians[n]),
                      "paper_seconds_per_probe": float(np.mean(paper_seconds[n])),
                      "paper_accuracy_of_timed_probes": paper_accuracy[n]} for n in args.sizes}
    if args.sklearn_probes_per_n > 0:
        sk_seconds, _, sk_tasks, sk_predictions = per_probe_seconds(
            feature_sets, labels, args.sizes, split_seeds, args.test_fraction,
            SolverSettings(solver="sklearn", C=args.C, tol=args.tol), args.sklearn_probes_per_n)
        sk_total = sum(float(np.mean(sk_seconds[n])) * probes_per_n[n] for n in args.sizes)
        # Equality: the same probes through the batched solver predict every test row as scikit-learn does.
        classes = np.unique(labels)
        same = fit_predict(feature_sets, np.searchsorted(classes, labels), len(classes), sk_tasks, batched)
        identical = [bool(np.array_equal(a, b)) for a, b in zip(same, sk_predictions)]
        metrics.update({"sklearn_sweep_seconds_extrapolated": sk_total,
                        "sklearn_over_batched": sk_total / batched_seconds,
                        "sklearn_probes_compared": len(identical),
                        "sklearn_identical_prediction_probes": int(sum(identical))})
        for n in args.sizes:
            per_n[int(n)]["sklearn_seconds_per_probe"] = float(np.mean(sk_seconds[n]))
    params = {k: (str(v) if isinstance(v, (Path, list)) or v is None else v) for k, v in vars(args).items()
              if k != "out"}
    machine = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "load_average_1min": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"params": params, "machine": machine, "metrics": metrics, "per_n": per_n},
                                   indent=2) + "\n")
    print(json.dumps({"metrics": metrics, "per_n": per_n}, indent=2))
    log_to_mlflow(params, metrics)


if __name__ == "__main__":
    main()
