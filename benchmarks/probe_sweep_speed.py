"""How much faster is the batched probe solver than scikit-learn, one fit per probe, on the same sweep?

Times, in one process, the full label-budget sweep -- every (labels per class n) x (split seed) x (encoder seed)
linear probe -- with
  batched  all probes of the sweep (`solver: batched`: the exact L2 softmax optimum in float64 by Newton's
           method in the dual form, compiled, `nanomorph.probe.batched`), end to end through `probe_sweep`, the
           median of `--repeats` runs, after one untimed call that compiles or loads the kernels
           (`batched_first_call_seconds`);
  sklearn  one scikit-learn LogisticRegression per probe (`solver: sklearn`: the same objective, C and tol),
           every probe of the sweep by default; `--sklearn-probes-per-n k` times k probes per n instead and
           extrapolates per probe (the JSON says which);
  paper    (`--paper-probes-per-n`, 0 skips it) the paper's per-probe training (torch linear softmax, Adam
           lr 1e-3, batch 4, 300 epochs), timed on a few probes per n and extrapolated: its cost is a fixed
           number of Adam steps per probe, so the seconds of a probe depend on n only;
checks that the batched and scikit-learn probes predict every test image identically, and reports the ratios
with the machine's load average. torch, BLAS and OpenMP run on `--threads` threads (default 1) for the whole
process; the batched solver caps its own BLAS at one thread whatever `--threads` is. (Before the caps covered
BLAS and OpenMP, scikit-learn ran on two threads beside other jobs and took ~5x longer per probe: the 104 s
once reported for it.) Features are random 512-d, non-negative and weakly class-informative (one matrix per
encoder seed), 400 images in 4 classes, unless `--features-dir` points at the probe stage's feature cache
(data/features), whose entries then stand for the encoder seeds.

    python benchmarks/probe_sweep_speed.py                      # 700 probes, every one through scikit-learn
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
from threadpoolctl import threadpool_limits

from _tracking import benchmark_run
from nanomorph.probe.batched import ProbeTask, solve_probes
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


def sweep_tasks(feature_sets, labels, sizes, split_seeds, test_fraction) -> dict[int, list[ProbeTask]]:
    """Every probe of the sweep, by n, in `probe_sweep`'s order (feature set, then split seed)."""
    tasks: dict[int, list[ProbeTask]] = {n: [] for n in sizes}
    runs = list(label_budget_runs(labels, sizes, split_seeds, test_fraction))
    for key in feature_sets:
        for seed, n, fit_idx, test_idx in runs:
            tasks[n].append(ProbeTask(key, fit_idx, test_idx, seed))
    return tasks


def spread(count: int, k: int | None) -> list[int]:
    """Positions of k of `count` tasks, evenly spread (so over split seeds and feature sets); all when k is None."""
    if k is None or k >= count:
        return list(range(count))
    return [int(i) for i in np.linspace(0, count - 1, k).round()]


def per_probe(feature_sets, codes, n_classes, tasks, settings) -> tuple[list[float], list[np.ndarray]]:
    """Seconds and predicted codes of each task fitted on its own."""
    seconds, predictions = [], []
    for task in tasks:
        started = time.perf_counter()
        (pred,) = fit_predict(feature_sets, codes, n_classes, [task], settings)
        seconds.append(time.perf_counter() - started)
        predictions.append(pred)
    return seconds, predictions


