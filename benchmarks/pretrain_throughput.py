"""How close does the pretraining loop come to the speed of a plain model, alone and beside a busy process?

Measures, in one process and on one device, in source images per second (each gives two views):
  loop     `nanomorph.ssl.train.pretrain` (batch selection, per-image views, forward, backward, optimiser and
           scheduler step, logging): the median wall time between consecutive per-step log calls;
  epoch    the same loop over whole epochs of `--epoch-images` images, everything included (views, steps,
           logging, the per-epoch collapse monitor, a checkpoint written every epoch), from the first step's
           log call to the last epoch's end;
  ceiling  the loop's own optimiser step (`_train_step`: forward, backward, step) on pre-made view tensors;
  plain    a plain torchvision ResNet (`torchvision.models.<arch>`, its stem taking 1 channel like the
           encoder's, a 1024-way head) forward + cross-entropy backward + SGD step on random tensors of the
           views' shape (2 x batch, 1, S, S): the model alone, none of this project's code;
and the ratios loop / plain, epoch / plain and loop / ceiling. With `--busy` the loop and the plain model are
timed again beside one busy process (another plain model training on the same cores, torch's default
threads), in a process started after it as a stage would be, and each keeps its share of its alone figure.
Warm-up steps are excluded. Medians of per-step times over `--repeats` alternating rounds: on a shared
machine a few steps can take many times the usual time.

Everything runs as `dvc repro` runs it: `nanomorph.stages` is imported first, with its CPU kernel pin and
its OpenMP wait policy (threads spin on quiet CPUs and wait passively when other processes keep them busy
at start; `wait_policy` and `busy_wait_policy` record which one each measuring process got).

    python benchmarks/pretrain_throughput.py --arch resnet18 --image-size 64 --batch-size 64 --steps 20 --busy
"""

from __future__ import annotations

import os

# The environment before nanomorph.stages adds its settings: the busy process and the busy measurement start
# from it, so each makes its own choices as a process started beside the other would.
ENVIRONMENT = dict(os.environ)

import nanomorph.stages  # noqa: F401  first, before torch loads: the stages' kernel pin and wait policy

import argparse
import json
import logging
import platform
import resource
import time
import warnings
from pathlib import Path

import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
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


def plain_model(arch: str) -> torch.nn.Module:
    """torchvision's ResNet with a 1-channel stem (as the encoder's) and a 1024-way head."""
    model = getattr(torchvision.models, arch)(num_classes=PROJECTOR_DIMS[-1])
    model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def plain_step_seconds(args: argparse.Namespace, steps: int | None = None) -> list[float]:
    """Seconds per step of a plain torchvision ResNet: forward, cross-entropy, backward, SGD step."""
    torch.manual_seed(0)
    model = plain_model(args.arch).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    x = torch.rand(2 * args.batch_size, 1, args.image_size, args.image_size)
    target = torch.randint(0, PROJECTOR_DIMS[-1], (2 * args.batch_size,))
    seconds = []
    for _ in range(args.warmup + (steps or args.steps)):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
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
             epochs=1, optimizer=args.optimizer, lr=args.lr, momentum=0.9, weight_decay=1e-6, warmup_epochs=0,
             temperature=0.1, lambd=0.005,
             projector_dims=PROJECTOR_DIMS, crop_side=(0.25, 0.5), flip_p=0.5, jitter_p=0.8, brightness=0.4,
             contrast=0.4, seed=0, checkpoint_path=None, checkpoint_every=0, device=args.device, log_fn=stamp,
             progress=False, view_workers=args.view_workers)
    timed = range(args.warmup + 1, args.warmup + args.steps + 1)
    return [stamps[step] - stamps[step - 1] for step in timed]


