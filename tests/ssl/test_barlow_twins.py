import numpy as np
import torch

from nanomorph.ssl.barlow_twins import barlow_twins_loss


def _hadamard_columns(n: int, d: int) -> torch.Tensor:
    """d mutually orthogonal, zero-mean, unit-variance columns of length n (Sylvester Hadamard, ones dropped)."""
    h = np.array([[1.0]])
    while len(h) < n:
        h = np.block([[h, h], [h, -h]])
    return torch.tensor(h[:, 1:d + 1], dtype=torch.float32)


def test_zero_for_identical_decorrelated_views():
    z = _hadamard_columns(16, 8)
    assert barlow_twins_loss(z, z.clone()).item() < 1e-6


def test_matches_pearson_correlation_formula():
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(32, 6))
    z2 = z1 + rng.normal(scale=0.7, size=(32, 6))
    r = np.corrcoef(z1.T, z2.T)[:6, 6:]  # r[i, j] = corr(z1[:, i], z2[:, j]), the loss's c without eps
    lambd = 0.05
    expected = ((1 - np.diag(r)) ** 2).sum() + lambd * (r**2).sum() - lambd * (np.diag(r) ** 2).sum()
    got = barlow_twins_loss(torch.tensor(z1, dtype=torch.float32), torch.tensor(z2, dtype=torch.float32), lambd)
    assert np.isclose(got.item(), expected, rtol=1e-3)


def test_penalises_redundant_dimensions_and_mismatched_views():
    z = _hadamard_columns(16, 4)
    redundant = torch.cat([z, z[:, :1]], dim=1)  # dim 4 copies dim 0: c[0, 4] = c[4, 0] = 1
    assert np.isclose(barlow_twins_loss(redundant, redundant, lambd=0.005).item(), 2 * 0.005, rtol=1e-3)
    g = torch.Generator().manual_seed(0)
    assert barlow_twins_loss(z, torch.randn(16, 4, generator=g)).item() > 0.1


def test_invariant_to_per_dimension_affine_rescaling():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    scale, shift = torch.rand(8, generator=g) * 5 + 0.1, torch.randn(8, generator=g) * 3
    assert torch.allclose(barlow_twins_loss(z1, z2), barlow_twins_loss(z1 * scale + shift, z2), rtol=1e-4)


def test_gradient_flows_to_both_views():
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(16, 8, generator=g, requires_grad=True)
    z2 = torch.randn(16, 8, generator=g, requires_grad=True)
    barlow_twins_loss(z1, z2).backward()
    for grad in (z1.grad, z2.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_groups_standardise_each_block_on_its_own():
    """groups=2 is what two ranks compute: each block standardised separately, c summed over the blocks."""
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    shifted = torch.cat([z1[:4], 10 * z1[4:] + 3])  # per-block affine change: invisible to per-block statistics
    assert torch.allclose(barlow_twins_loss(z1, z2, groups=2), barlow_twins_loss(shifted, z2, groups=2), rtol=1e-4)
    assert not torch.allclose(barlow_twins_loss(z1, z2), barlow_twins_loss(shifted, z2), rtol=1e-2)

    def standardise(block):
        return (block - block.mean(0)) / torch.sqrt(block.var(0, unbiased=False) + 1e-5)

    c = sum(standardise(a).T @ standardise(b) for a, b in zip(z1.split(4), z2.split(4))) / 8
    expected = (torch.diagonal(c) - 1).pow(2).sum() + 0.005 * (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    assert torch.allclose(barlow_twins_loss(z1, z2, groups=2), expected, rtol=1e-5)


def test_float32_inside_a_bf16_autocast_region():
    # The training loop runs the encoder under bf16 autocast; the loss must not inherit it (issue 18).
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
    plain = barlow_twins_loss(z1, z2, 0.005)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = barlow_twins_loss(z1, z2, 0.005)
        assert (z1.T @ z2).dtype == torch.bfloat16  # what autocast would have done to the cross-correlation
    assert inside.dtype == torch.float32
    assert torch.equal(inside, plain)
