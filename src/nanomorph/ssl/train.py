"""Self-supervised pretraining of a ResNet encoder on unlabelled EM images (SimCLR or Barlow Twins).

The loop is the paper's: two random views per image, encoder -> projector -> loss, SGD with momentum and a
per-step cosine decay of the learning rate (optionally after a linear warm-up).

Resumability: all randomness of a step is derived from (seed, step) or (seed, epoch) -- the epoch's shuffle
from its own seeded generator, each image's views from torch's generator reseeded by (seed, step, position of
the image in the step's batch) inside a forked RNG scope -- so no generator state has to be carried over.
A checkpoint (model, projector, optimiser, scheduler, grad scaler, step, history, running epoch sums) is
written atomically every `checkpoint_every` optimiser steps and at the end, and a run that finds its
checkpoint resumes from it and replays exactly the steps an uninterrupted run would have taken (bitwise on CPU
with deterministic algorithms). The same purity lets
DataLoader workers build upcoming views ahead of the trainer (`view_workers`) without changing any result.

Every epoch a collapse monitor embeds a fixed batch and records the spread of the projections and the
effective rank of the encoder features, warning when the projections collapse to a point.

Gradient accumulation (`accumulate_steps` = k): an optimiser step takes k micro-batches of `batch_size`
images in turn and follows the gradient of the MEAN of their k losses, so it sees batch_size * k images.
Contrastive losses are not sums over images: each micro-batch's negatives (SimCLR) and cross-correlation
(Barlow Twins) come from that micro-batch alone, so accumulation gives the memory of a small batch and the
step count of a big one, not the loss of the big batch. The learning-rate schedule counts optimiser steps.

Distributed data parallel: when torch.distributed is initialised with world size W > 1 (e.g. under torchrun),
encoder + projector are wrapped in DistributedDataParallel. Every rank draws the same seeded shuffle and takes
its own slice of each micro-batch, so the global micro-batch is still `batch_size` (batch_size / W images per
rank), and an image's views depend on its position in the global batch, not on W. The losses gather the
negatives (NT-Xent) and sum the cross-correlation (Barlow Twins) over ranks, and DDP averages the gradients,
so every rank steps along the gradient of the global batch's loss. On CUDA every BatchNorm becomes a
SyncBatchNorm and Barlow Twins standardises over all ranks (as the reference implementation does). On CPU
(gloo) BatchNorm stays per rank -- torch's SyncBatchNorm refuses CPU tensors ("expected input tensor to be on
GPU") -- hence there the single-process equivalent of W ranks is `bn_groups=W`: every BatchNorm (and the Barlow
Twins standardisation) normalises each of W equal blocks of the batch on its own statistics; since DDP
broadcasts rank 0's buffers, only the first block updates the running statistics. tests/ssl/test_pretrain_ddp.py
compares two gloo ranks with that reference. Only rank 0 shows progress, calls `log_fn`, warns and writes
checkpoints; it reads the checkpoint and broadcasts it, so every rank resumes from the same state even
without a shared file system.
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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn
from torch.func import functional_call
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from nanomorph.models.encoder import Projector, ResNetEncoder, normalise
from nanomorph.models.precision import cpu_bf16_dtype
from nanomorph.models.weights import load_weights
from nanomorph.ssl.barlow_twins import barlow_twins_loss
from nanomorph.ssl.lars import LARS
from nanomorph.ssl.simclr import nt_xent_loss
from nanomorph.ssl.views import make_view_transform

if TYPE_CHECKING:
    from nanomorph.config import PretrainConfig

log = logging.getLogger(__name__)

METHODS = ("simclr", "barlow_twins")
CHECKPOINT_FORMAT = 3  # 2: views seeded per image position; accumulation and BatchNorm groups recorded;
#                        3: no wall-clock throughput in the history or the running epoch sums
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


@dataclass(frozen=True)
class _Ranks:
    """This process's place in the torch.distributed job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _current_ranks() -> _Ranks:
    if dist.is_available() and dist.is_initialized():
        return _Ranks(dist.get_rank(), dist.get_world_size())
    return _Ranks()


