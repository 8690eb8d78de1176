"""Stage `anchors`: the anchor study of one-shot probes (nanomorph.probe.anchors; the paper's anchor analysis).

For the n = 1 probes of the sweep's split seeds 0 .. `probe.anchor_probes`-1: how typical each probe's
anchors are, and whether its dispersed anchor is denser than its network anchor ("inverted"), tested against
the probe's accuracy. Features are the probe stage's (read from data/features; classical ones recomputed),
densities come from the true masks. -> metrics/probe_anchor.csv (one row per probe) and metrics/anchors.json.
"""

from __future__ import annotations

import argparse
import sys

import mlflow
import numpy as np
import pandas as pd
import torch

from nanomorph.analysis.density import pixel_density
from nanomorph.config import Config
from nanomorph.data.io import read_mask
from nanomorph.errors import ConfigError, NanomorphError
from nanomorph.probe.anchors import anchor_study, summarise_anchors
from nanomorph.probe.sweep import solver_settings
from nanomorph.stages._common import finite, on_terminal, stage_main, tracked, write_json
from nanomorph.stages._probe_inputs import feature_sets, probe_data
from nanomorph.tracking.runs import log_defined_metrics

SPARSE_CLASS, DENSE_CLASS = "dispersed", "network"


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


def run_anchors(cfg: Config, _args: argparse.Namespace) -> None:
    pr = cfg.probe
    if pr.anchor_probes < 1:
        raise ConfigError("probe.anchor_probes must be >= 1")
    data = probe_data(cfg)
    with tracked(cfg, "anchors", ("probe",)):
        sets, _ = feature_sets(cfg, data, extract=False)
        densities = wire_densities(data.rows, (SPARSE_CLASS, DENSE_CLASS))
        table = anchor_study(sets, data.labels, densities, list(range(pr.anchor_probes)), data.rule,
                             solver_settings(pr), SPARSE_CLASS, DENSE_CLASS, progress=on_terminal())
        table.to_csv("metrics/probe_anchor.csv", index=False)
        summary = summarise_anchors(table)
        write_json("metrics/anchors.json", {
            r.encoder: finite({"probes": r.probes, "inverted": r.inverted,
                               "median_accuracy_inverted": r.median_accuracy_inverted,
                               "median_accuracy_ordered": r.median_accuracy_ordered,
                               "mann_whitney_p": r.p, "spearman_rho_atypicality": r.spearman_rho,
                               "spearman_p": r.spearman_p, "spearman_rho_density_gap": r.gap_spearman_rho,
                               "spearman_p_density_gap": r.gap_spearman_p})
            for r in summary.itertuples()})
        metrics = {}
        for r in summary.itertuples():
            metrics.update({f"{r.encoder}.anchor_inverted_p": r.p, f"{r.encoder}.anchor_spearman_rho": r.spearman_rho,
                            f"{r.encoder}.anchor_gap_spearman_rho": r.gap_spearman_rho})
        log_defined_metrics(metrics)
        mlflow.log_artifact("metrics/probe_anchor.csv")
        mlflow.log_artifact("metrics/anchors.json")
    print(f"anchors: {pr.anchor_probes} one-shot probes per encoder; inverted "
          + ", ".join(f"{r.encoder} {r.inverted}" for r in summary.itertuples()))


def main(argv: list[str] | None = None) -> int:
    torch.set_grad_enabled(False)
    return stage_main("anchors", run_anchors, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
