"""Self-supervised pretraining of a ResNet encoder on unlabelled EM images (SimCLR or Barlow Twins).

The loop is the paper's: two random views per image, encoder -> projector -> loss, SGD with momentum and a
per-step cosine decay of the learning rate (optionally after a linear warm-up).

Resumability: all randomness of a step is derived from (seed, step) or (seed, epoch) -- the epoch's shuffle
from its own seeded generator, each image's views from torch's generator reseeded by (seed, step, position of
the image in the step's batch) inside a forked RNG scope (nanomorph.ssl.view_data) -- so no generator state has
to be carried over. A checkpoint (model, projector, optimiser, scheduler, grad scaler, step, history, running
epoch sums) is written atomically (nanomorph.ssl.checkpoints) every `checkpoint_every` optimiser steps and at
the end, and a run that finds its checkpoint resumes from it and replays exactly the steps an uninterrupted run
would have taken (bitwise on CPU with deterministic algorithms). The same purity lets
DataLoader workers build upcoming views ahead of the trainer (`view_workers`) without changing any result.

At every epoch's end a collapse monitor (nanomorph.ssl.monitor) records the spread of the projections and the
effective rank of the encoder features of the epoch's last step (the step's own embeddings, no extra forward
pass), warning when the projections collapse to a point.

Gradient accumulation (`accumulate_steps` = k): an optimiser step takes k micro-batches of `batch_size`
images in turn and follows the gradient of the MEAN of their k losses, so it sees batch_size * k images.
Contrastive losses are not sums over images: each micro-batch's negatives (SimCLR) and cross-correlation
(Barlow Twins) come from that micro-batch alone, so accumulation gives the memory of a small batch and the
step count of a big one, not the loss of the big batch. The learning-rate schedule counts optimiser steps.

Distributed data parallel: when torch.distributed is initialised with world size W > 1 (e.g. under torchrun),
encoder + projector are wrapped in DistributedDataParallel. Every rank draws the same seeded shuffle and takes
its own slice (nanomorph.ssl.distributed) of each micro-batch, so the global micro-batch is still `batch_size`
(batch_size / W images per rank), and an image's views depend on its position in the global batch, not on W. The
losses gather the negatives (NT-Xent) and sum the cross-correlation (Barlow Twins) over ranks, and DDP averages
the gradients, so every rank steps along the gradient of the global batch's loss. On CUDA every BatchNorm
becomes a SyncBatchNorm and Barlow Twins standardises over all ranks (as the reference implementation does). On
CPU (gloo) BatchNorm stays per rank -- torch's SyncBatchNorm refuses CPU tensors ("expected input tensor to be
on GPU") -- hence there the single-process equivalent of W ranks is `bn_groups=W`: every BatchNorm (and the
Barlow Twins standardisation) normalises each of W equal blocks of the batch on its own statistics; since DDP
broadcasts rank 0's buffers, only the first block updates the running statistics.
tests/ssl/test_ssl_distributed.py compares two gloo ranks with that reference. Only rank 0 shows progress, calls
`log_fn`, warns and writes checkpoints; it reads the checkpoint and broadcasts it, so every rank resumes from
the same state even without a shared file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from nanomorph.models.encoder import Projector, ResNetEncoder
from nanomorph.models.precision import cpu_bf16_dtype
from nanomorph.ssl.barlow_twins import barlow_twins_loss
from nanomorph.ssl.checkpoints import CHECKPOINT_FORMAT, check_resumable, load_checkpoint, save_checkpoint
from nanomorph.ssl.distributed import (agree_across_ranks, check_layout, current_ranks, effective_batch,
                                       sync_batchnorm, syncs_batchnorm)
from nanomorph.ssl.embedding import TwinEmbedder, TwinEmbeddings, to_device
from nanomorph.ssl.lars import LARS
from nanomorph.ssl.monitor import collapse_metrics, warn_if_collapsed
from nanomorph.ssl.simclr import nt_xent_loss
from nanomorph.ssl.view_data import StepViews, as_batch_tensor, default_view_workers, view_loader
from nanomorph.ssl.views import make_view_transform

if TYPE_CHECKING:
    from nanomorph.config import PretrainConfig

log = logging.getLogger(__name__)

METHODS = ("simclr", "barlow_twins")

LogFn = Callable[[dict[str, float], int], None]


@dataclass
class PretrainResult:
    """The trained encoder (eval mode, CPU) and one metrics dict per completed epoch."""

    encoder: ResNetEncoder
    history: list[dict[str, float]] = field(default_factory=list)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier per step: linear ramp over `warmup_steps`, then cosine from 1 down to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _loss_fn(method: str, temperature: float, lambd: float, groups: int = 1,
             sync: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The method's loss; `groups` = BatchNorm groups per rank, which Barlow Twins standardises separately;
    `sync`: Barlow Twins standardises over all ranks' rows (with synchronised BatchNorm, `sync_batchnorm`)."""
    if method == "simclr":
        return lambda z1, z2: nt_xent_loss(z1, z2, temperature)
    if method == "barlow_twins":
        return lambda z1, z2: barlow_twins_loss(z1, z2, lambd, groups, sync)
    raise ValueError(f"unknown pretraining method '{method}' (choose from {', '.join(METHODS)})")