@dataclass(frozen=True)
class _Layout:
    """Which images of an optimiser step's batch this rank embeds.

    A step takes `accumulate` consecutive micro-batches of `batch` images (all ranks together) from the
    epoch's shuffle; rank r embeds the r-th of `world` equal slices of every micro-batch.
    """

    batch: int
    accumulate: int
    ranks: _Ranks

    @property
    def per_rank(self) -> int:
        return self.batch // self.ranks.world

    @property
    def step_images(self) -> int:
        return self.batch * self.accumulate

    def micro_positions(self) -> list[range]:
        """Positions (within the step's images) of this rank's slice of each micro-batch."""
        starts = (m * self.batch + self.ranks.rank * self.per_rank for m in range(self.accumulate))
        return [range(start, start + self.per_rank) for start in starts]


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


def _step_views(images: torch.Tensor, transform: Callable, seed: int, step: int,
                first_position: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of each (1, H, W) image, the image at `first_position + i` of the step's batch drawn
    from torch's generator reseeded by (seed, step, that position).

    Seeding per position makes a view independent of which rank or micro-batch embeds the image. fork_rng
    restores the caller's generator afterwards, so the loop neither disturbs nor depends on it. Only the CPU
    generator is reseeded (the views are made on the CPU), which keeps CUDA untouched in workers.
    """
    view1, view2 = [], []
    with torch.random.fork_rng(devices=[]):
        for position, image in enumerate(images, start=first_position):
            torch.default_generator.manual_seed(derived_seed(seed, step, position, 2))
            # Called per image, like views.two_views, so no two images or views share parameters.
            view1.append(transform(image))
            view2.append(transform(image))
    return torch.stack(view1), torch.stack(view2)


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


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return x.to(device)


def _embed(encoder: nn.Module, projector: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    features = encoder(normalise(x))
    return features, projector(features)


def _scratch_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buf.clone() for name, buf in module.named_buffers()}


class TwinEmbedder(nn.Module):
    """Encoder + projector applied to both views: the one module that DDP wraps and torch.compile compiles.

    Each view is its own forward pass, so BatchNorm statistics never mix the two views (as in Barlow Twins).
    With `bn_groups` > 1 each view batch is embedded in that many equal blocks, each normalised by its own
    BatchNorm statistics -- what that many DDP ranks compute -- and, as DDP broadcasts rank 0's buffers,
    only the first block updates the running statistics.
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module, bn_groups: int = 1):
        super().__init__()
        self.encoder, self.projector, self.bn_groups = encoder, projector, bn_groups

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn_groups == 1:
            return _embed(self.encoder, self.projector, x)[1]
        first, *rest = x.chunk(self.bn_groups)
        z = [_embed(self.encoder, self.projector, first)[1]]
        for block in rest:
            # Scratch copies of the buffers take these blocks' running-statistics updates, which are dropped.
            # (Copying saved values back instead would bump the buffers' version, which BatchNorm's backward
            # checks.)
            features = functional_call(self.encoder, _scratch_buffers(self.encoder), (normalise(block),))
            z.append(functional_call(self.projector, _scratch_buffers(self.projector), (features,)))
        return torch.cat(z)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._project(view1), self._project(view2)


def _train_step(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, scheduler: LambdaLR,
                scaler: torch.amp.GradScaler, micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
                device: torch.device, amp_dtype: torch.dtype | None, ddp: nn.Module | None = None) -> float:
    """One optimiser step on the gradient of the mean loss of the micro-batches' view pairs.

    `model` maps a pair of view batches to their projections (a TwinEmbedder, maybe DDP-wrapped or compiled);
    `ddp` is the DistributedDataParallel wrapper when there is one: its gradient all-reduce then runs once,
    after the last micro-batch. Returns the mean loss, averaged over ranks (ends in .item(): device synced).
    """
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    optimizer.zero_grad(set_to_none=True)
    k = len(micro_batches)
    total = torch.zeros((), device=device)
    for i, views in enumerate(micro_batches):
        v1, v2 = (_to_device(v, device) for v in views)
        skip_sync = ddp.no_sync() if ddp is not None and i < k - 1 else contextlib.nullcontext()
        with skip_sync:
            with autocast:
                z1, z2 = model(v1, v2)
            loss = loss_fn(z1, z2)  # outside autocast: the losses compute in float32 (they also disable it)
            scaler.scale(loss / k).backward()
        total += loss.detach().float()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    mean = total / k
    if ddp is not None:  # each rank's loss covers its own anchors (SimCLR); report the global batch's
        dist.all_reduce(mean)
        mean /= dist.get_world_size()
    return mean.item()


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
    diffs = {k: (saved.get(k), current.get(k)) for k in sorted(current.keys() | saved.keys())
             if saved.get(k) != current.get(k)}
    if diffs:
        detail = ", ".join(f"{k}: checkpoint {old!r} vs now {new!r}" for k, (old, new) in diffs.items())
        raise ValueError(f"{path} belongs to a different pretraining run ({detail}); delete it to start afresh")


