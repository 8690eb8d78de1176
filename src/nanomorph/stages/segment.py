"""Stage `segment`: few-shot U-Net sweep with transferred, frozen encoders; per-image dice and IoU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow

from nanomorph.config import Config
from nanomorph.data.io import load_image_stack, load_mask_stack
from nanomorph.data.validation import accepted
from nanomorph.errors import NanomorphError
from nanomorph.segment.sweep import segmentation_sweep
from nanomorph.stages._common import best_device, stage_main, tracked, write_json
from nanomorph.stages.probe import resolve_encoder


def run_segment(cfg: Config, _args: argparse.Namespace) -> None:
    sg, pt = cfg.segment, cfg.pretrain
    rows = accepted(cfg.validate.manifest, "nanowire")
    rows = rows[rows["mask_path"].notna()].reset_index(drop=True)
    if rows.empty:
        raise NanomorphError(f"{cfg.validate.manifest}: no nanowire images with masks to segment")
    images = load_image_stack([Path(p) for p in rows["path"]], sg.image_size)
    masks = load_mask_stack([Path(p) for p in rows["mask_path"]], sg.image_size)
    states = {name: resolve_encoder(name, pt.arch, pt.seed).resnet_state_dict() for name in sg.encoders}
    with tracked(cfg, "segment", ("segment",)):
        mlflow.log_params({"arch": pt.arch, "n_images": len(images)})
        results = segmentation_sweep(
            images, masks, states, arch=pt.arch, train_sizes=sg.train_sizes, epochs_for=sg.epochs_for,
            seeds=[sg.seed + k for k in range(sg.seeds)], test_fraction=sg.test_fraction, lr=sg.lr,
            batch_size=sg.batch_size, freeze_encoder=sg.freeze_encoder, strata=rows["label"].to_numpy(dtype=str), device=best_device(),
        )
        results["image"] = rows["path"].to_numpy()[results["image_index"].to_numpy()]
        results.to_csv("metrics/segment_results.csv", index=False)
        grouped = results.groupby(["n", "encoder"])
        summary = grouped["dice"].median().unstack("encoder").reset_index()
        summary.to_csv("metrics/segment_summary.csv", index=False)
        metrics = {
            name: {f"n{int(n)}": {"dice": float(g["dice"].median()), "iou": float(g["iou"].median())}
                   for n, g in results[results["encoder"] == name].groupby("n")}
            for name in sg.encoders
        }
        write_json("metrics/segment.json", {"median": metrics})
        for name, per_n in metrics.items():
            for n, values in per_n.items():
                mlflow.log_metrics({f"{name}.{k}.{n}": v for k, v in values.items()})
        mlflow.log_artifact("metrics/segment_results.csv")


def main(argv: list[str] | None = None) -> int:
    return stage_main("segment", run_segment, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