def log_to_mlflow(params: dict, metrics: dict) -> None:
    with benchmark_run("probe_sweep_speed") as mlflow:
        mlflow.log_params(params)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})


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
    parser.add_argument("--repeats", type=int, default=3, help="batched sweeps timed (the median is reported)")
    parser.add_argument("--sklearn-probes-per-n", type=int, default=None,
                        help="time only this many scikit-learn probes per n and extrapolate (default: every probe; "
                             "0 skips the reference)")
    parser.add_argument("--paper-probes-per-n", type=int, default=2, help="0 skips the paper's probe")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--features-dir", type=Path, default=None,
                        help="use the probe stage's cached features (index.json) instead of random ones")
    parser.add_argument("--manifest", type=Path, default=Path("data/validated/manifest.csv"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/probe_sweep_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # BLAS and OpenMP (scikit-learn's loss) for the whole process

    if args.features_dir is None:
        feature_sets, labels = random_feature_sets(args.images, args.dim, args.encoder_seeds)
    else:
        feature_sets, labels = cached_feature_sets(args.features_dir, args.manifest)
    classes = np.unique(labels)
    codes = np.searchsorted(classes, labels)
    split_seeds = list(range(args.splits))
    tasks = sweep_tasks(feature_sets, labels, args.sizes, split_seeds, args.test_fraction)
    n_probes = sum(len(t) for t in tasks.values())
    load = {"load_average_1min_start": os.getloadavg()[0]}

    batched = SolverSettings(solver="batched", C=args.C, tol=args.tol)
    # The solver's compiled kernels: compiled on a fresh environment's first call (~15 s), loaded from numba's
    # cache after that. Timed apart, on one small probe, so that the sweeps below time the solving alone.
    started = time.perf_counter()
    solve_probes(feature_sets, codes, len(classes), tasks[args.sizes[0]][:1], C=args.C, tol=args.tol)
    first_call_seconds = time.perf_counter() - started
    runs = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        sweep = probe_sweep(feature_sets, labels, args.sizes, split_seeds, args.test_fraction, batched,
                            classifiers=("linear",))
        runs.append(time.perf_counter() - started)
    batched_seconds = float(np.median(runs))
    load["load_average_1min_after_batched"] = os.getloadavg()[0]
    medians = sweep.table.groupby("n")["accuracy"].median()
    # The same probes once more, for their predictions and the optimiser's diagnostics (untimed).
    every = [(n, j) for n in args.sizes for j in range(len(tasks[n]))]
    solved = solve_probes(feature_sets, codes, len(classes), [tasks[n][j] for n, j in every], C=args.C, tol=args.tol)
    ours = dict(zip(every, solved.predictions))
    metrics = {"probes": n_probes, "batched_sweep_seconds": batched_seconds,
               "batched_sweep_seconds_min": float(min(runs)), "batched_sweep_seconds_max": float(max(runs)),
               "batched_seconds_per_probe": batched_seconds / n_probes,
               "batched_all_converged": bool(solved.converged.all()),
               "batched_max_grad_norm": float(solved.grad_norm.max()),
               "batched_max_newton_steps": int(solved.n_iter.max()),
               "batched_first_call_seconds": first_call_seconds}
    steps = {(n, j): (solved.n_iter[k], solved.cg_steps[k]) for k, (n, j) in enumerate(every)}
    per_n = {int(n): {"probes": len(tasks[n]), "batched_median_accuracy": float(medians[n]),
                      "batched_median_newton_steps": float(np.median([steps[(n, j)][0] for j in range(len(tasks[n]))])),
                      "batched_median_cg_steps": float(np.median([steps[(n, j)][1] for j in range(len(tasks[n]))]))}
             for n in args.sizes}

    if args.sklearn_probes_per_n != 0:
        settings = SolverSettings(solver="sklearn", C=args.C, tol=args.tol)
        total, timed, identical, same_accuracy = 0.0, 0, 0, 0
        for n in args.sizes:
            chosen = spread(len(tasks[n]), args.sklearn_probes_per_n)
            seconds, predictions = per_probe(feature_sets, codes, len(classes), [tasks[n][j] for j in chosen], settings)
            total += float(np.mean(seconds)) * len(tasks[n])  # = sum(seconds) when every probe is timed
            timed += len(chosen)
            for j, pred in zip(chosen, predictions):
                mine, truth = ours[(n, j)], codes[tasks[n][j].predict_idx]
                identical += bool(np.array_equal(mine, pred))
                same_accuracy += bool((mine == truth).mean() == (pred == truth).mean())
            per_n[int(n)]["sklearn_seconds_per_probe"] = float(np.mean(seconds))
            per_n[int(n)]["sklearn_probes_timed"] = len(chosen)
        load["load_average_1min_after_sklearn"] = os.getloadavg()[0]
        extrapolated = timed < n_probes
        metrics.update({"sklearn_sweep_seconds" + ("_extrapolated" if extrapolated else ""): total,
                        "sklearn_over_batched": total / batched_seconds,
                        "sklearn_timing": (f"extrapolated per probe from {timed} of {n_probes} probes" if extrapolated
                                           else f"measured: every one of the {n_probes} probes, one fit each"),
                        "sklearn_probes_compared": timed,
                        "sklearn_identical_prediction_probes": identical,
                        "sklearn_equal_accuracy_probes": same_accuracy})

    if args.paper_probes_per_n > 0:
        paper_total, paper_timed = 0.0, 0
        for n in args.sizes:
            chosen = [tasks[n][j] for j in spread(len(tasks[n]), args.paper_probes_per_n)]
            seconds, predictions = per_probe(feature_sets, codes, len(classes), chosen, SolverSettings(solver="paper"))
            paper_total += float(np.mean(seconds)) * len(tasks[n])
            paper_timed += len(chosen)
            per_n[int(n)]["paper_seconds_per_probe"] = float(np.mean(seconds))
            per_n[int(n)]["paper_accuracy_of_timed_probes"] = [float((p == codes[t.predict_idx]).mean())
                                                               for t, p in zip(chosen, predictions)]
        metrics.update({"paper_sweep_seconds_extrapolated": paper_total, "paper_probes_timed": paper_timed,
                        "paper_over_batched": paper_total / batched_seconds})

    params = {k: (str(v) if isinstance(v, (Path, list)) or v is None else v) for k, v in vars(args).items()
              if k != "out"}
    machine = {"torch": torch.__version__, "threads": args.threads,
               "threads_capped": "torch, BLAS and OpenMP (threadpoolctl); the batched solver's BLAS at 1",
               "cpus": os.cpu_count(),
               "python": platform.python_version(), **load}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"params": params, "machine": machine, "metrics": metrics, "per_n": per_n},
                                   indent=2) + "\n")
    print(json.dumps({"machine": machine, "metrics": metrics}, indent=2))
    log_to_mlflow(params, {**metrics, **load})


if __name__ == "__main__":
    main()
