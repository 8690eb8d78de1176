"""The collapse monitor of pretraining: at every epoch's end, the spread of the L2-normalised projections and the
effective rank of the encoder features of that epoch's last training step, with a warning when the projections
collapse to a point.

The indicators come from the embeddings the step computed anyway (train-mode BatchNorm, as the loss saw them),
so monitoring costs no forward pass of its own. (An earlier monitor embedded a fixed 128-image batch every epoch:
~5 % of a cpu-profile epoch, ~8 % of the 6-step epochs of benchmarks/pretrain_throughput.py.) Its batch changes
from epoch to epoch, which a collapse (spread near 0, rank near 1) outlasts.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

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


@torch.no_grad()
def collapse_metrics(projections: torch.Tensor, features: torch.Tensor) -> dict[str, float]:
    """Collapse indicators of one step's embeddings: the mean per-dim std of the L2-normalised `projections`
    (B, D) and the effective rank of the encoder `features` (B, F), both views' rows together (2 x batch rows:
    a rank of up to 2 x batch - 1 tells a collapsed representation, rank ~1-10, from a healthy one)."""
    z = F.normalize(projections.detach().float(), dim=1)
    return {"embedding_std": float(z.std(0).mean()), "effective_rank": effective_rank(features.detach().float().cpu())}


def warn_if_collapsed(metrics: dict[str, float], dim: int, epoch: int) -> None:
    threshold = COLLAPSE_STD_FRACTION / math.sqrt(dim)
    if metrics["embedding_std"] < threshold:
        message = (f"epoch {epoch}: embedding std {metrics['embedding_std']:.2e} < {threshold:.2e} "
                   f"-- the projections are collapsing to a point")
        log.warning(message)
        warnings.warn(message, stacklevel=3)
