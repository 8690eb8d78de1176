"""Stage `probe`: few-shot classification on frozen features of every encoder (paper Fig. 2) and its analyses.

1. Features of every encoder from the content-keyed cache in data/features (extracted on a miss).
2. The label-budget sweep: every linear probe (labels per class x split seeds x encoders) fitted together by
   the configured solver, plus the k-NN baseline on the same features -> metrics/probe_results.csv (tidy)
   and metrics/probe_summary.csv (median accuracy per n and method).
3. Paired two-sided Wilcoxon signed-rank tests over the shared split seeds between every pair of methods at
   every n, Holm-corrected over the table -> metrics/probe_stats.csv; the headline family (every pretrained
   encoder vs the classical and the random-init baseline at n <= 8) Holm-corrected on its own -> probe.json.
4. Anchor study of one-shot probes (typicality, dispersed/network anchor density) -> metrics/probe_anchor.csv.
5. Label-budget advisor vs random choice on held-out split seeds -> metrics/probe_advisor.csv.
6. Figures -> figures/probe/; headline numbers -> metrics/probe.json; everything logged to MLflow.

Encoders: pretrained ones from models/encoders/, `random` (random-init baseline of the same architecture) and
`classical` (hand-crafted features, nanomorph.probe.classical), all at `probe.feature_size` px; learned features
are the pooled `probe.feature_stages` of the ResNet.

Encoder seeds: the pipeline pretrains one encoder per method (seed `pretrain.seed`); the random-init baseline
uses the same seed. The tables carry `encoder_seed` so sweeps over several pretraining seeds concatenate.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from nanomorph.analysis.density import pixel_density
from nanomorph.config import Config
from nanomorph.data.io import load_image_stack, read_mask
from nanomorph.data.validation import accepted
from nanomorph.errors import ConfigError, NanomorphError
from nanomorph.models.encoder import resolve_encoder
from nanomorph.probe.advisor import evaluate_advisor, summarise_advisor
from nanomorph.probe.anchors import anchor_study, summarise_anchors
from nanomorph.probe.batched import ProbeTask
from nanomorph.probe.cache import FeatureCache, image_set_fingerprint
from nanomorph.probe.solvers import SOLVERS, SolverSettings, fit_predict
from nanomorph.probe.splits import SplitRule, split_rule
from nanomorph.probe.classical import NAME as CLASSICAL
from nanomorph.probe.classical import classical_features
from nanomorph.probe.stats import holm, pairwise_wilcoxon
from nanomorph.probe.sweep import label_budget_runs, probe_sweep, solver_settings, sweep_arguments
from nanomorph.report.probe_figures import accuracy_boxplot, confusion_grid, tsne_embedding, tsne_figure
from nanomorph.stages._common import best_device, stage_main, tracked, write_json, on_terminal
from nanomorph.tracking.runs import log_curve

FEATURE_DIR = Path("data/features")
FIGURE_DIR = Path("figures/probe")
# The advisor is evaluated on split seeds the sweep never uses (held out from anything tuned on the sweep).
ADVISOR_SEED_OFFSET = 10_000
SPARSE_CLASS, DENSE_CLASS = "dispersed", "network"
BASELINES = ("random", CLASSICAL)   # what every pretrained encoder is compared with
HEADLINE_MAX_N = 8                  # the few-label budgets of the headline tests


def check_params(cfg: Config) -> None:
    pr = cfg.probe
    if pr.solver not in SOLVERS:
        raise ConfigError(f"probe.solver: unknown solver '{pr.solver}' (choose from {', '.join(SOLVERS)})")
    if pr.figure_n not in pr.labels_per_class:
        raise ConfigError(f"probe.figure_n = {pr.figure_n} is not one of probe.labels_per_class "
                          f"{list(pr.labels_per_class)} (profile '{cfg.profile}')")
    if pr.anchor_probes < 1 or pr.advisor_seeds < 1 or pr.advisor_random_draws < 1 or pr.split_seeds < 1:
        raise ConfigError("probe.split_seeds, anchor_probes, advisor_seeds and advisor_random_draws must be >= 1")


def wire_densities(rows: pd.DataFrame, classes: tuple[str, ...]) -> np.ndarray:
    """Pixel density of the true mask of every image of `classes` (NaN elsewhere: not needed)."""
    densities = np.full(len(rows), np.nan)
    for i, (label, mask_path) in enumerate(zip(rows["label"], rows["mask_path"])):
        if label not in classes:
            continue
        if not isinstance(mask_path, str) or not mask_path:
            raise NanomorphError(f"{rows['path'].iloc[i]}: a {label} image without a mask; the anchor study "
                                 "needs the true mask of every dispersed and network image")
        densities[i] = pixel_density(read_mask(mask_path))
    return densities


def _finite(value: Any) -> Any:
    """JSON-safe: NaN/inf (an undefined test) become null; containers recursively."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


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
    rows = accepted(cfg.validate.manifest, "nanowire")
    if rows.empty:
        raise NanomorphError(f"{cfg.validate.manifest}: no usable nanowire images")
    labels = rows["label"].to_numpy(dtype=str)
    classes = tuple(np.unique(labels))
    rule = split_rule(rows, pr.test_fraction, cfg.validate.manifest)
    settings = solver_settings(pr)
    load_images = functools.cache(lambda: load_image_stack([Path(p) for p in rows["path"]], pr.feature_size))
    cache = FeatureCache(FEATURE_DIR)
    image_set = image_set_fingerprint(rows["sha256"].astype(str).tolist())
    device = best_device()
    # The stage owns figures/probe: figures of encoders no longer configured must not linger there.
    for stale in FIGURE_DIR.glob("*.png"):
        stale.unlink()
    with tracked(cfg, "probe", ("probe",)):
        mlflow.log_params({"arch": pt.arch, "image_size": pt.image_size, "n_images": len(rows),
                           "encoder_seeds": str([pt.seed])})
        feature_sets: dict[tuple[str, int], np.ndarray] = {}
        entries = []
        for name in pr.encoders:
            if name == CLASSICAL:
                # Hand-crafted features cost seconds: computed every run, not cached.
                feature_sets[(name, pt.seed)] = classical_features(load_images(), min_size=cfg.segment.object_min_size)
                continue
            encoder = resolve_encoder(name, pt.arch, pt.seed)
            with torch.no_grad():
                features, entry = cache.get_or_extract(name, pt.seed, encoder, pr.feature_size, image_set, len(rows),
                                                       load_images, device=device, progress=on_terminal(),
                                                       stages=pr.feature_stages, dihedral=pr.feature_dihedral)
            feature_sets[(name, pt.seed)] = features
            entries.append(entry)
        cache.write_index(entries)
        hits = sum(e.hit for e in entries)
        print(f"feature cache: {hits} of {len(entries)} encoders reused from {FEATURE_DIR}/")

        started = time.perf_counter()
        # sweep_arguments: the section -> keywords mapping nanomorph.api.probe_sweep shares
        sweep = probe_sweep(feature_sets, labels, test_fraction=rule, **sweep_arguments(pr), progress=on_terminal())
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

        densities = wire_densities(rows, (SPARSE_CLASS, DENSE_CLASS))
        anchors = anchor_study(feature_sets, labels, densities, list(range(pr.anchor_probes)), rule,
                               settings, SPARSE_CLASS, DENSE_CLASS, progress=on_terminal())
        anchors.to_csv("metrics/probe_anchor.csv", index=False)
        anchor_summary = summarise_anchors(anchors)

        advisor_runs = evaluate_advisor(
            feature_sets, labels, pr.advisor_budgets,
            list(range(ADVISOR_SEED_OFFSET, ADVISOR_SEED_OFFSET + pr.advisor_seeds)), rule, settings,
            random_draws=pr.advisor_random_draws, progress=on_terminal(), kmeans_restarts=pr.advisor_kmeans_restarts)
        advisor = summarise_advisor(advisor_runs)
        advisor.to_csv("metrics/probe_advisor.csv", index=False)

        figures = [accuracy_boxplot(results, FIGURE_DIR / "accuracy_vs_labels.png")]
        confusions = {m: sweep.pooled_confusion(m, pr.figure_n, classes, labels) for m in methods}
        figures.append(confusion_grid(confusions, classes, pr.figure_n, FIGURE_DIR / f"confusion_n{pr.figure_n}.png"))
        figures += tsne_figures(feature_sets, labels, cfg, settings, rule)

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
            "anchors": {f"{r.encoder}": {"probes": r.probes, "inverted": r.inverted,
                                         "median_accuracy_inverted": r.median_accuracy_inverted,
                                         "median_accuracy_ordered": r.median_accuracy_ordered,
                                         "mann_whitney_p": r.p, "spearman_rho_atypicality": r.spearman_rho,
                                         "spearman_p": r.spearman_p, "spearman_rho_density_gap": r.gap_spearman_rho,
                                         "spearman_p_density_gap": r.gap_spearman_p}
                        for r in anchor_summary.itertuples()},
            "advisor": {f"{r.encoder}": {} for r in advisor.itertuples()},
        }
        for r in advisor.itertuples():
            payload["advisor"][r.encoder][f"k{r.k}"] = {"advisor": r.advisor_accuracy, "random": r.random_accuracy,
                                                        "wilcoxon_p": r.wilcoxon_p}
        write_json("metrics/probe.json", _finite(payload))

        # MLflow metric names allow no '+': `simclr+knn` is logged as `simclr-knn`.
        metrics = {f"{m.replace('+', '-')}.median_acc.{k}": v for m, ks in per_n.items() for k, v in ks.items()}
        metrics["sweep_seconds"] = sweep_seconds
        metrics["feature_cache_reused"] = hits
        metrics["feature_cache_extracted"] = len(entries) - hits
        for r in anchor_summary.itertuples():
            metrics.update({f"{r.encoder}.anchor_inverted_p": r.p, f"{r.encoder}.anchor_spearman_rho": r.spearman_rho,
                            f"{r.encoder}.anchor_gap_spearman_rho": r.gap_spearman_rho})
        for r in advisor.itertuples():
            metrics[f"{r.encoder}.advisor_minus_random.k{r.k}"] = r.advisor_minus_random
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)})
        for method, by_n in per_n.items():  # accuracy-vs-labels curves in the MLflow UI (step = labels per class)
            log_curve(f"{method.replace('+', '-')}.median_accuracy", {int(k[1:]): v for k, v in by_n.items()})
        for path in ("metrics/probe_results.csv", "metrics/probe_summary.csv", "metrics/probe_stats.csv",
                     "metrics/probe_anchor.csv", "metrics/probe_advisor.csv", "metrics/probe.json"):
            mlflow.log_artifact(path)
        for path in figures:
            mlflow.log_artifact(str(path), artifact_path="figures/probe")


def main(argv: list[str] | None = None) -> int:
    torch.set_grad_enabled(False)
    return stage_main("probe", run_probe, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