def _as_batch_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) float32 [0, 1] array -> (N, 1, H, W) tensor, validated.

    A read-only array (a memory-mapped image cache, nanomorph.data.cache) is used in place, not copied:
    the loop only ever reads the data, so torch's warning about non-writable arrays does not apply.
    """
    if images.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), got {images.shape}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        data = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    if not torch.isfinite(data).all() or data.min() < 0 or data.max() > 1:
        raise ValueError("images must be finite intensities in [0, 1]")
    return data


class _StepViews(torch.utils.data.Dataset):
    """Item i = this rank's view pairs, one per micro-batch, of optimiser step `first_step + i`: its images of
    the (seed, epoch) shuffle, augmented under (seed, step, position) seeds.

    Because every item is a pure function of its step, DataLoader workers can build upcoming steps' views in
    parallel with training and still produce exactly what the main process would.
    """

    def __init__(self, data: torch.Tensor, transform: Callable, seed: int, layout: _Layout, first_step: int,
                 total_steps: int):
        self.data, self.transform, self.seed, self.layout = data, transform, seed, layout
        self.steps_per_epoch = len(data) // layout.step_images
        self.first_step, self.total_steps = first_step, total_steps
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, shuffle) of the last item, reused

    def __len__(self) -> int:
        return self.total_steps - self.first_step

    def __getitem__(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        step = self.first_step + i
        epoch, b = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, _epoch_order(len(self.data), self.seed, epoch))
        size = self.layout.step_images
        rows = self._order[1][b * size:(b + 1) * size]
        return [_step_views(self.data[rows[p.start:p.stop]], self.transform, self.seed, step, p.start)
                for p in self.layout.micro_positions()]


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


def syncs_batchnorm(device: torch.device, world: int) -> bool:
    """Whether a run synchronises BatchNorm across ranks: DDP on CUDA, as the Barlow Twins reference does.
    (torch's SyncBatchNorm refuses CPU tensors, so gloo runs keep per-rank BatchNorm; see the module docstring.)"""
    return device.type == "cuda" and world > 1


def sync_batchnorm(module: nn.Module, device: torch.device, world: int) -> nn.Module:
    """`module` with every BatchNorm replaced in place by a SyncBatchNorm (same parameters and buffers, same state
    dict keys) when `syncs_batchnorm`, else unchanged."""
    if not syncs_batchnorm(device, world):
        return module
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def _default_view_workers(device: torch.device) -> int:
    """No workers on CPU, where they would take cores from the model and views cost a few % of a step
    (benchmarks/pretrain_throughput.py); on CUDA the GPU step is short, so views are built ahead in workers."""
    return 0 if device.type != "cuda" else max(1, min(4, (os.cpu_count() or 2) - 1))


def _empty_sums() -> dict[str, float]:
    return {"loss": 0.0}


def _check_layout(n_images: int, batch: int, accumulate_steps: int, bn_groups: int, ranks: _Ranks) -> _Layout:
    if accumulate_steps < 1 or bn_groups < 1:
        raise ValueError(f"accumulate_steps and bn_groups must be >= 1, got {accumulate_steps} and {bn_groups}")
    if batch % ranks.world:
        raise ValueError(f"batch size {batch} does not split evenly over {ranks.world} ranks")
    per_rank = batch // ranks.world
    if per_rank % bn_groups or per_rank // bn_groups < 2:
        raise ValueError(f"{per_rank} images per rank do not form {bn_groups} BatchNorm group(s) of at least 2")
    layout = _Layout(batch, accumulate_steps, ranks)
    if n_images < layout.step_images:
        raise ValueError(f"{n_images} images are fewer than one optimiser step's {batch} x {accumulate_steps} "
                         "(batch_size x accumulate_steps)")
    return layout


def _agree_across_ranks(run_config: dict[str, Any], ranks: _Ranks) -> None:
    """Refuse to start when ranks differ in data or settings (e.g. nodes holding different image sets)."""
    if ranks.world == 1:
        return
    configs: list[Any] = [None] * ranks.world
    dist.all_gather_object(configs, run_config)
    for rank, other in enumerate(configs):
        diffs = sorted(k for k in run_config if other.get(k) != run_config[k])
        if diffs:
            raise ValueError(f"rank {rank} differs from rank {ranks.rank} in {', '.join(diffs)}: every rank must "
                             "pretrain on the same images with the same settings")


def _load_checkpoint(path: Path | None, ranks: _Ranks) -> dict[str, Any] | None:
    """Rank 0's checkpoint, if any, on every rank (broadcast: other ranks need not see rank 0's files)."""
    blob = None
    if ranks.main and path is not None and Path(path).exists():
        blob = load_weights(path)
    if ranks.world > 1:
        holder = [blob]
        dist.broadcast_object_list(holder, src=0)
        blob = holder[0]
    return blob


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
    ranks = _current_ranks()
    dev = torch.device(device)
    loss_fn = _loss_fn(method, temperature, lambd, bn_groups, sync=syncs_batchnorm(dev, ranks.world))
    data = _as_batch_tensor(images)
    batch = _effective_batch(len(data), batch_size)
    layout = _check_layout(len(data), batch, accumulate_steps, bn_groups, ranks)
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
    _agree_across_ranks(run_config, ranks)
    model = _build_model(arch, projector_dims, seed, dev, optimizer, lr, momentum, weight_decay,
                         warmup_epochs * steps_per_epoch, total_steps)
    transform = make_view_transform(image_size, crop_side, flip_p, jitter_p, brightness, contrast, dihedral,
                                    blur_p, blur_sigma, noise_std)

    step, history, sums = 0, [], _empty_sums()  # sums: running totals of the current epoch
    # Throughput is wall-clock, so it goes to log_fn only: history and checkpoints hold only numbers that a
    # rerun reproduces (they end up in dvc outputs, which a fresh clone must reproduce bit for bit).
    timed_images, timed_seconds = 0, 0.0
    blob = _load_checkpoint(checkpoint_path, ranks)
    if blob is not None:
        _check_resumable(blob["config"], run_config, Path(checkpoint_path or "rank 0's checkpoint"))
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

    # A fixed, in-distribution batch for the collapse monitor: one view per image under a fixed seed.
    monitor_batch, _ = _step_views(data[:MONITOR_IMAGES], transform, seed, -1)
    workers = _default_view_workers(dev) if view_workers is None else view_workers
    step_views = iter(_view_loader(_StepViews(data, transform, seed, layout, step, total_steps), workers, dev))
    bar = tqdm(total=total_steps, initial=step, disable=not (progress and ranks.main), desc=f"pretrain {method}",
               unit="step")
    while step < total_steps:
        epoch, b = divmod(step, steps_per_epoch)
        started = time.perf_counter()
        lr_now = model.scheduler.get_last_lr()[0]
        loss = _train_step(runner, loss_fn, model.optimizer, model.scheduler, model.scaler, next(step_views),
                           dev, amp_dtype, ddp)
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
            # Every rank computes the monitor (the same numbers), so every rank's history is rank 0's.
            epoch_metrics = {"epoch": epoch + 1, "loss": sums["loss"] / steps_per_epoch, "lr": lr_now,
                             **_monitor(model.encoder, model.projector, monitor_batch, dev)}
            epoch_speed = timed_images / timed_seconds  # over the steps this process ran
            if ranks.main:
                _warn_if_collapsed(epoch_metrics, projector_dims[-1], epoch + 1)
            history.append(epoch_metrics)
            sums, timed_images, timed_seconds = _empty_sums(), 0, 0.0
        if ranks.main and checkpoint_path is not None and (
                step == total_steps or (checkpoint_every > 0 and step % checkpoint_every == 0)):
            _save_checkpoint(Path(checkpoint_path), {**model.state_dict(), "config": run_config, "step": step,
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
