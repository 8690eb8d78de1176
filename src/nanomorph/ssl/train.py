"""Self-supervised pretraining of a ResNet encoder on unlabelled EM images (SimCLR or Barlow Twins).

The loop is the paper's: two random views per image, encoder -> projector -> loss, SGD with momentum and a
per-step cosine decay of the learning rate (optionally after a linear warm-up).

Resumability: all randomness of a step is derived from (seed, step) or (seed, epoch) -- the epoch's shuffle
from its own seeded generator, the step's views from torch's generator reseeded inside a forked RNG scope --
so no generator state has to be carried over. A checkpoint (model, projector, optimiser, scheduler, grad
scaler, step, history, running epoch sums) is written atomically every `checkpoint_every` optimiser steps and
at the end, and a run that finds its checkpoint resumes from it and replays exactly the steps an
uninterrupted run would have taken (bitwise on CPU with deterministic algorithms). The same purity lets
DataLoader workers build upcoming views ahead of the trainer (`view_workers`) without changing any result.

Every epoch a collapse monitor embeds a fixed batch and records the spread of the projections and the
effective rank of the encoder features, warning when the projections collapse to a point.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from nanomorph.models.encoder import Projector, ResNetEncoder, normalise
from nanomorph.ssl.barlow_twins import barlow_twins_loss
from nanomorph.ssl.lars import LARS
from nanomorph.ssl.simclr import nt_xent_loss
from nanomorph.ssl.views import make_view_transform, two_views

log = logging.getLogger(__name__)

METHODS = ("simclr", "barlow_twins")
CHECKPOINT_FORMAT = 1
MONITOR_IMAGES = 256  # size of the fixed batch the collapse monitor embeds every epoch
# L2-normalised embeddings spread over D dims have a per-dim std near 1/sqrt(D); a collapsed projector
# (every image mapped to one point) has std near 0. Warn below this fraction of the spread value.
COLLAPSE_STD_FRACTION = 0.1

LogFn = Callable[[dict[str, float], int], None]


@dataclass
class PretrainResult:
    """The trained encoder (eval mode, CPU) and one metrics dict per completed epoch."""

    encoder: ResNetEncoder
    history: list[dict[str, float]] = field(default_factory=list)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers, identical in every process (Python's str hash is salted per process)."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred (B, D) features (Roy & Vetterli 2007).

    Centring removes the mean feature, which after ReLU and pooling would otherwise dominate the spectrum.
    """
    centred = features.double() - features.double().mean(0)
    singular = torch.linalg.svdvals(centred)
    if singular.sum() == 0:
        return 0.0
    p = singular / singular.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier per step: linear ramp over `warmup_steps`, then cosine from 1 down to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _effective_batch(n_images: int, batch_size: int) -> int:
    """The batch size actually used: full batches only, shrunk to the data set when it is smaller."""
    if n_images < 2:
        raise ValueError(f"pretraining needs at least 2 images (one contrastive pair per batch), got {n_images}")
    if n_images < batch_size:
        warnings.warn(f"only {n_images} images for batch size {batch_size}: training with batch size {n_images}",
                      stacklevel=3)
        return n_images
    return batch_size


