"""The losses' torch.distributed paths on two CPU (gloo) processes against single-process references."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanomorph.ssl.barlow_twins import barlow_twins_loss
from nanomorph.ssl.simclr import nt_xent_loss

WORLD, N_PER_RANK, DIM = 2, 4, 6


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(WORLD * N_PER_RANK, DIM, generator=g)
    return z1, z1 + 0.5 * torch.randn(WORLD * N_PER_RANK, DIM, generator=g)


def _barlow_blockwise(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Single-process Barlow Twins with each rank's block standardised on its own (unsynchronised BN)."""
    def standardise(z):
        return torch.cat([(b - b.mean(0)) / torch.sqrt(b.var(0, unbiased=False) + 1e-5) for b in z.split(N_PER_RANK)])

    c = standardise(z1).T @ standardise(z2) / len(z1)
    off = c - torch.diag(torch.diagonal(c))
    return (torch.diagonal(c) - 1).pow(2).sum() + 0.005 * off.pow(2).sum()


def _reference(loss_fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and gradients of the whole global batch in one process."""
    z1, z2 = (z.requires_grad_() for z in _global_batch())
    loss = loss_fn(z1, z2)
    loss.backward()
    return loss.detach(), z1.grad, z2.grad


def _check_rank(loss_fn, reference, rank: int) -> None:
    """The mean of the ranks' losses equals the reference, and each rank's gradient is world-size times the
    reference's (DDP averages the ranks' gradients, which recovers the reference gradient)."""
    ref_loss, ref_g1, ref_g2 = reference
    z1, z2 = _global_batch()
    rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    l1, l2 = z1[rows].clone().requires_grad_(), z2[rows].clone().requires_grad_()
    local = loss_fn(l1, l2)
    local.backward()
    total = local.detach().clone()
    dist.all_reduce(total)
    torch.testing.assert_close(total / WORLD, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l1.grad, WORLD * ref_g1[rows], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(l2.grad, WORLD * ref_g2[rows], rtol=1e-4, atol=1e-6)


def _worker(rank: int, init_file: str, simclr_ref, barlow_ref) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        # With negatives gathered across ranks, SimCLR is exactly the NT-Xent of the whole global batch.
        _check_rank(nt_xent_loss, simclr_ref, rank)
        _check_rank(barlow_twins_loss, barlow_ref, rank)
    finally:
        dist.destroy_process_group()


def test_losses_across_two_ranks_match_single_process(tmp_path):
    references = (_reference(nt_xent_loss), _reference(_barlow_blockwise))
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), *references), nprocs=WORLD, join=True)