def epoch_images_per_s(args: argparse.Namespace) -> float:
    """Source images/s of whole epochs of the loop, monitor and a checkpoint at the end of every epoch included
    (the first step, which builds the optimiser state, left out)."""
    rng = np.random.default_rng(1)
    images = rng.random((args.epoch_images, args.source_size, args.source_size), dtype=np.float32)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        pretrain(images, method=args.method, arch=args.arch, image_size=args.image_size,
                 batch_size=args.batch_size, epochs=args.epochs, optimizer=args.optimizer, lr=args.lr,
                 momentum=0.9, weight_decay=1e-6, warmup_epochs=0,
                 temperature=0.1, lambd=0.005, projector_dims=PROJECTOR_DIMS, crop_side=(0.5, 1.0),
                 flip_p=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, seed=0,
                 checkpoint_path=Path(tmp) / "checkpoint.pt", checkpoint_every=args.epoch_images // args.batch_size,
                 device=args.device,
                 log_fn=lambda metrics, step: stamps.append(time.perf_counter()), progress=False,
                 view_workers=args.view_workers)
    steps = args.epochs * (args.epoch_images // args.batch_size)
    return (steps - 1) * args.batch_size / (stamps[-1] - stamps[0])


def busy_process(args: argparse.Namespace) -> subprocess.Popen:
    """Another process training a plain model on the same cores until killed (torch's default threads)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import argparse, pretrain_throughput as b; "
            f"a = argparse.Namespace(arch={args.arch!r}, batch_size={args.batch_size}, "
            f"image_size={args.image_size}, warmup=0, steps=10**9); b.plain_step_seconds(a)")
    process = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent)], env=ENVIRONMENT)
    time.sleep(10)  # past its start-up
    return process


def busy_measurement(args: argparse.Namespace) -> dict:
    """Loop and plain step seconds (`--repeats` alternating rounds) from a process started now, beside the busy
    one: as a stage started on busy CPUs, it makes its own start-up choices (the wait policy)."""
    argv = [sys.executable, __file__, *sys.argv[1:], "--busy-child"]  # this run's arguments
    done = subprocess.run(argv, env=ENVIRONMENT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def wait_policy() -> str:
    """The OpenMP wait policy this process's threads got (set by nanomorph.stages, or the environment)."""
    return os.environ.get("OMP_WAIT_POLICY", "default (spin)")


def busy_child(args: argparse.Namespace) -> None:
    times = {"loop": [], "plain": [], "wait_policy": wait_policy()}
    for _ in range(args.repeats):
        times["loop"] += loop_step_seconds(args)
        times["plain"] += plain_step_seconds(args)
    print(json.dumps(times))


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
    parser.add_argument("--optimizer", default="sgd", help="the loop's optimiser (the cpu profile's: adamw)")
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--epoch-images", type=int, default=400, help="images per epoch of the `epoch` figure")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the `epoch` figure")
    parser.add_argument("--busy", action="store_true", help="also time loop and plain beside a busy process")
    parser.add_argument("--view-workers", type=int, default=None,
                        help="DataLoader processes building views (default: pretrain's, 0 on CPU)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pretrain_throughput.json"))
    parser.add_argument("--busy-child", action="store_true", help=argparse.SUPPRESS)  # see busy_measurement
    args = parser.parse_args()
    args.source_size = args.source_size or 2 * args.image_size
    # The source images are uniform noise, with nothing to learn; the collapse monitor says so every run.
    warnings.filterwarnings("ignore", message=".*collapsing to a point")
    logging.getLogger("nanomorph.ssl").setLevel(logging.ERROR)
    if args.busy_child:
        busy_child(args)
        return

    ceiling_s, loop_s, plain_s = [], [], []
    for _ in range(args.repeats):  # alternate, so a slow phase of the machine hits all alike
        ceiling_s += ceiling_step_seconds(args)
        loop_s += loop_step_seconds(args)
        plain_s += plain_step_seconds(args)
    loop, ceiling = args.batch_size / np.median(loop_s), args.batch_size / np.median(ceiling_s)
    plain = args.batch_size / np.median(plain_s)
    epoch = epoch_images_per_s(args)
    metrics = {
        "loop_images_per_s": loop,
        "epoch_images_per_s": epoch,
        "ceiling_images_per_s": ceiling,
        "plain_images_per_s": plain,
        "loop_over_plain": loop / plain,
        "epoch_over_plain": epoch / plain,
        "loop_over_ceiling": loop / ceiling,
        "views_seconds_per_step": float(np.median(views_step_seconds(args))),
        "loop_seconds_per_step": float(np.median(loop_s)),
        "loop_images_per_s_mean": args.batch_size * len(loop_s) / sum(loop_s),
        "ceiling_images_per_s_mean": args.batch_size * len(ceiling_s) / sum(ceiling_s),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
    }
    wait_policies = {"wait_policy": wait_policy()}
    if args.busy:
        busy = busy_process(args)
        try:
            busy_times = busy_measurement(args)
        finally:
            busy.kill()
            busy.wait()
        wait_policies["busy_wait_policy"] = busy_times["wait_policy"]
        metrics["busy_loop_images_per_s"] = args.batch_size / np.median(busy_times["loop"])
        metrics["busy_plain_images_per_s"] = args.batch_size / np.median(busy_times["plain"])
        metrics["busy_loop_over_alone"] = metrics["busy_loop_images_per_s"] / loop
        metrics["busy_plain_over_alone"] = metrics["busy_plain_images_per_s"] / plain
    if args.device.startswith("cuda"):
        metrics["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    params = {k: v for k, v in vars(args).items() if k not in ("out", "busy_child")}
    machine = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "kernels": torch.backends.cpu.get_cpu_capability(),
               **wait_policies,
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"params": params, "machine": machine, "metrics": metrics}, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    log_to_mlflow({**params, **wait_policies}, metrics)


if __name__ == "__main__":
    main()
