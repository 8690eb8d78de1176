import math

import torch

from nanomorph.ssl.simclr import nt_xent_loss


def _reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """Anchor-by-anchor cross-entropy over the 2N - 1 other views, written out with explicit loops."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = len(z)
    losses = []
    for i in range(n2):
        positive = (i + n2 // 2) % n2
        others = [j for j in range(n2) if j != i]
        logits = torch.stack([z[i] @ z[j] / t for j in others])
        losses.append(-torch.log_softmax(logits, 0)[others.index(positive)])
    return torch.stack(losses).mean()


def test_matches_explicit_cross_entropy():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for t in (0.1, 0.5):
        expected = _reference_nt_xent(z1, z2, t)
        assert torch.allclose(nt_xent_loss(z1, z2, t).double(), expected, rtol=1e-5, atol=1e-6)


def test_symmetric_in_the_two_views():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    assert torch.allclose(nt_xent_loss(z1, z2), nt_xent_loss(z2, z1), atol=1e-6)


def test_minimal_for_identical_views_with_orthogonal_negatives():
    n, t = 4, 0.1
    z = torch.eye(n, 8) * 3.0  # orthogonal rows; the scale must not matter after normalisation
    loss = nt_xent_loss(z, z.clone(), t)
    # Positive cosine 1, the 2N - 2 negatives cosine 0: loss = log(1 + (2N - 2) e^{-1/t}), the least possible
    # with negatives no more than orthogonal.
    assert math.isclose(loss.item(), math.log1p((2 * n - 2) * math.exp(-1 / t)), rel_tol=1e-3)  # float32 log-softmax
    g = torch.Generator().manual_seed(2)
    noisy = nt_xent_loss(z, z + torch.randn(n, 8, generator=g), t)
    swapped = nt_xent_loss(z, z.roll(1, dims=0), t)  # every positive pair orthogonal
    assert noisy > loss + 1e-3
    assert swapped > math.log(2 * n - 1)  # worse than not knowing at all


def test_gradient_is_finite_and_reaches_both_views():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(8, 32, generator=g, requires_grad=True)
    z2 = torch.randn(8, 32, generator=g, requires_grad=True)
    nt_xent_loss(z1, z2).backward()
    for grad in (z1.grad, z2.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_float32_inside_a_bf16_autocast_region():
    # The training loop runs the encoder under bf16 autocast; the loss must not inherit it (issue 18).
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
    plain = nt_xent_loss(z1, z2, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = nt_xent_loss(z1, z2, 0.1)
        # The same similarity matmul left to autocast is computed in bf16 and rounds visibly:
        z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
        assert (z @ z.T).dtype == torch.bfloat16
    assert inside.dtype == torch.float32
    assert torch.equal(inside, plain)
