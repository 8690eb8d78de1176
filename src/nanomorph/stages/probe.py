"""Stage `probe`: few-shot linear-probe sweep on frozen features of every encoder (paper Fig. 2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from nanomorph.config import Config
from nanomorph.data.io import load_image_stack
from nanomorph.data.validation import accepted
from nanomorph.errors import NanomorphError
from nanomorph.models.encoder import ResNetEncoder, load_encoder, random_encoder
from nanomorph.probe.features import extract_features
from nanomorph.probe.sweep import label_budget_sweep
from nanomorph.stages._common import stage_main, tracked, write_json


def resolve_encoder(name: str, arch: str, seed: int) -> ResNetEncoder:
    """`random` is the random-init baseline; any other name is a pretrained encoder under models/encoders/."""
    if name == "random":
        return random_encoder(arch, seed)
    path = Path("models/encoders") / f"{name}.pt"
    if not path.is_file():
        raise NanomorphError(f"{path}: no pretrained encoder '{name}'; run the pretrain stage for it first")
    encoder, _meta = load_encoder(path)
    return encoder


def nanowire_images(cfg: Config, size: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rows = accepted(cfg.validate.manifest, "nanowire")
    if rows.empty:
        raise NanomorphError(f"{cfg.validate.manifest}: no usable nanowire images")
    images = load_image_stack([Path(p) for p in rows["path"]], size)
    return images, rows["label"].to_numpy(dtype=str), rows


def run_probe(cfg: Config, _args: argparse.Namespace) -> None:
    pr, pt = cfg.probe, cfg.pretrain
    images, labels, _ = nanowire_images(cfg, pt.image_size)
    feature_dir = Path("data/features")
    feature_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    with tracked(cfg, "probe", ("probe",)):
        mlflow.log_params({"arch": pt.arch, "image_size": pt.image_size, "n_images": len(images)})
        for name in pr.encoders:
            encoder = resolve_encoder(name, pt.arch, pt.seed)
            features = extract_features(encoder, images, batch_size=64)
            np.save(feature_dir / f"{name}.npy", features)
            table = label_budget_sweep(
                features, labels, sizes=pr.labels_per_class, split_seeds=list(range(pr.split_seeds)),
                test_fraction=pr.test_fraction, C=pr.C, max_iter=pr.max_iter,
            )
            table.insert(0, "encoder", name)
            tables.append(table)
        results = pd.concat(tables, ignore_index=True)
        results.to_csv("metrics/probe_results.csv", index=False)
        summary = results.groupby(["n", "encoder"])["accuracy"].median().unstack("encoder").reset_index()
        summary.to_csv("metrics/probe_summary.csv", index=False)
        medians = {name: {f"n{int(n)}": float(acc) for n, acc in results[results["encoder"] == name]
                          .groupby("n")["accuracy"].median().items()} for name in pr.encoders}
        write_json("metrics/probe.json", {"median_accuracy": medians})
        for name, per_n in medians.items():
            mlflow.log_metrics({f"{name}.median_acc.{k}": v for k, v in per_n.items()})
        mlflow.log_artifact("metrics/probe_results.csv")


def main(argv: list[str] | None = None) -> int:
    torch.set_grad_enabled(False)
    return stage_main("probe", run_probe, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
