"""How close does the pretraining loop come to the speed of its model alone?

Measures, in one process and on one device:
  loop     images/s of `nanomorph.ssl.train.pretrain` (batch selection, per-image views, forward, backward,
           optimiser and scheduler step, logging), from the wall time between consecutive per-step log calls;
  ceiling  images/s of the same optimiser step (`_train_step`: forward, backward, step) on pre-made view
           tensors of the same shape, i.e. with no data or augmentation work at all;
and reports loop / ceiling, peak RSS, and peak CUDA memory on CUDA. Warm-up steps are excluded from both.
Both are measured on medians of per-step times, over `--repeats` alternating rounds: on a shared machine a
few steps can take many times the usual time, and a median is robust to them while a mean is not.

    python benchmarks/pretrain_throughput.py --arch resnet18 --image-size 64 --batch-size 64 --steps 20
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from _tracking import benchmark_run
from nanomorph.models.encoder import Projector, ResNetEncoder
from nanomorph.ssl.embedding import TwinEmbedder
from nanomorph.ssl.train import _amp_dtype, _loss_fn, _train_step, pretrain, warmup_cosine
from nanomorph.ssl.view_data import step_views
from nanomorph.ssl.views import make_view_transform

PROJECTOR_DIMS = (128, 64, 1024)


def ceiling_step_seconds(args: argparse.Namespace) -> list[float]:
    """Seconds per step of forward + backward + step alone, on random view tensors made before timing."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    encoder = ResNetEncoder(args.arch, 1)
    projector = Projector(encoder.out_dim, PROJECTOR_DIMS)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    encoder.to(device, memory_format=memory_format).train()
    projector.to(device).train()
    optimizer = torch.optim.SGD([*encoder.parameters(), *projector.parameters()], lr=0.2, momentum=0.9,
                                weight_decay=1e-6)
    total = args.warmup + args.steps
    scheduler = LambdaLR(optimizer, warmup_cosine(0, total))
    amp_dtype = _amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    loss_fn = _loss_fn(args.method, 0.1, 0.005)
    shape = (args.batch_size, 1, args.image_size, args.image_size)
    views = [(torch.rand(shape), torch.rand(shape))]  # one micro-batch: no gradient accumulation
    twin = TwinEmbedder(encoder, projector)
    seconds = []
    for _ in range(total):
        started = time.perf_counter()
        _train_step(twin, loss_fn, optimizer, scheduler, scaler, views, device, amp_dtype)
        seconds.append(time.perf_counter() - started)  # _train_step ends in loss.item(): the device is synced
    return seconds[args.warmup:]


def loop_step_seconds(args: argparse.Namespace) -> list[float]:
    """Seconds per step of the real pretraining loop, over one epoch of random source images.

    The epoch has one extra step: its end runs the collapse monitor before the last log call, so the last
    interval is left out (as are the warm-up steps).
    """
    n_steps = args.warmup + args.steps + 1
    rng = np.random.default_rng(0)
    images = rng.random((args.batch_size * n_steps, args.source_size, args.source_size), dtype=np.float32)
    stamps: dict[int, float] = {}

    def stamp(metrics: dict, step: int) -> None:
        stamps.setdefault(step, time.perf_counter())  # the first call per step is the per-step one

    pretrain(images, method=args.method, arch=args.arch, image_size=args.image_size, batch_size=args.batch_size,
             epochs=1, lr=0.2, momentum=0.9, weight_decay=1e-6, warmup_epochs=0, temperature=0.1, lambd=0.005,
             projector_dims=PROJECTOR_DIMS, crop_side=(0.25, 0.5), flip_p=0.5, jitter_p=0.8, brightness=0.4,
             contrast=0.4, seed=0, checkpoint_path=None, checkpoint_every=0, device=args.device, log_fn=stamp,
             progress=False, view_workers=args.view_workers)
    timed = range(args.warmup + 1, args.warmup + args.steps + 1)
    return [stamps[step] - stamps[step - 1] for step in timed]


def views_step_seconds(args: argparse.Namespace) -> list[float]:
    """Seconds per step of building one batch's two views alone, seeded per image as in the loop (its main
    extra work)."""
    transform = make_view_transform(args.image_size)
    batch = torch.rand(args.batch_size, 1, args.source_size, args.source_size)
    seconds = []
    for step in range(args.warmup + args.steps):
        started = time.perf_counter()
        step_views(batch, transform, 0, step)
        seconds.append(time.perf_counter() - started)
    return seconds[args.warmup:]


def log_to_mlflow(params: dict, metrics: dict) -> None:
    with benchmark_run("pretrain_throughput") as mlflow:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--method", default="simclr", choices=["simclr", "barlow_twins"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--source-size", type=int, default=None,
                        help="side of the source images the views are cropped from (default: 2 x image size)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps, after --warmup untimed ones")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds of ceiling and loop")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--view-workers", type=int, default=None,
                        help="DataLoader processes building views (default: pretrain's, 0 on CPU)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pretrain_throughput.json"))
    args = parser.parse_args()
    args.source_size = args.source_size or 2 * args.image_size
    # The source images are uniform noise, with nothing to learn; the collapse monitor says so every run.
    warnings.filterwarnings("ignore", message=".*collapsing to a point")
    logging.getLogger("nanomorph.ssl").setLevel(logging.ERROR)

    ceiling_s, loop_s = [], []
    for _ in range(args.repeats):  # alternate, so a slow phase of the machine hits both alike
        ceiling_s += ceiling_step_seconds(args)
        loop_s += loop_step_seconds(args)
    loop, ceiling = args.batch_size / np.median(loop_s), args.batch_size / np.median(ceiling_s)
    metrics = {
        "loop_images_per_s": loop,
        "ceiling_images_per_s": ceiling,
        "loop_over_ceiling": loop / ceiling,
        "views_seconds_per_step": float(np.median(views_step_seconds(args))),
        "loop_seconds_per_step": float(np.median(loop_s)),
        "loop_images_per_s_mean": args.batch_size * len(loop_s) / sum(loop_s),
        "ceiling_images_per_s_mean": args.batch_size * len(ceiling_s) / sum(ceiling_s),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
    }
    if args.device.startswith("cuda"):
        metrics["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    params = {k: v for k, v in vars(args).items() if k != "out"}
    machine = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
               "python": platform.python_version(),
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"params": params, "machine": machine, "metrics": metrics}, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    log_to_mlflow(params, metrics)


if __name__ == "__main__":
    main()
