"""Barlow Twins loss (Zbontar et al. 2021), lambda 0.005 as in Lu et al.

Each embedding dimension is standardised over the batch, the cross-correlation matrix c of the two views is
formed, and the loss drives c towards the identity: invariance (diagonal -> 1) plus lambda-weighted
redundancy reduction (off-diagonal -> 0). Under torch.distributed each rank standardises its own batch and c
is summed over ranks and divided by the global batch size, as in facebookresearch/barlowtwins main.py.
The reference standardises with a SyncBatchNorm; with `sync` (what the training loop passes on CUDA, where the
encoder's BatchNorm is a SyncBatchNorm too) the statistics are those of all ranks' rows, otherwise each rank
standardises its own rows, like the encoder's per-rank BatchNorm on CPU/gloo, where SyncBatchNorm refuses to
run. The sums are autograd-aware all_reduces, so after DDP's gradient averaging every rank holds the exact
gradient of the global loss.

`groups` standardises equal blocks of rows separately: one process computing what `groups` ranks compute.
"""

from __future__ import annotations

import torch
from torch import distributed as dist

_EPS = 1e-5  # BatchNorm1d's default eps, matching the reference's affine-free BatchNorm


def _standardise(z: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (biased) variance per dimension over the batch, as BatchNorm1d(affine=False) in train mode."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + _EPS)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _standardise_across_ranks(z: torch.Tensor) -> torch.Tensor:
    """Standardised over the global batch of every rank, as the reference's SyncBatchNorm does: mean, then biased
    variance, each from an autograd-aware all_reduce of per-rank sums (two passes, for float32 accuracy)."""
    from torch.distributed._functional_collectives import all_reduce

    count = torch.tensor(float(len(z)), device=z.device)
    dist.all_reduce(count)
    mean = all_reduce(z.sum(0), "sum", dist.group.WORLD) / count
    var = all_reduce((z - mean).pow(2).sum(0), "sum", dist.group.WORLD) / count
    return (z - mean) / torch.sqrt(var + _EPS)


def _standardise_blocks(z: torch.Tensor, groups: int, sync: bool = False) -> torch.Tensor:
    if sync and _distributed():
        return _standardise_across_ranks(z)
    if groups == 1:
        return _standardise(z)
    if len(z) % groups:
        raise ValueError(f"{len(z)} rows do not split into {groups} equal standardisation groups")
    return torch.cat([_standardise(block) for block in z.chunk(groups)])


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.005, groups: int = 1,
                      sync: bool = False) -> torch.Tensor:
    """Barlow Twins loss of two (N, D) batches of projections, where z1[i] and z2[i] are views of one image.

    With `groups` > 1 each of that many equal row blocks is standardised on its own statistics. With `sync`
    under torch.distributed every dimension is standardised over all ranks' rows together (the reference's
    SyncBatchNorm; the training loop asks for it where the encoder's BatchNorm is synchronised too, on CUDA).
    Computed in float32 even inside an autocast region (autocast is switched off here): the cross-correlation
    sums N products per entry, which bf16's 8-bit mantissa would round away.
    """
    with torch.autocast(z1.device.type, enabled=False):
        return _barlow_twins(z1.float(), z2.float(), lambd, groups, sync)


def _barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float, groups: int, sync: bool = False) -> torch.Tensor:
    z1n, z2n = _standardise_blocks(z1, groups, sync), _standardise_blocks(z2, groups, sync)
    c = z1n.T @ z2n
    batch = torch.tensor(float(z1.shape[0]), device=c.device)
    if _distributed():
        # Autograd-aware functional all_reduce (torch.distributed.nn.functional.all_reduce is deprecated).
        from torch.distributed._functional_collectives import all_reduce

        c = all_reduce(c, "sum", dist.group.WORLD)
        dist.all_reduce(batch)
    c = c / batch
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    # Mask rather than subtract the diagonal from the total: the total is dominated by the ~1 diagonal terms.
    eye = torch.eye(c.shape[0], dtype=torch.bool, device=c.device)
    off_diag = c.masked_fill(eye, 0.0).pow(2).sum()
    return on_diag + lambd * off_diag
