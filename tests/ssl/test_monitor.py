import warnings

import pytest
import torch

from nanomorph.ssl.monitor import collapse_metrics, effective_rank, warn_if_collapsed


def test_collapse_metrics_tell_a_collapsed_step_from_a_healthy_one():
    g = torch.Generator().manual_seed(0)
    healthy = collapse_metrics(torch.randn(64, 256, generator=g), torch.randn(64, 32, generator=g))
    one_point = torch.ones(64, 1) @ torch.randn(1, 256, generator=g)
    collapsed = collapse_metrics(one_point + 1e-7 * torch.randn(64, 256, generator=g),
                                 torch.ones(64, 1) @ torch.randn(1, 32, generator=g))
    # L2-normalised random directions in 256 dims: per-dim std ~ 1/sqrt(256)
    assert healthy["embedding_std"] == pytest.approx(1 / 16, rel=0.1)
    assert collapsed["embedding_std"] < 1e-6
    assert healthy["effective_rank"] > 25 and collapsed["effective_rank"] == 0.0
    with pytest.warns(UserWarning, match="epoch 3: .* collapsing to a point"):
        warn_if_collapsed(collapsed, 256, epoch=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_collapsed(healthy, 256, epoch=3)


def test_effective_rank_counts_the_directions_the_rows_span():
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(50, 4, generator=g))[0].T  # 4 orthonormal directions in 50 dims
    rows = torch.cat([basis, -basis]) * 3.0  # centred already: equal spread along each direction
    assert effective_rank(rows) == pytest.approx(4.0, rel=1e-6)
