"""The forward pass of pretraining: images -> encoder features -> projections.

One batch at a time (`embed`), or both views of a step, optionally in BatchNorm groups (TwinEmbedder, the
module that DDP wraps and torch.compile compiles).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call

from nanomorph.models.encoder import normalise


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return x.to(device)


def embed(encoder: nn.Module, projector: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    features = encoder(normalise(x))
    return features, projector(features)


class TwinEmbeddings(NamedTuple):
    """Both views' projections (what the loss compares) and encoder features (what the collapse monitor ranks)."""

    z1: torch.Tensor
    z2: torch.Tensor
    features1: torch.Tensor
    features2: torch.Tensor


def _scratch_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buf.clone() for name, buf in module.named_buffers()}


class TwinEmbedder(nn.Module):
    """Encoder + projector applied to both views: the one module that DDP wraps and torch.compile compiles.

    Each view is its own forward pass, so BatchNorm statistics never mix the two views (as in Barlow Twins).
    With `bn_groups` > 1 each view batch is embedded in that many equal blocks, each normalised by its own
    BatchNorm statistics -- what that many DDP ranks compute -- and, as DDP broadcasts rank 0's buffers,
    only the first block updates the running statistics.
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module, bn_groups: int = 1):
        super().__init__()
        self.encoder, self.projector, self.bn_groups = encoder, projector, bn_groups

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bn_groups == 1:
            return embed(self.encoder, self.projector, x)
        first, *rest = x.chunk(self.bn_groups)
        features, z = embed(self.encoder, self.projector, first)
        all_features, all_z = [features], [z]
        for block in rest:
            # Scratch copies of the buffers take these blocks' running-statistics updates, which are dropped.
            # (Copying saved values back instead would bump the buffers' version, which BatchNorm's backward
            # checks.)
            features = functional_call(self.encoder, _scratch_buffers(self.encoder), (normalise(block),))
            all_features.append(features)
            all_z.append(functional_call(self.projector, _scratch_buffers(self.projector), (features,)))
        return torch.cat(all_features), torch.cat(all_z)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> TwinEmbeddings:
        (features1, z1), (features2, z2) = self._embed(view1), self._embed(view2)
        return TwinEmbeddings(z1, z2, features1, features2)
