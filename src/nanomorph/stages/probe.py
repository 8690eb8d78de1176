"""Stage `probe`: few-shot classification on frozen features of every encoder (paper Fig. 2).

1. Features of every encoder from the content-keyed cache in data/features (extracted on a miss).
2. The label-budget sweep: every linear probe (labels per class x split seeds x encoders) fitted together by
   the configured solver, plus the k-NN baseline on the same features -> metrics/probe_results.csv (tidy)
   and metrics/probe_summary.csv (median accuracy per n and method).
3. Paired two-sided Wilcoxon signed-rank tests over the shared split seeds between every pair of methods at
   every n, Holm-corrected over the table -> metrics/probe_stats.csv; the headline family (every pretrained
   encoder vs the classical and the random-init baseline at n <= 8) Holm-corrected on its own -> probe.json.
4. Figures -> figures/probe/; headline numbers -> metrics/probe.json; everything logged to MLflow.

The anchor study and the label-budget advisor are stages of their own (stages/anchors.py, stages/advisor.py)
that read the features this stage caches, so changing their settings re-runs neither the extraction nor the
sweep.

Encoders: pretrained ones from models/encoders/, `random` (random-init baseline of the same architecture) and
`classical` (hand-crafted features, nanomorph.probe.classical), all at `probe.feature_size` px; learned features
are the pooled `probe.feature_stages` of the ResNet.

Encoder seeds: the pipeline pretrains one encoder per method (seed `pretrain.seed`); the random-init baseline
uses the same seed. The tables carry `encoder_seed` so sweeps over several pretraining seeds concatenate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from nanomorph.config import Config
from nanomorph.errors import ConfigError
from nanomorph.plotting.probe import accuracy_boxplot, confusion_grid, tsne_embedding, tsne_figure
from nanomorph.probe.batched import ProbeTask
from nanomorph.probe.cache import FeatureCache
from nanomorph.probe.classical import NAME as CLASSICAL
from nanomorph.probe.solvers import SOLVERS, SolverSettings, fit_predict
from nanomorph.probe.splits import SplitRule
from nanomorph.probe.stats import holm, pairwise_wilcoxon
from nanomorph.probe.sweep import label_budget_runs, probe_sweep, solver_settings, sweep_arguments
from nanomorph.stages._common import finite, on_terminal, stage_main, tracked, write_json
from nanomorph.stages._probe_inputs import FEATURE_DIR, feature_sets, probe_data
from nanomorph.tracking.runs import log_curve, log_defined_metrics

FIGURE_DIR = Path("figures/probe")
BASELINES = ("random", CLASSICAL)   # what every pretrained encoder is compared with
HEADLINE_MAX_N = 8                  # the few-label budgets of the headline tests


def check_params(cfg: Config) -> None:
    pr = cfg.probe
    if pr.solver not in SOLVERS:
        raise ConfigError(f"probe.solver: unknown solver '{pr.solver}' (choose from {', '.join(SOLVERS)})")
    if pr.figure_n not in pr.labels_per_class:
        raise ConfigError(f"probe.figure_n = {pr.figure_n} is not one of probe.labels_per_class "
                          f"{list(pr.labels_per_class)} (profile '{cfg.profile}')")
    if pr.split_seeds < 1:
        raise ConfigError("probe.split_seeds must be >= 1")


def tsne_figures(feature_sets: dict, labels: np.ndarray, cfg: Config, settings: SolverSettings,
                 rule: SplitRule) -> list[Path]:
    """Per encoder: t-SNE of its features coloured by true class and by the class predicted by the linear
    probe trained at figure_n labels/class on split seed 0 (the sweep's own probe)."""
    pr = cfg.probe
    classes = np.unique(labels)
    codes = np.searchsorted(classes, labels)
    (_seed, _n, fit_idx, _test), = label_budget_runs(labels, [pr.figure_n], [0], rule)
    every = np.arange(len(labels))
    keys = list(feature_sets)
    predicted = fit_predict(feature_sets, codes, len(classes), [ProbeTask(k, fit_idx, every, 0) for k in keys],
                            settings)
    paths = []
    for key, pred in zip(keys, predicted):
        embedding = tsne_embedding(feature_sets[key], seed=cfg.pretrain.seed, perplexity=pr.tsne_perplexity)
        accuracy = float((pred == codes).mean())
        paths.append(tsne_figure(
            embedding, labels, classes[pred], fit_idx, list(classes),
            f"t-SNE of {key[0]} features (seed {key[1]}); probe at n={pr.figure_n}/class, split 0 "
            f"(accuracy on all images {accuracy:.2f})", FIGURE_DIR / f"tsne_{key[0]}.png"))
    return paths


def headline_family(linear: pd.DataFrame, encoders: tuple[str, ...]) -> pd.DataFrame:
    """Paired tests of every pretrained encoder against every baseline at n <= HEADLINE_MAX_N (linear probes),
    with `p_holm_family`: Holm over exactly these tests."""
    pretrained = [e for e in encoders if e not in BASELINES]
    pairs = [(e, b) for e in pretrained for b in BASELINES if b in encoders]
    few = linear[linear["n"] <= HEADLINE_MAX_N]
    tests = pairwise_wilcoxon(few, pairs=pairs) if pairs and not few.empty else pd.DataFrame(
        columns=["n", "method_a", "method_b", "median_difference", "p", "p_holm"])
    tests["p_holm_family"] = holm(tests["p"].to_numpy()) if len(tests) else []
    return tests


def run_probe(cfg: Config, _args: argparse.Namespace) -> None:
    pr, pt = cfg.probe, cfg.pretrain
    check_params(cfg)
    data = probe_data(cfg)
    rows, labels, rule = data.rows, data.labels, data.rule
    classes = tuple(np.unique(labels))
    settings = solver_settings(pr)
    # The stage owns figures/probe: figures of encoders no longer configured must not linger there.
    for stale in FIGURE_DIR.glob("*.png"):
        stale.unlink()
    with tracked(cfg, "probe", ("probe",)):
        mlflow.log_params({"arch": pt.arch, "image_size": pt.image_size, "n_images": len(rows),
                           "encoder_seeds": str([pt.seed])})
        sets, entries = feature_sets(cfg, data, extract=True, progress=on_terminal())
        FeatureCache(FEATURE_DIR).write_index(entries)
        hits = sum(e.hit for e in entries)
        print(f"feature cache: {hits} of {len(entries)} encoders reused from {FEATURE_DIR}/")

        started = time.perf_counter()
        # sweep_arguments: the section -> keywords mapping nanomorph.api.probe_sweep shares
        sweep = probe_sweep(sets, labels, test_fraction=rule, **sweep_arguments(pr), progress=on_terminal())
        sweep_seconds = time.perf_counter() - started
        results = sweep.table
        n_linear = int((results["classifier"] == "linear").sum())
        print(f"probe sweep: {n_linear} linear probes ({pr.solver}) + {len(results) - n_linear} k-NN in "
              f"{sweep_seconds:.1f} s")
        results.to_csv("metrics/probe_results.csv", index=False)
        methods = list(dict.fromkeys(results["encoder"]))
        medians = results.groupby(["n", "encoder"])["accuracy"].median().unstack("encoder")
        medians[methods].reset_index().to_csv("metrics/probe_summary.csv", index=False)

        linear = results[results["classifier"] == "linear"]
        stats = pairwise_wilcoxon(results)
        stats.to_csv("metrics/probe_stats.csv", index=False)
        headline_tests = headline_family(linear, pr.encoders)

        figures = [accuracy_boxplot(results, FIGURE_DIR / "accuracy_vs_labels.png")]
        confusions = {m: sweep.pooled_confusion(m, pr.figure_n, classes, labels) for m in methods}
        figures.append(confusion_grid(confusions, classes, pr.figure_n, FIGURE_DIR / f"confusion_n{pr.figure_n}.png"))
        figures += tsne_figures(sets, labels, cfg, settings, rule)

        per_n = {m: {f"n{int(n)}": float(a) for n, a in results[results["encoder"] == m].groupby("n")["accuracy"]
                     .median().items()} for m in methods}
        at_figure_n = stats[stats["n"] == pr.figure_n]
        # Only results a rerun reproduces: the sweep's wall-clock time and the cache hits depend on the machine
        # and on what ran before, so they go to MLflow (below), not into this dvc output.
        payload = {
            # Linear-probe medians per encoder (the paper's protocol); baselines such as k-NN under `baselines`.
            "median_accuracy": {m: per_n[m] for m in dict.fromkeys(linear["encoder"])},
            "baselines": {m: per_n[m] for m in methods if m not in set(linear["encoder"])},
            "solver": pr.solver,
            "split": "given by the data (train/test as listed)" if rule.given is not None else
                     f"seeded stratified {1 - pr.test_fraction:.0%}/{pr.test_fraction:.0%} per split seed",
            "probes": {"linear": n_linear, "knn": int(len(results) - n_linear)},
            "wilcoxon": {f"n{pr.figure_n}": {f"{r.method_a}_vs_{r.method_b}": {"W": r.W, "p": r.p,
                                                                               "p_holm": r.p_holm}
                                             for r in at_figure_n.itertuples()}},
            # Every pretrained encoder vs each baseline at n <= 8, paired over split seeds, Holm over this family.
            "headline_tests": [{"n": int(r.n), "method": r.method_a, "baseline": r.method_b,
                                "median_difference": r.median_difference, "p": r.p, "p_holm": r.p_holm_family}
                               for r in headline_tests.itertuples()],
        }
        write_json("metrics/probe.json", finite(payload))

        # MLflow metric names allow no '+': `simclr+knn` is logged as `simclr-knn`.
        metrics = {f"{m.replace('+', '-')}.median_acc.{k}": v for m, ks in per_n.items() for k, v in ks.items()}
        metrics["sweep_seconds"] = sweep_seconds
        metrics["feature_cache_reused"] = hits
        metrics["feature_cache_extracted"] = len(entries) - hits
        log_defined_metrics(metrics)
        for method, by_n in per_n.items():  # accuracy-vs-labels curves in the MLflow UI (step = labels per class)
            log_curve(f"{method.replace('+', '-')}.median_accuracy", {int(k[1:]): v for k, v in by_n.items()})
        for path in ("metrics/probe_results.csv", "metrics/probe_summary.csv", "metrics/probe_stats.csv",
                     "metrics/probe.json"):
            mlflow.log_artifact(path)
        for path in figures:
            mlflow.log_artifact(str(path), artifact_path="figures/probe")


def main(argv: list[str] | None = None) -> int:
    torch.set_grad_enabled(False)
    return stage_main("probe", run_probe, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
