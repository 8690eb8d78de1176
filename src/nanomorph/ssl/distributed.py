"""How a pretraining run is laid out over torch.distributed ranks (rank 0 of 1 without a process group).

This process's rank, the global batch and each rank's slice of every micro-batch, the checks that every rank
runs the same layout, data and settings, and the SyncBatchNorm of CUDA runs. How DDP training uses them is
described in nanomorph.ssl.train.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import distributed as dist
from torch import nn


@dataclass(frozen=True)
class Ranks:
    """This process's place in the torch.distributed job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def current_ranks() -> Ranks:
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


@dataclass(frozen=True)
class Layout:
    """Which images of an optimiser step's batch this rank embeds.

    A step takes `accumulate` consecutive micro-batches of `batch` images (all ranks together) from the
    epoch's shuffle; rank r embeds the r-th of `world` equal slices of every micro-batch.
    """

    batch: int
    accumulate: int
    ranks: Ranks

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


def effective_batch(n_images: int, batch_size: int) -> int:
    """The batch size actually used: full batches only, shrunk to the data set when it is smaller."""
    if n_images < 2:
        raise ValueError(f"pretraining needs at least 2 images (one contrastive pair per batch), got {n_images}")
    if n_images < batch_size:
        warnings.warn(f"only {n_images} images for batch size {batch_size}: training with batch size {n_images}",
                      stacklevel=3)
        return n_images
    return batch_size


def syncs_batchnorm(device: torch.device, world: int) -> bool:
    """Whether a run synchronises BatchNorm across ranks: DDP on CUDA, as the Barlow Twins reference does.
    (torch's SyncBatchNorm refuses CPU tensors, so gloo runs keep per-rank BatchNorm; see the docstring of
    nanomorph.ssl.train.)"""
    return device.type == "cuda" and world > 1


def sync_batchnorm(module: nn.Module, device: torch.device, world: int) -> nn.Module:
    """`module` with every BatchNorm replaced in place by a SyncBatchNorm (same parameters and buffers, same state
    dict keys) when `syncs_batchnorm`, else unchanged."""
    if not syncs_batchnorm(device, world):
        return module
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def check_layout(n_images: int, batch: int, accumulate_steps: int, bn_groups: int, ranks: Ranks) -> Layout:
    if accumulate_steps < 1 or bn_groups < 1:
        raise ValueError(f"accumulate_steps and bn_groups must be >= 1, got {accumulate_steps} and {bn_groups}")
    if batch % ranks.world:
        raise ValueError(f"batch size {batch} does not split evenly over {ranks.world} ranks")
    per_rank = batch // ranks.world
    if per_rank % bn_groups or per_rank // bn_groups < 2:
        raise ValueError(f"{per_rank} images per rank do not form {bn_groups} BatchNorm group(s) of at least 2")
    layout = Layout(batch, accumulate_steps, ranks)
    if n_images < layout.step_images:
        raise ValueError(f"{n_images} images are fewer than one optimiser step's {batch} x {accumulate_steps} "
                         "(batch_size x accumulate_steps)")
    return layout


def agree_across_ranks(run_config: dict[str, Any], ranks: Ranks) -> None:
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
