"""Stage `report`: headline metrics, figures and the report; prints where everything is."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import mlflow

from nanomorph.config import Config
from nanomorph.report.build import write_report
from nanomorph.stages._common import stage_main, tracked
from nanomorph.tracking.runs import log_parent_metrics


def run_report(cfg: Config, _args: argparse.Namespace) -> None:
    with tracked(cfg, "report", ("report",)) as run:
        paths = write_report(Path("metrics"), Path(cfg.report.dir), cfg.profile, cfg.report.probe_report_n,
                             data_source=cfg.data.source,
                             pretraining=(tuple(cfg.pretrain.methods), cfg.pretrain.images))
        for path in paths.values():
            mlflow.log_artifact(str(path), artifact_path="report")
        headline = json.loads(paths["metrics"].read_text())
        n = headline["probe"]["labels_per_class"]
        # The pipeline's parent run shows the headline, so pipelines (and DVC experiments) compare in one table.
        log_parent_metrics(run, {
            **{f"probe.{m}.median_accuracy.n{n}": v for m, v in headline["probe"]["median_accuracy"].items()},
            **{f"segment.{m}.median_dice.n{headline['segment']['train_images']}": v
               for m, v in headline["segment"]["median_dice"].items()}})
    print(f"\nProbe accuracy at {n} labels/class (median over splits):")
    for name, acc in headline["probe"]["median_accuracy"].items():
        print(f"  {name:>14}: {acc:.3f}")
    print(f"Segmentation dice with {headline['segment']['train_images']} training images (median per image):")
    for name, dice in headline["segment"]["median_dice"].items():
        print(f"  {name:>14}: {dice:.3f}")
    for kind, entry in headline["registry"].items():
        print(f"Registered {kind}: {entry['name']} v{entry['version']} (recommended {entry['recommendation']}), "
              f"evaluation {entry['metric']} {entry['score']:.3f}")
    print(f"\nMetrics: {paths['metrics']}   Report: {paths['html']} (and {paths['markdown']})")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.tracking_uri
    print(f"Browse runs: mlflow ui --backend-store-uri {uri}")


def main(argv: list[str] | None = None) -> int:
    return stage_main("report", run_report, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