def _amp_dtype(device: torch.device, cpu_bf16: bool = False) -> torch.dtype | None:
    """Mixed-precision dtype: on CUDA bf16 where the GPU has it (no loss scaling needed), else fp16; on CPU bf16
    only when asked (`cpu_bf16`) and the CPU has it natively, else float32 (None)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return cpu_bf16_dtype(device, cpu_bf16)


def _train_step(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, scheduler: LambdaLR,
                scaler: torch.amp.GradScaler, micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
                device: torch.device, amp_dtype: torch.dtype | None,
                ddp: nn.Module | None = None) -> tuple[float, TwinEmbeddings]:
    """One optimiser step on the gradient of the mean loss of the micro-batches' view pairs.

    `model` maps a pair of view batches to their TwinEmbeddings (a TwinEmbedder, maybe DDP-wrapped or compiled);
    `ddp` is the DistributedDataParallel wrapper when there is one: its gradient all-reduce then runs once,
    after the last micro-batch. Returns the mean loss, averaged over ranks (ends in .item(): device synced), and
    the last micro-batch's embeddings, detached (the collapse monitor's input; this rank's rows only).
    """
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    optimizer.zero_grad(set_to_none=True)
    k = len(micro_batches)
    total = torch.zeros((), device=device)
    for i, views in enumerate(micro_batches):
        v1, v2 = (to_device(v, device) for v in views)
        skip_sync = ddp.no_sync() if ddp is not None and i < k - 1 else contextlib.nullcontext()
        with skip_sync:
            with autocast:
                embedded = model(v1, v2)
            # outside autocast: the losses compute in float32 (they also disable it)
            loss = loss_fn(embedded.z1, embedded.z2)
            scaler.scale(loss / k).backward()
        total += loss.detach().float()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    mean = total / k
    if ddp is not None:  # each rank's loss covers its own anchors (SimCLR); report the global batch's
        dist.all_reduce(mean)
        mean /= dist.get_world_size()
    return mean.item(), TwinEmbeddings(*(t.detach() for t in embedded))


@dataclass
class _Model:
    """Everything whose state a checkpoint carries, besides the loop's counters."""

    encoder: ResNetEncoder
    projector: Projector
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).state_dict() for name in ("encoder", "projector", "optimizer",
                                                                    "scheduler", "scaler")}

    def load_state_dict(self, blob: dict[str, Any]) -> None:
        for name in ("encoder", "projector", "optimizer", "scheduler", "scaler"):
            getattr(self, name).load_state_dict(blob[name])


