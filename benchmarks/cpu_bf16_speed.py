"""How much faster are pretraining and U-Net training under CPU bf16 autocast (`pretrain.cpu_bf16`,
`segment.cpu_bf16`)? A/B within one process, alternating rounds, on the cpu profile's shapes.

  pretrain  `nanomorph.ssl.train.pretrain` (views, forward, backward, step) for `--pretrain-steps` steps of
            batch 32 at 64 px from 128 px sources, ResNet18, Barlow Twins, float32 vs cpu_bf16;
  segment   `nanomorph.segment.train.train_segmenter`, frozen-encoder U-Net, `--segment-steps` steps of
            batch 4 on 64 px windows of 128 px images, plus `predict_probabilities` with the 8-fold dihedral
            mean on 16 images, float32 vs cpu_bf16.
Reports the median seconds of each over `--repeats` rounds and the ratio float32 / bf16 (> 1: bf16 faster).
Speed only: the accuracy of bf16 runs is in benchmarks/results/tune_views.json (tuning data).

    python benchmarks/cpu_bf16_speed.py        # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from _tracking import benchmark_run
from nanomorph.models.encoder import random_encoder
from nanomorph.models.precision import cpu_has_bf16
from nanomorph.segment.sweep import seeded_unet
from nanomorph.segment.train import predict_probabilities, train_segmenter
from nanomorph.ssl.train import pretrain


def pretrain_seconds(images: np.ndarray, steps: int, bf16: bool) -> float:
    t0 = time.perf_counter()
    pretrain(images[: 32 * steps], method="barlow_twins", arch="resnet18", image_size=64, batch_size=32, epochs=1,
             lr=1e-3, optimizer="adamw", momentum=0.9, weight_decay=1e-6, warmup_epochs=0, temperature=0.1,
             lambd=0.005, projector_dims=(128, 64, 1024), crop_side=(0.5, 1.0), flip_p=0.5, jitter_p=0.8,
             brightness=0.4, contrast=0.4, seed=0, checkpoint_path=None, checkpoint_every=0, progress=False,
             cpu_bf16=bf16)
    return time.perf_counter() - t0


def segment_seconds(images: np.ndarray, masks: np.ndarray, steps: int, bf16: bool) -> float:
    model = seeded_unet("resnet18", random_encoder("resnet18", 0).resnet_state_dict(), True, init_seed=0)
    t0 = time.perf_counter()
    train_segmenter(model, images, masks, steps=steps, lr=1e-3, batch_size=4, seed=0, crop_size=64,
                    loss="dice+bce", cpu_bf16=bf16)
    predict_probabilities(model, images[:16], dihedral=True, cpu_bf16=bf16)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=8)
    parser.add_argument("--segment-steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_bf16_speed.json"))
    args = parser.parse_args()
    if not cpu_has_bf16():
        raise SystemExit("this CPU has no native bfloat16 (AVX512-BF16 or AMX): cpu_bf16 is a no-op here")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    sources = rng.random((32 * args.pretrain_steps, 128, 128), dtype=np.float32)
    seg_images = rng.random((8, 128, 128), dtype=np.float32)
    seg_masks = seg_images > 0.7
    times = {k: [] for k in ("pretrain_fp32", "pretrain_bf16", "segment_fp32", "segment_bf16")}
    pretrain_seconds(sources, 2, False)  # warm-up: first-call allocations and kernel selection
    for _ in range(args.repeats):  # alternating rounds: drifts of a shared machine hit both arms alike
        for bf16 in (False, True):
            tag = "bf16" if bf16 else "fp32"
            times[f"pretrain_{tag}"].append(pretrain_seconds(sources, args.pretrain_steps, bf16))
            times[f"segment_{tag}"].append(segment_seconds(seg_images, seg_masks, args.segment_steps, bf16))
    median = {k: statistics.median(v) for k, v in times.items()}
    metrics = {**{f"{k}_s": round(v, 3) for k, v in median.items()},
               "pretrain_speedup": round(median["pretrain_fp32"] / median["pretrain_bf16"], 3),
               "segment_speedup": round(median["segment_fp32"] / median["segment_bf16"], 3)}
    params = vars(args) | {"out": str(args.out)}
    machine = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
               "threads": torch.get_num_threads()}
    with benchmark_run("cpu_bf16_speed") as mlflow:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"params": params, "machine": machine, "metrics": metrics,
                                    "seconds": times}, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
