"""The collapse monitor of pretraining: every epoch, the spread of the L2-normalised projections and the
effective rank of the encoder features on a fixed batch, with a warning when the projections collapse to a point.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from nanomorph.ssl.embedding import embed, to_device

log = logging.getLogger(__name__)

# Size of the fixed batch the collapse monitor embeds every epoch. Its forward pass costs about half a
# training step of 64 images (two views each), so 128 keeps the monitor near 5 % of a 12-step epoch, and an
# effective rank of up to 127 still tells a collapsed representation (rank ~1-10) from a healthy one.
MONITOR_IMAGES = 128
# L2-normalised embeddings spread over D dims have a per-dim std near 1/sqrt(D); a collapsed projector
# (every image mapped to one point) has std near 0. Warn below this fraction of the spread value.
COLLAPSE_STD_FRACTION = 0.1


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
def monitor(encoder: nn.Module, projector: nn.Module, batch: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Collapse indicators on a fixed batch: per-dim std of L2-normalised projections, rank of the features.

    The models stay in train mode (BatchNorm on batch statistics, as the loss sees them): early in training
    the running statistics are still near their init, and eval mode would report a spurious collapse.
    The running statistics are restored afterwards, so monitoring does not alter training.
    """
    with _buffers_restored(encoder, projector):
        features, z = embed(encoder, projector, to_device(batch, device))
    z = F.normalize(z.float(), dim=1)
    return {"embedding_std": float(z.std(0).mean()), "effective_rank": effective_rank(features.float().cpu())}


def warn_if_collapsed(metrics: dict[str, float], dim: int, epoch: int) -> None:
    threshold = COLLAPSE_STD_FRACTION / math.sqrt(dim)
    if metrics["embedding_std"] < threshold:
        message = (f"epoch {epoch}: embedding std {metrics['embedding_std']:.2e} < {threshold:.2e} "
                   f"-- the projections are collapsing to a point")
        log.warning(message)
        warnings.warn(message, stacklevel=3)
