"""SimCLR's NT-Xent loss (Chen et al. 2020), temperature 0.1 as in Lu et al.

Every one of the 2N views is an anchor: its positive is the other view of the same image, its negatives are
the remaining 2N - 2 views. The loss is the cross-entropy of picking the positive among the 2N - 1 candidates
by cosine similarity / temperature, averaged over the anchors. Under torch.distributed the candidates are the
views of ALL ranks (gathered with gradients, so every rank's encoder is pushed apart from the others'
negatives), while the anchors stay local; DDP's gradient averaging then matches one big-batch loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import distributed as dist


def _gather_candidates(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' views (differentiable all_gather) and the offset of this rank's block among them."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    # The functional collective is autograd-aware (unlike dist.all_gather): its backward sums every rank's
    # gradient for this rank's block. It replaces the deprecated torch.distributed.nn.functional.all_gather.
    from torch.distributed._functional_collectives import all_gather_single

    return all_gather_single(z, 0, dist.group.WORLD), dist.get_rank() * z.shape[0]


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent of two (N, D) batches of projections, where z1[i] and z2[i] are views of one image.

    Computed in float32 even inside an autocast region (autocast is switched off here, so the similarity
    matmul is not cast down): exp(sim / 0.1) of half-precision similarities loses the tail of negatives.
    """
    with torch.autocast(z1.device.type, enabled=False):
        return _nt_xent(z1.float(), z2.float(), temperature)


def _nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, D): rows 0..N-1 view 1, rows N..2N-1 view 2
    candidates, offset = _gather_candidates(z)
    logits = z @ candidates.T / temperature
    anchors = torch.arange(2 * n, device=z.device)
    # An anchor is not its own candidate; -inf removes it from the softmax denominator.
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[anchors, anchors + offset] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = (anchors + n) % (2 * n) + offset
    return F.cross_entropy(logits, positives)
