"""Barlow Twins loss (Zbontar et al. 2021), lambda 0.005 as in Lu et al.

Each embedding dimension is standardised over the batch, the cross-correlation matrix c of the two views is
formed, and the loss drives c towards the identity: invariance (diagonal -> 1) plus lambda-weighted
redundancy reduction (off-diagonal -> 0). Under torch.distributed each rank standardises its own batch and c
is summed over ranks and divided by the global batch size, as in facebookresearch/barlowtwins main.py
(whose standardisation is a SyncBatchNorm; here it stays per rank, like the encoder's BatchNorm, since
SyncBatchNorm refuses CPU tensors -- see ssl/train.py). The sum is an autograd-aware all_reduce, so after
DDP's gradient averaging every rank holds the exact gradient of the global loss.

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


def _standardise_blocks(z: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return _standardise(z)
    if len(z) % groups:
        raise ValueError(f"{len(z)} rows do not split into {groups} equal standardisation groups")
    return torch.cat([_standardise(block) for block in z.chunk(groups)])


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.005, groups: int = 1) -> torch.Tensor:
    """Barlow Twins loss of two (N, D) batches of projections, where z1[i] and z2[i] are views of one image.

    With `groups` > 1 each of that many equal row blocks is standardised on its own statistics.
    """
    # float32 even under autocast
    z1n, z2n = _standardise_blocks(z1.float(), groups), _standardise_blocks(z2.float(), groups)
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
