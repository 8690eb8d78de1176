"""U-Net with a transferred ResNet encoder (segmentation_models_pytorch).

Key mapping: smp's `ResNetEncoder` subclasses torchvision's `ResNet`, so `model.encoder.state_dict()` uses
torchvision key names (conv1.weight, bn1.running_mean, layer1.0.conv1.weight, ..., layer4.1.bn2.bias).
Our `ResNetEncoder.resnet_state_dict()` (models/encoder.py) returns exactly those names: it is the state of
its torchvision trunk with the `fc.` entries dropped (smp deletes `fc` from its encoder). With
in_channels=1 both build conv1 as (64, 1, 7, 7). So the state loads key-for-key with no renaming; any
difference in names or shapes means a different architecture and is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders import encoders as smp_encoders
from segmentation_models_pytorch.encoders.resnet import ResNetEncoder as SmpResNetEncoder
from torch import nn
from torchvision.models.resnet import BasicBlock

from nanomorph.models.encoder import RESNET10_LAYERS

# smp knows the torchvision ResNets; our `resnet10` (models/encoder.py) is entered in its encoder table the way
# smp enters resnet18 (its ResNetEncoder with the block and stage depths), without pretrained weights.
smp_encoders.setdefault("resnet10", {
    "encoder": SmpResNetEncoder, "pretrained_settings": {},
    "params": {"out_channels": [3, 64, 64, 128, 256, 512], "block": BasicBlock, "layers": list(RESNET10_LAYERS)},
})


def _encoder_key_problems(encoder: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable list of missing / unexpected / mis-shaped keys (fc.* ignored on both sides)."""
    expected = {k: v.shape for k, v in encoder.state_dict().items() if not k.startswith("fc.")}
    given = {k: v for k, v in state.items() if not k.startswith("fc.")}
    problems = []
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    shaped = [
        f"{k}: {tuple(given[k].shape)} != {tuple(expected[k])}"
        for k in sorted(set(expected) & set(given))
        if tuple(given[k].shape) != tuple(expected[k])
    ]
    if shaped:
        problems.append(f"{len(shaped)} shape mismatches (e.g. {shaped[:3]})")
    return problems


def load_encoder_state(model: smp.Unet, encoder_state: dict[str, torch.Tensor]) -> None:
    """Copy `encoder_state` into `model.encoder`, refusing any missing, extra or mis-shaped weight."""
    problems = _encoder_key_problems(model.encoder, encoder_state)
    if problems:
        raise ValueError("encoder state does not match the U-Net encoder: " + "; ".join(problems))
    # smp's load_state_dict pops fc.* from the dict it is given: hand it a copy, not the caller's.
    model.encoder.load_state_dict({k: v for k, v in encoder_state.items() if not k.startswith("fc.")}, strict=True)


def freeze_encoder_params(model: smp.Unet) -> None:
    for param in model.encoder.parameters():
        param.requires_grad_(False)


def build_unet(arch: str, encoder_state: dict[str, torch.Tensor] | None, freeze_encoder: bool) -> smp.Unet:
    """1-channel, 1-class U-Net; encoder from `encoder_state` (or smp's random init when None).

    Weights are initialised from torch's global RNG: seed it (or fork it) before calling to get the
    same decoder initialisation across encoders. With `freeze_encoder` the encoder parameters stop
    requiring gradients; use `set_train_mode` in training so its BatchNorm statistics stay fixed too.
    """
    model = smp.Unet(encoder_name=arch, encoder_weights=None, in_channels=1, classes=1)
    if encoder_state is not None:
        load_encoder_state(model, encoder_state)
    if freeze_encoder:
        freeze_encoder_params(model)
    return model


def set_train_mode(model: smp.Unet, freeze_encoder: bool) -> smp.Unet:
    """model.train(), but a frozen encoder stays in eval mode.

    requires_grad=False alone does not freeze BatchNorm: in train mode it would still overwrite its
    running mean/var with statistics of the few segmentation images, changing the transferred encoder.
    """
    model.train()
    if freeze_encoder:
        model.encoder.eval()
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@contextlib.contextmanager
def channels_last_inference(model: nn.Module, device: str | torch.device = "cpu") -> Iterator[nn.Module]:
    """`model` in eval mode on `device` in the channels-last layout for the block, its layout restored after.

    Channels-last U-Net inference (ResNet18, 128 px, dihedral mean, float32) was 1.3x faster than the default
    layout on a 2-core AMD EPYC under the stages' AVX2 kernel pin, 1.4x with its native AVX-512 kernels (and it
    is the fast layout on CUDA); training stays in the default layout, which was faster there. Every
    prediction path (sweep, tiles, whole images, served models) runs through here, so they agree bit for bit.
    Inputs should be made channels-last too (`x.contiguous(memory_format=torch.channels_last)`).
    """
    model.eval()
    model.to(device, memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            yield model
    finally:
        model.to(memory_format=torch.contiguous_format)
