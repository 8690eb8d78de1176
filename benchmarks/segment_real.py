"""Few-shot U-Net segmentation of REAL electron micrographs: which frozen encoder transfers best?

Data: EMPS (images/<id>.png, segmaps/<id>.png 16-bit instance maps, mask = segmap > 0, ids from train.csv)
or any folder of images plus a folder of masks paired by file stem (--images DIR --masks DIR). The ids get
ONE seeded train / validation / test split.

Encoders (ResNet, frozen inside the U-Net, as in the pipeline's segment stage):
  real_<method>   pretrained here with SimCLR or Barlow Twins (nanomorph.ssl.train.pretrain) on the
                  TRAINING-split images (unlabelled) plus the CEM500K example images; never on validation or
                  test images;
  random          random init (nanomorph.models.encoder.random_encoder);
  synthetic       the pipeline's encoder pretrained on the synthetic default (models/encoders/simclr.pt),
                  when that file exists with the same architecture.

Classical baselines (--classical, default otsu and local): nanomorph.segment.classical fitted (polarity, window)
on the same training images of every run and scored on the same test images; `paired_tests_vs_classical` holds
the paired Wilcoxon test (over test images, Holm over the listed pairs) of every learned segmenter against each.

Few-shot sweep: nested seeded subsets of the training split, n in --sizes (sizes above the split are skipped).
The U-Net recipe is the pipeline's (params.yaml `segment`, cpu profile, tuned on the synthetic TUNING data, never
on these images): segment.steps optimiser steps per run whatever n on random segment.crop_size windows with D4
augmentation, segment.loss, prediction averaged over the 8 rotations/flips (segment.dihedral) under bf16 where
segment.predict_cpu_bf16; each option can be overridden (--steps 0: the paper's epochs for n x --epoch-scale).
The validation split picks each model's probability threshold (grid 0.1..0.9, best median validation dice);
dice/IoU are then measured on every test image. Nothing is chosen on test images. Images are resized to
--resolution (128, the cpu profile's segment.image_size); the real encoder is pretrained with the pipeline's
pretraining settings (views, bf16) for --ssl-epochs 30 on 64 px views of 128 px images. About 15 minutes on
2 cores. With a GPU use e.g. --resolution 256 --ssl-epochs 200.

    python benchmarks/segment_real.py                      # EMPS at ../shared/data/emps
    python benchmarks/segment_real.py --images DIR --masks DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _tracking import benchmark_run
from nanomorph.config import load_config
from nanomorph.data.io import load_image_stack
from nanomorph.models.encoder import load_encoder, random_encoder
from nanomorph.probe.splits import nested_subsets
from real_pairs import IMAGE_SUFFIXES, emps_pairs, folder_pairs, load_pairs, split_three_ways
from nanomorph.probe.stats import pairwise_wilcoxon
from nanomorph.segment.classical import CLASSICAL_SEGMENTERS, fit_classical
from nanomorph.segment.metrics import dice_iou
from nanomorph.segment.sweep import seeded_unet
from nanomorph.segment.train import predict_probabilities, train_segmenter
from nanomorph.ssl.train import pretrain

THRESHOLDS = np.round(np.arange(0.1, 0.91, 0.1), 2)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def select_pairs(args: argparse.Namespace):
    if (args.images is None) != (args.masks is None):
        sys.exit("--images and --masks go together")
    if args.images is not None:
        return folder_pairs(args.images, args.masks), f"folder images={args.images} masks={args.masks}"
    return emps_pairs(args.data, args.ids_file), f"emps {args.data}"


def generic_image_paths(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def pretrain_real_encoder(args, cfg, train_paths: list[Path]) -> tuple[dict, dict]:
    """SSL encoder on the training-split images plus the generic EM images; (resnet state, info)."""
    generic = generic_image_paths(args.generic_dir)
    images = load_image_stack(train_paths + generic, args.ssl_source_size)
    pt = cfg.pretrain
    started = time.perf_counter()
    history = []

    def record(metrics: dict, step: int) -> None:
        if "epoch/loss" in metrics:  # once per epoch (the per-step calls carry "loss")
            history.append(metrics)
            log(f"  pretrain epoch {len(history)}/{args.ssl_epochs}: loss {metrics['epoch/loss']:.3f}")

    result = pretrain(
        images, method=args.ssl_method, arch=args.arch, image_size=args.ssl_image_size,
        batch_size=args.ssl_batch_size, epochs=args.ssl_epochs, lr=args.ssl_lr, momentum=pt.momentum,
        weight_decay=pt.weight_decay, warmup_epochs=min(pt.warmup_epochs, max(args.ssl_epochs - 1, 0)),
        optimizer="adamw", temperature=pt.temperature, lambd=pt.lambd, projector_dims=pt.projector_dims,
        crop_side=pt.crop_side, flip_p=pt.flip_p, jitter_p=pt.jitter_p, brightness=pt.brightness,
        contrast=pt.contrast, seed=args.seed, checkpoint_path=None, checkpoint_every=0,
        log_fn=record, progress=False, cpu_bf16=pt.cpu_bf16,
    )
    info = {"images": len(images), "training_split_images": len(train_paths), "generic_images": len(generic),
            "seconds": time.perf_counter() - started, "method": args.ssl_method, "epochs": args.ssl_epochs,
            "first_epoch_loss": history[0]["epoch/loss"] if history else None,
            "last_epoch_loss": history[-1]["epoch/loss"] if history else None,
            "last_effective_rank": history[-1]["epoch/effective_rank"] if history else None}
    return result.encoder.resnet_state_dict(), info


def encoder_states(args, cfg, train_paths: list[Path]) -> tuple[dict[str, dict | None], dict, dict[str, str]]:
    """({name: resnet state}, {what each encoder is}, {skipped name: reason})."""
    states, skipped, info = {}, {}, {}
    if "real" in args.encoders:
        name = f"real_{args.ssl_method}"
        log(f"pretraining {args.ssl_method} on {len(train_paths)} training-split images + generic EM images")
        states[name], info[name] = pretrain_real_encoder(args, cfg, train_paths)
        log(f"pretraining done in {info[name]['seconds']:.0f} s (loss {info[name]['first_epoch_loss']:.3f} -> "
            f"{info[name]['last_epoch_loss']:.3f})")
    if "random" in args.encoders:
        states["random"] = random_encoder(args.arch, args.seed).resnet_state_dict()
    if "synthetic" in args.encoders:
        if not args.synthetic_encoder.is_file():
            skipped["synthetic"] = f"{args.synthetic_encoder} not found"
        else:
            encoder, meta = load_encoder(args.synthetic_encoder)
            if encoder.arch != args.arch:
                skipped["synthetic"] = f"{args.synthetic_encoder} is {encoder.arch}, not {args.arch}"
            else:
                states["synthetic"] = encoder.resnet_state_dict()
                info["synthetic"] = {"path": str(args.synthetic_encoder), **meta}
    return states, info, skipped


def best_threshold(prob: np.ndarray, masks: np.ndarray) -> float:
    """Threshold of THRESHOLDS with the highest median dice (ties: the one nearest 0.5)."""
    medians = [np.median([dice_iou(p > t, m)[0] for p, m in zip(prob, masks)]) for t in THRESHOLDS]
    best = max(medians)
    return float(min((t for t, d in zip(THRESHOLDS, medians) if d == best), key=lambda t: abs(t - 0.5)))


def run_sweep(args, sg, images, masks, split, states) -> pd.DataFrame:
    train_idx, val_idx, test_idx = split
    rows = []
    for seed in range(args.seed, args.seed + args.seeds):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            subsets = nested_subsets(train_idx, args.sizes, seed)
        for w in caught:
            log(f"note: {w.message}")
        for n, fit_idx in subsets.items():
            epochs = None if args.steps else sg.epochs_for(n)
            for name in args.classical:
                # Fitted (polarity, window) on the same training images; no threshold to choose on validation.
                segmenter = fit_classical(name, images[fit_idx], masks[fit_idx], min_size=sg.object_min_size)
                for i, pred in zip(test_idx, segmenter.predict(images[test_idx])):
                    dice, iou = dice_iou(pred, masks[i])
                    rows.append({"encoder": name, "seed": seed, "n": n, "epochs": 0, "threshold": float("nan"),
                                 "image_index": int(i), "dice": dice, "iou": iou, "dice_at_0.5": dice,
                                 "iou_at_0.5": iou, "setting": segmenter.describe()})
                log(f"seed {seed} n={n:>3} {name:>18}: {segmenter.describe()}, median test dice "
                    f"{pd.DataFrame(rows[-len(test_idx):])['dice'].median():.3f}")
            for name, state in states.items():
                started = time.perf_counter()
                model = seeded_unet(args.arch, state, True, init_seed=seed)
                train_segmenter(model, images[fit_idx], masks[fit_idx], epochs=epochs, steps=args.steps or None,
                                lr=args.lr, batch_size=args.batch_size, seed=seed, crop_size=args.crop_size or None,
                                loss=args.loss)
                predict = dict(batch_size=16, dihedral=args.dihedral, cpu_bf16=args.predict_bf16)
                threshold = best_threshold(predict_probabilities(model, images[val_idx], **predict), masks[val_idx]) \
                    if len(val_idx) else 0.5
                prob = predict_probabilities(model, images[test_idx], **predict)
                for i, p in zip(test_idx, prob):
                    dice, iou = dice_iou(p > threshold, masks[i])
                    dice_half, iou_half = dice_iou(p > 0.5, masks[i])
                    rows.append({"encoder": name, "seed": seed, "n": n, "epochs": epochs or 0, "threshold": threshold,
                                 "image_index": int(i), "dice": dice, "iou": iou, "dice_at_0.5": dice_half,
                                 "iou_at_0.5": iou_half})
                done = pd.DataFrame(rows[-len(test_idx):])
                log(f"seed {seed} n={n:>3} {name:>18}: {epochs or args.steps} {'epochs' if epochs else 'steps'}, threshold {threshold:.1f}, median test "
                    f"dice {done['dice'].median():.3f}, iou {done['iou'].median():.3f} "
                    f"({time.perf_counter() - started:.0f} s)")
    return pd.DataFrame(rows)


def all_foreground_baseline(masks: np.ndarray) -> dict[str, float]:
    """Median dice/IoU of predicting every pixel as foreground: the floor a useful model must beat (EMPS
    masks cover about a third of each image, so this floor is far from 0)."""
    scores = np.array([dice_iou(np.ones_like(m), m) for m in masks])
    return {"dice_median": float(np.median(scores[:, 0])), "iou_median": float(np.median(scores[:, 1]))}


def summary_table(results: pd.DataFrame) -> dict:
    table = {}
    for (name, n), g in results.groupby(["encoder", "n"]):
        table.setdefault(name, {})[f"n{int(n)}"] = {
            "dice_median": float(g["dice"].median()), "iou_median": float(g["iou"].median()),
            "dice_q25": float(g["dice"].quantile(0.25)), "dice_q75": float(g["dice"].quantile(0.75)),
            "dice_median_at_0.5": float(g["dice_at_0.5"].median()),
            "iou_median_at_0.5": float(g["iou_at_0.5"].median()),
            "threshold": float(g["threshold"].median()), "epochs": int(g["epochs"].iloc[0]),
            **({"setting": str(g["setting"].mode().iloc[0])} if "setting" in g and g["setting"].notna().any() else {}),
            "test_images": int(g["image_index"].nunique()),
        }
    return table


def log_to_mlflow(params: dict, table: dict, out: Path) -> None:
    with benchmark_run("segment_real") as mlflow:
        mlflow.log_params({k: (v if len(str(v)) < 500 else str(v)[:499]) for k, v in params.items()})
        for name, per_n in table.items():
            for n, values in per_n.items():
                mlflow.log_metrics({f"{name}.{k}.{n}": v for k, v in values.items()
                                    if k in ("dice_median", "iou_median")})
        mlflow.log_artifact(str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/emps"), help="EMPS root")
    parser.add_argument("--ids-file", default="train.csv")
    parser.add_argument("--images", type=Path, default=None, help="generic layout: folder of images")
    parser.add_argument("--masks", type=Path, default=None, help="generic layout: folder of masks (same stems)")
    parser.add_argument("--generic-dir", type=Path, default=Path("../shared/data/cem500k-examples/images"),
                        help="extra unlabelled EM images for pretraining (skipped when absent)")
    parser.add_argument("--params", default="params.yaml", help="for the paper's epochs and SSL settings")
    parser.add_argument("--encoders", nargs="+", default=["real", "random", "synthetic"],
                        choices=["real", "random", "synthetic"])
    parser.add_argument("--synthetic-encoder", type=Path, default=Path("models/encoders/simclr.pt"))
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--resolution", type=int, default=128,
                        help="images are resized to this square side (a multiple of 32)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 80])
    parser.add_argument("--epoch-scale", type=float, default=0.1, help="x the paper's epochs per size")
    # The U-Net recipe defaults to the pipeline's (params.yaml segment, cpu profile; tuned on synthetic tuning data)
    parser.add_argument("--steps", type=int, default=None,
                        help="fixed optimiser steps per run whatever n (0: the paper's epochs x --epoch-scale; "
                             "default: segment.steps)")
    parser.add_argument("--crop-size", type=int, default=None, help="training windows (0: whole images; "
                        "default: segment.crop_size)")
    parser.add_argument("--loss", default=None, help="dice | dice+bce (default: segment.loss)")
    parser.add_argument("--dihedral", default=None, action=argparse.BooleanOptionalAction,
                        help="predict the mean over the 8 rotations/flips (default: segment.dihedral)")
    parser.add_argument("--predict-bf16", default=None, action=argparse.BooleanOptionalAction,
                        help="predictions under CPU bf16 autocast (default: segment.predict_cpu_bf16)")
    parser.add_argument("--classical", nargs="*", default=list(CLASSICAL_SEGMENTERS), choices=CLASSICAL_SEGMENTERS,
                        help="classical baselines fitted on the same training images")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="subset draws / decoder inits per size")
    parser.add_argument("--ssl-method", default="simclr", choices=["simclr", "barlow_twins"])
    parser.add_argument("--ssl-epochs", type=int, default=30)
    parser.add_argument("--ssl-image-size", type=int, default=64, help="side of the SSL views")
    parser.add_argument("--ssl-source-size", type=int, default=128, help="side the SSL images are decoded at")
    parser.add_argument("--ssl-batch-size", type=int, default=32)
    parser.add_argument("--ssl-lr", type=float, default=1e-3, help="AdamW (see README on SGD collapse at CPU scale)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/segment_real.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    cfg = load_config(args.params, profile="cpu")
    sg = dataclasses.replace(cfg.segment, epoch_scale=args.epoch_scale)
    for option, value in {"steps": sg.steps or 0, "crop_size": sg.crop_size or 0, "loss": sg.loss,
                          "dihedral": sg.dihedral, "predict_bf16": sg.predict_cpu_bf16}.items():
        if getattr(args, option) is None:
            setattr(args, option, value)

    pairs, source = select_pairs(args)
    split = split_three_ways(len(pairs), args.val_fraction, args.test_fraction, args.seed)
    log(f"{source}: {len(pairs)} pairs -> train {len(split[0])}, validation {len(split[1])}, test {len(split[2])}")
    images, masks = load_pairs(pairs, args.resolution)
    states, encoder_info, skipped = encoder_states(args, cfg, [pairs[i].image for i in split[0]])
    for name, reason in skipped.items():
        log(f"skipping encoder {name}: {reason}")
    results = run_sweep(args, sg, images, masks, split, states)
    table = summary_table(results)
    # Every learned segmenter vs every classical one, paired over the test images (dice averaged over seeds).
    compared = [(m, c) for m in states for c in args.classical]
    tests = (pairwise_wilcoxon(results, value="dice", unit="image_index", pairs=compared) if compared
             else pd.DataFrame())

    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    params["sizes"] = list(args.sizes)
    payload = {
        "params": params,
        "data": {"source": source, "pairs": len(pairs), "train": len(split[0]), "validation": len(split[1]),
                 "test": len(split[2]), "test_ids": [pairs[i].id for i in split[2]],
                 "mean_foreground": float(masks.mean())},
        "baseline_all_foreground_test": all_foreground_baseline(masks[split[2]]),
        "encoders": encoder_info,
        "skipped_encoders": skipped,
        "table": table,
        "paired_tests_vs_classical": tests.to_dict(orient="records"),
        "seconds": time.perf_counter() - started,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "load_average_1min_at_end": os.getloadavg()[0],  # shared cores: context for the timings
                    "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    results.insert(1, "id", [pairs[i].id for i in results["image_index"]])
    results.to_csv(args.out.with_name(args.out.stem + "_results.csv"), index=False)
    log(f"wrote {args.out} ({payload['seconds']:.0f} s)")
    print(pd.DataFrame({name: {n: v["dice_median"] for n, v in per_n.items()} for name, per_n in table.items()})
          .to_string(float_format="%.3f"))
    log_to_mlflow(params, table, args.out)


if __name__ == "__main__":
    main()