OPTIMIZERS = ("sgd", "lars", "adamw")


def make_optimizer(name: str, params: list[nn.Parameter], lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """The paper's SGD with momentum, LARS (Barlow Twins reference) or AdamW (momentum is AdamW's beta1)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}' (choose from {', '.join(OPTIMIZERS)})")


def _build_model(arch: str, projector_dims: tuple[int, ...], seed: int, device: torch.device, optimizer: str,
                 lr: float, momentum: float, weight_decay: float, warmup_steps: int, total_steps: int) -> _Model:
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's generator
        torch.default_generator.manual_seed(seed)  # the modules are initialised on the CPU
        encoder = ResNetEncoder(arch, 1)
        projector = Projector(encoder.out_dim, tuple(projector_dims))
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    encoder.to(device, memory_format=memory_format).train()
    projector.to(device).train()
    optim = make_optimizer(optimizer, [*encoder.parameters(), *projector.parameters()], lr, momentum, weight_decay)
    scheduler = LambdaLR(optim, warmup_cosine(warmup_steps, total_steps))
    # Loss scaling only for fp16; bf16 has float32's exponent range.
    scaler = torch.amp.GradScaler("cuda", enabled=_amp_dtype(device) == torch.float16)
    return _Model(encoder, projector, optim, scheduler, scaler)


def _empty_sums() -> dict[str, float]:
    return {"loss": 0.0}


def pretrain(
    images: np.ndarray,
    *,
    method: str,
    arch: str,
    image_size: int,
    batch_size: int,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    warmup_epochs: int,
    optimizer: str = "sgd",
    temperature: float,
    lambd: float,
    projector_dims: tuple[int, ...],
    crop_side: tuple[float, float],
    flip_p: float,
    jitter_p: float,
    brightness: float,
    contrast: float,
    seed: int,
    checkpoint_path: Path | None,
    checkpoint_every: int,
    dihedral: bool = False,
    blur_p: float = 0.0,
    blur_sigma: float = 1.5,
    noise_std: float = 0.0,
    device: str = "cpu",
    log_fn: LogFn | None = None,
    progress: bool = True,
    view_workers: int | None = None,
    accumulate_steps: int = 1,
    bn_groups: int = 1,
    compile_model: bool | str = False,
    cpu_bf16: bool = False,
) -> PretrainResult:
    """Pretrain ResNetEncoder(arch, 1) + Projector with SimCLR or Barlow Twins on (N, H, W) [0, 1] images.

    `log_fn(metrics, step)` receives {"loss", "lr", "images_per_s"} after every optimiser step and, after every
    epoch, {"epoch/loss", "epoch/lr", "epoch/images_per_s", "epoch/embedding_std", "epoch/effective_rank"}
    (prefixed so per-step and per-epoch series never share a metric name). `images_per_s` counts source
    images (each gives two views; all ranks together) over the time of getting the views + forward +
    backward + step.
    `view_workers` DataLoader processes build views ahead of the trainer (None: 0 on CPU, up to 4 on CUDA);
    the views, and so the results, are the same for any number of workers.
    `accumulate_steps` micro-batches of `batch_size` make one optimiser step (see the module docstring).
    `bn_groups` embeds each rank's batch in that many BatchNorm groups (the single-process equivalent of that
    many DDP ranks). `compile_model` runs the encoder + projector under torch.compile (for speed; results
agree to float rounding): True for its default backend (inductor), or a backend's name. `cpu_bf16`: on a
    CPU with native bfloat16, the forward pass under bf16 autocast (losses stay float32; 1.4x faster steps
    there, benchmarks/results/cpu_bf16_speed.json); the precision used is part of the run config, so a
    checkpoint resumes only under the same one.
    Under torch.distributed (world size > 1) this is one rank of a DDP run: call it on every rank with the
    same arguments; only rank 0 reads `checkpoint_path`, writes it, shows progress and calls `log_fn`. The
    returned encoder is the same on every rank up to BatchNorm running statistics, which are rank 0's there.
    """
    ranks = current_ranks()
    dev = torch.device(device)
    loss_fn = _loss_fn(method, temperature, lambd, bn_groups, sync=syncs_batchnorm(dev, ranks.world))
    data = as_batch_tensor(images)
    batch = effective_batch(len(data), batch_size)
    layout = check_layout(len(data), batch, accumulate_steps, bn_groups, ranks)
    steps_per_epoch = len(data) // layout.step_images
    total_steps = epochs * steps_per_epoch
    amp_dtype = _amp_dtype(dev, cpu_bf16)
    run_config = {
        "format": CHECKPOINT_FORMAT, "method": method, "arch": arch, "image_size": image_size, "batch": batch,
        "accumulate_steps": accumulate_steps, "bn_group_size": layout.per_rank // bn_groups,
        "epochs": epochs, "optimizer": optimizer, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs, "temperature": temperature, "lambd": lambd,
        "projector_dims": list(projector_dims), "crop_side": list(crop_side), "flip_p": flip_p,
        "jitter_p": jitter_p, "brightness": brightness, "contrast": contrast, "seed": seed,
        "dihedral": dihedral, "blur_p": blur_p, "blur_sigma": blur_sigma, "noise_std": noise_std,
        "data_sha256": hashlib.sha256(data.numpy().data).hexdigest(),
        **({"autocast": str(amp_dtype)} if amp_dtype is not None and dev.type == "cpu" else {}),
    }
    agree_across_ranks(run_config, ranks)
    model = _build_model(arch, projector_dims, seed, dev, optimizer, lr, momentum, weight_decay,
                         warmup_epochs * steps_per_epoch, total_steps)
    transform = make_view_transform(image_size, crop_side, flip_p, jitter_p, brightness, contrast, dihedral,
                                    blur_p, blur_sigma, noise_std)

    step, history, sums = 0, [], _empty_sums()  # sums: running totals of the current epoch
    # Throughput is wall-clock, so it goes to log_fn only: history and checkpoints hold only numbers that a
    # rerun reproduces (they end up in dvc outputs, which a fresh clone must reproduce bit for bit).
    timed_images, timed_seconds = 0, 0.0
    blob = load_checkpoint(checkpoint_path, ranks)
    if blob is not None:
        check_resumable(blob["config"], run_config, Path(checkpoint_path or "rank 0's checkpoint"))
        model.load_state_dict(blob)
        step, history, sums = blob["step"], blob["history"], blob["epoch_sums"]
        if ranks.main:
            log.info("resuming from step %d of %d (%s)", step, total_steps, checkpoint_path)

    twin = TwinEmbedder(model.encoder, model.projector, bn_groups)
    ddp = None
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Encoder and projector BatchNorms become SyncBatchNorms on CUDA (children replaced in place, so
        # model.encoder is still the module that is monitored, checkpointed and returned).
        sync_batchnorm(twin, dev, ranks.world)
        # Wraps after loading the checkpoint; its construction broadcasts rank 0's parameters and buffers.
        ddp = DistributedDataParallel(twin, device_ids=[dev.index] if dev.type == "cuda" else None)
    if compile_model:
        # In place (nn.Module.compile): state-dict keys stay unprefixed, and DDP wraps the compiled module.
        twin.compile(**({} if compile_model is True else {"backend": compile_model}))
    runner = ddp if ddp is not None else twin

    workers = default_view_workers(dev) if view_workers is None else view_workers
    view_batches = iter(view_loader(StepViews(data, transform, seed, layout, step, total_steps), workers, dev))
    bar = tqdm(total=total_steps, initial=step, disable=not (progress and ranks.main), desc=f"pretrain {method}",
               unit="step")
    while step < total_steps:
        epoch, b = divmod(step, steps_per_epoch)
        started = time.perf_counter()
        lr_now = model.scheduler.get_last_lr()[0]
        loss, embedded = _train_step(runner, loss_fn, model.optimizer, model.scheduler, model.scaler,
                                     next(view_batches), dev, amp_dtype, ddp)
        seconds = time.perf_counter() - started
        if not math.isfinite(loss):
            raise FloatingPointError(f"{method} loss became {loss} at step {step}; lower the learning rate")
        step += 1
        n_step = layout.step_images
        sums = {"loss": sums["loss"] + loss}
        timed_images, timed_seconds = timed_images + n_step, timed_seconds + seconds
        step_metrics = {"loss": loss, "lr": lr_now, "images_per_s": n_step / seconds}
        epoch_metrics = epoch_speed = None
        if b == steps_per_epoch - 1:
            # Each rank monitors its own rows of the step; rank 0's history is the one logged and checkpointed.
            epoch_metrics = {"epoch": epoch + 1, "loss": sums["loss"] / steps_per_epoch, "lr": lr_now,
                             **collapse_metrics(torch.cat([embedded.z1, embedded.z2]),
                                                torch.cat([embedded.features1, embedded.features2]))}
            epoch_speed = timed_images / timed_seconds  # over the steps this process ran
            if ranks.main:
                warn_if_collapsed(epoch_metrics, projector_dims[-1], epoch + 1)
            history.append(epoch_metrics)
            sums, timed_images, timed_seconds = _empty_sums(), 0, 0.0
        if ranks.main and checkpoint_path is not None and (
                step == total_steps or (checkpoint_every > 0 and step % checkpoint_every == 0)):
            save_checkpoint(Path(checkpoint_path), {**model.state_dict(), "config": run_config, "step": step,
                                                    "history": history, "epoch_sums": sums})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{step_metrics['images_per_s']:.1f}")
        if log_fn is not None and ranks.main:
            log_fn(step_metrics, step)
            if epoch_metrics is not None:
                log_fn({**{f"epoch/{k}": v for k, v in epoch_metrics.items() if k != "epoch"},
                        "epoch/images_per_s": epoch_speed}, step)
    bar.close()
    return PretrainResult(encoder=model.encoder.cpu().eval(), history=history)


# `pretrain`'s keywords that describe where and how one call runs rather than what a config section trains:
# `pretrain_arguments` leaves them to its caller.
RUNTIME_ARGUMENTS = ("checkpoint_path", "device", "log_fn", "progress", "view_workers", "bn_groups")


def pretrain_arguments(section: PretrainConfig, method: str) -> dict[str, Any]:
    """The keyword arguments of `pretrain` that a `pretrain` config section (nanomorph.config.PretrainConfig)
    fixes for `method`: everything but RUNTIME_ARGUMENTS.

    The one mapping from params.yaml to a pretraining run: the pretrain stage and `nanomorph.api.pretrain` both
    call `pretrain(images, **pretrain_arguments(section, method), checkpoint_path=..., device=..., ...)`, so a
    notebook trains exactly what the stage trains (tests/test_api.py).
    """
    p = section
    return dict(
        method=method, arch=p.arch, image_size=p.image_size, batch_size=p.batch_size, epochs=p.epochs,
        optimizer=p.optimizer, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
        warmup_epochs=p.warmup_epochs, temperature=p.temperature, lambd=p.lambd, projector_dims=p.projector_dims,
        crop_side=p.crop_side, flip_p=p.flip_p, jitter_p=p.jitter_p, brightness=p.brightness, contrast=p.contrast,
        seed=p.seed, dihedral=p.dihedral, blur_p=p.blur_p, blur_sigma=p.blur_sigma, noise_std=p.noise_std,
        checkpoint_every=p.checkpoint_every, accumulate_steps=p.accumulate_steps, compile_model=p.compile,
        cpu_bf16=p.cpu_bf16,
    )
