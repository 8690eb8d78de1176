"""Stage `advisor`: does the label-budget advisor (nanomorph.probe.advisor) beat a random choice of images?

For each budget k in `probe.advisor_budgets` and each of `probe.advisor_seeds` split seeds the sweep never
uses (from 10 000 on, held out from anything chosen on the sweep): a probe on the advisor's k images vs probes
on `probe.advisor_random_draws` random draws of k from the same unlabelled pool, paired per seed. Features are
the probe stage's (read from data/features; classical ones recomputed). -> metrics/probe_advisor.csv and
metrics/advisor.json.
"""

from __future__ import annotations

import argparse
import sys

import mlflow
import torch

from nanomorph.config import Config
from nanomorph.errors import ConfigError
from nanomorph.probe.advisor import evaluate_advisor, summarise_advisor
from nanomorph.probe.sweep import solver_settings
from nanomorph.stages._common import finite, on_terminal, stage_main, tracked, write_json
from nanomorph.stages._probe_inputs import feature_sets, probe_data
from nanomorph.tracking.runs import log_defined_metrics

# The advisor is evaluated on split seeds the sweep never uses (held out from anything tuned on the sweep).
ADVISOR_SEED_OFFSET = 10_000


def run_advisor(cfg: Config, _args: argparse.Namespace) -> None:
    pr = cfg.probe
    if pr.advisor_seeds < 1 or pr.advisor_random_draws < 1:
        raise ConfigError("probe.advisor_seeds and advisor_random_draws must be >= 1")
    data = probe_data(cfg)
    with tracked(cfg, "advisor", ("probe",)):
        sets, _ = feature_sets(cfg, data, extract=False)
        runs = evaluate_advisor(
            sets, data.labels, pr.advisor_budgets,
            list(range(ADVISOR_SEED_OFFSET, ADVISOR_SEED_OFFSET + pr.advisor_seeds)), data.rule, solver_settings(pr),
            random_draws=pr.advisor_random_draws, progress=on_terminal(), kmeans_restarts=pr.advisor_kmeans_restarts)
        summary = summarise_advisor(runs)
        summary.to_csv("metrics/probe_advisor.csv", index=False)
        payload: dict[str, dict] = {}
        for r in summary.itertuples():
            payload.setdefault(r.encoder, {})[f"k{r.k}"] = finite(
                {"advisor": r.advisor_accuracy, "random": r.random_accuracy, "wilcoxon_p": r.wilcoxon_p})
        write_json("metrics/advisor.json", payload)
        metrics = {f"{r.encoder}.advisor_minus_random.k{r.k}": r.advisor_minus_random for r in summary.itertuples()}
        log_defined_metrics(metrics)
        mlflow.log_artifact("metrics/probe_advisor.csv")
        mlflow.log_artifact("metrics/advisor.json")
    print(f"advisor: {len(summary)} (encoder, k) pairs over {pr.advisor_seeds} held-out split seeds; advisor beat "
          f"random (mean accuracy) in {int((summary['advisor_minus_random'] > 0).sum())}")


def main(argv: list[str] | None = None) -> int:
    torch.set_grad_enabled(False)
    return stage_main("advisor", run_advisor, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