def _epoch_order(n_images: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of one epoch, a function of (seed, epoch) only so a resumed run can recompute it."""
    return torch.randperm(n_images, generator=torch.Generator().manual_seed(derived_seed(seed, epoch, 1)))


def _step_views(data: torch.Tensor, transform: Callable, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of a batch, drawn from torch's generator reseeded by (seed, step).

    fork_rng restores the caller's generator afterwards, so the loop neither disturbs nor depends on it. Only
    the CPU generator is reseeded (the views are made on the CPU), which keeps CUDA untouched in workers.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(derived_seed(seed, step, 2))
        return two_views(data, transform)


def _loss_fn(method: str, temperature: float, lambd: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if method == "simclr":
        return lambda z1, z2: nt_xent_loss(z1, z2, temperature)
    if method == "barlow_twins":
        return lambda z1, z2: barlow_twins_loss(z1, z2, lambd)
    raise ValueError(f"unknown pretraining method '{method}' (choose from {', '.join(METHODS)})")


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only: bf16 where the GPU has it (no loss scaling needed), else fp16."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return x.to(device)


def _embed(encoder: nn.Module, projector: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    features = encoder(normalise(x))
    return features, projector(features)


def _train_step(encoder: nn.Module, projector: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                scheduler: LambdaLR, scaler: torch.amp.GradScaler, views: tuple[torch.Tensor, torch.Tensor],
                device: torch.device, amp_dtype: torch.dtype | None) -> float:
    """One optimiser step on a pair of view batches; returns the loss."""
    v1, v2 = (_to_device(v, device) for v in views)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    with autocast:
        # Each view is its own forward pass, so BatchNorm statistics never mix the two views (as in Barlow Twins).
        _, z1 = _embed(encoder, projector, v1)
        _, z2 = _embed(encoder, projector, v2)
        loss = loss_fn(z1, z2)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss.item()


@contextlib.contextmanager
def _buffers_restored(*modules: nn.Module):
    """Undo any change to the modules' buffers (BatchNorm running statistics) made inside the block."""
    saved = [{name: buf.clone() for name, buf in m.named_buffers()} for m in modules]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(modules, saved):
                for name, buf in m.named_buffers():
                    buf.copy_(buffers[name])


@torch.no_grad()
def _monitor(encoder: nn.Module, projector: nn.Module, batch: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Collapse indicators on a fixed batch: per-dim std of L2-normalised projections, rank of the features.

    The models stay in train mode (BatchNorm on batch statistics, as the loss sees them): early in training
    the running statistics are still near their init, and eval mode would report a spurious collapse.
    The running statistics are restored afterwards, so monitoring does not alter training.
    """
    with _buffers_restored(encoder, projector):
        features, z = _embed(encoder, projector, _to_device(batch, device))
    z = F.normalize(z.float(), dim=1)
    return {"embedding_std": float(z.std(0).mean()), "effective_rank": effective_rank(features.float().cpu())}


def _warn_if_collapsed(metrics: dict[str, float], dim: int, epoch: int) -> None:
    threshold = COLLAPSE_STD_FRACTION / math.sqrt(dim)
    if metrics["embedding_std"] < threshold:
        message = (f"epoch {epoch}: embedding std {metrics['embedding_std']:.2e} < {threshold:.2e} "
                   f"-- the projections are collapsing to a point")
        log.warning(message)
        warnings.warn(message, stacklevel=3)


def _save_checkpoint(path: Path, blob: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(blob, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint of another run: resuming it would silently mix two configurations."""
    diffs = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if diffs:
        detail = ", ".join(f"{k}: checkpoint {old!r} vs now {new!r}" for k, (old, new) in diffs.items())
        raise ValueError(f"{path} belongs to a different pretraining run ({detail}); delete it to start afresh")


def _as_batch_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) float32 [0, 1] array -> (N, 1, H, W) tensor, validated."""
    if images.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), got {images.shape}")
    data = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    if not torch.isfinite(data).all() or data.min() < 0 or data.max() > 1:
        raise ValueError("images must be finite intensities in [0, 1]")
    return data


class _StepViews(torch.utils.data.Dataset):
    """Item i = the two views of optimiser step `first_step + i`: its batch of the (seed, epoch) shuffle,
    augmented under the (seed, step) seed.

    Because every item is a pure function of its step, DataLoader workers can build upcoming steps' views in
    parallel with training and still produce exactly what the main process would.
    """

    def __init__(self, data: torch.Tensor, transform: Callable, seed: int, batch: int, first_step: int,
                 total_steps: int):
        self.data, self.transform, self.seed, self.batch = data, transform, seed, batch
        self.steps_per_epoch = len(data) // batch
        self.first_step, self.total_steps = first_step, total_steps
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, shuffle) of the last item, reused

    def __len__(self) -> int:
        return self.total_steps - self.first_step

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.first_step + i
        epoch, b = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, _epoch_order(len(self.data), self.seed, epoch))
        rows = self._order[1][b * self.batch:(b + 1) * self.batch]
        return _step_views(self.data[rows], self.transform, self.seed, step)


def _single_threaded_worker(_: int) -> None:
    # A worker augments one small image at a time; intra-op threads would only contend with the trainer's.
    torch.set_num_threads(1)


def _view_loader(views: _StepViews, workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        views, batch_size=None, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
        worker_init_fn=_single_threaded_worker if workers else None, prefetch_factor=2 if workers else None)


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


def _default_view_workers(device: torch.device) -> int:
    """No workers on CPU, where they would take cores from the model and views cost a few % of a step
    (benchmarks/pretrain_throughput.py); on CUDA the GPU step is short, so views are built ahead in workers."""
    return 0 if device.type != "cuda" else max(1, min(4, (os.cpu_count() or 2) - 1))


def _empty_sums() -> dict[str, float]:
    return {"loss": 0.0, "images": 0, "seconds": 0.0}


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
    device: str = "cpu",
    log_fn: LogFn | None = None,
    progress: bool = True,
    view_workers: int | None = None,
) -> PretrainResult:
    """Pretrain ResNetEncoder(arch, 1) + Projector with SimCLR or Barlow Twins on (N, H, W) [0, 1] images.

    `log_fn(metrics, step)` receives {"loss", "lr", "images_per_s"} after every optimiser step and, after every
    epoch, {"epoch/loss", "epoch/lr", "epoch/images_per_s", "epoch/embedding_std", "epoch/effective_rank"}
    (prefixed so per-step and per-epoch series never share a metric name). `images_per_s` counts source
    images (each gives two views) over the time of getting the views + forward + backward + step.
    `view_workers` DataLoader processes build views ahead of the trainer (None: 0 on CPU, up to 4 on CUDA);
    the views, and so the results, are the same for any number of workers.
    """
    loss_fn = _loss_fn(method, temperature, lambd)
    data = _as_batch_tensor(images)
    batch = _effective_batch(len(data), batch_size)
    steps_per_epoch = len(data) // batch
    total_steps = epochs * steps_per_epoch
    dev = torch.device(device)
    amp_dtype = _amp_dtype(dev)
    run_config = {
        "format": CHECKPOINT_FORMAT, "method": method, "arch": arch, "image_size": image_size, "batch": batch,
        "epochs": epochs, "optimizer": optimizer, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs, "temperature": temperature, "lambd": lambd,
        "projector_dims": list(projector_dims), "crop_side": list(crop_side), "flip_p": flip_p,
        "jitter_p": jitter_p, "brightness": brightness, "contrast": contrast, "seed": seed,
        "data_sha256": hashlib.sha256(data.numpy().data).hexdigest(),
    }
    model = _build_model(arch, projector_dims, seed, dev, optimizer, lr, momentum, weight_decay,
                         warmup_epochs * steps_per_epoch, total_steps)
    transform = make_view_transform(image_size, crop_side, flip_p, jitter_p, brightness, contrast)

    step, history, sums = 0, [], _empty_sums()  # sums: running totals of the current epoch
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        blob = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        _check_resumable(blob["config"], run_config, Path(checkpoint_path))
        model.load_state_dict(blob)
        step, history, sums = blob["step"], blob["history"], blob["epoch_sums"]
        log.info("resuming from step %d of %d (%s)", step, total_steps, checkpoint_path)

    # A fixed, in-distribution batch for the collapse monitor: one view per image under a fixed seed.
    monitor_batch, _ = _step_views(data[:MONITOR_IMAGES], transform, seed, -1)
    workers = _default_view_workers(dev) if view_workers is None else view_workers
    step_views = iter(_view_loader(_StepViews(data, transform, seed, batch, step, total_steps), workers, dev))
    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc=f"pretrain {method}", unit="step")
    while step < total_steps:
        epoch, b = divmod(step, steps_per_epoch)
        started = time.perf_counter()
        lr_now = model.scheduler.get_last_lr()[0]
        loss = _train_step(model.encoder, model.projector, loss_fn, model.optimizer, model.scheduler,
                           model.scaler, next(step_views), dev, amp_dtype)
        seconds = time.perf_counter() - started
        if not math.isfinite(loss):
            raise FloatingPointError(f"{method} loss became {loss} at step {step}; lower the learning rate")
        step += 1
        sums = {"loss": sums["loss"] + loss, "images": sums["images"] + batch, "seconds": sums["seconds"] + seconds}
        step_metrics = {"loss": loss, "lr": lr_now, "images_per_s": batch / seconds}
        epoch_metrics = None
        if b == steps_per_epoch - 1:
            epoch_metrics = {"epoch": epoch + 1, "loss": sums["loss"] / steps_per_epoch, "lr": lr_now,
                             "images_per_s": sums["images"] / sums["seconds"],
                             **_monitor(model.encoder, model.projector, monitor_batch, dev)}
            _warn_if_collapsed(epoch_metrics, projector_dims[-1], epoch + 1)
            history.append(epoch_metrics)
            sums = _empty_sums()
        if checkpoint_path is not None and (step == total_steps
                                            or (checkpoint_every > 0 and step % checkpoint_every == 0)):
            _save_checkpoint(Path(checkpoint_path), {**model.state_dict(), "config": run_config, "step": step,
                                                     "history": history, "epoch_sums": sums})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{step_metrics['images_per_s']:.1f}")
        if log_fn is not None:
            log_fn(step_metrics, step)
            if epoch_metrics is not None:
                log_fn({f"epoch/{k}": v for k, v in epoch_metrics.items() if k != "epoch"}, step)
    bar.close()
    return PretrainResult(encoder=model.encoder.cpu().eval(), history=history)
