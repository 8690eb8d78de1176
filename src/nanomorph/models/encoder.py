"""ResNet encoders for single-channel EM images, their projector heads, and their checkpoint format.

Grayscale is handled explicitly: the first convolution takes ONE input channel (torchvision's ResNet with
`conv1` rebuilt for `in_channels=1`), rather than repeating the gray channel three times. smp's U-Net with
`in_channels=1` builds the same `conv1` shape, so the saved state dict loads into its encoder unchanged.
Inputs are intensities in [0, 1] normalised by `normalise` (fixed EM statistics), in every stage alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models as tv_models

from nanomorph.errors import NanomorphError
from nanomorph.models.weights import load_weights

ARCHS = {"resnet10": 512, "resnet18": 512, "resnet34": 512, "resnet50": 2048}
# torchvision has no resnet10: its ResNet with one BasicBlock per stage instead of resnet18's two, half the
# compute per image, for budgets where the length of the pretraining schedule limits the probe (README, round 12).
RESNET10_LAYERS = (1, 1, 1, 1)
STAGES = ("layer1", "layer2", "layer3", "layer4")
# Fixed normalisation for [0, 1] EM intensities: bright film near 0.6-0.8, dark objects near 0.2-0.4.
EM_MEAN, EM_STD = 0.5, 0.25


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Map [0, 1] intensities to the encoder's input scale."""
    return (x - EM_MEAN) / EM_STD


def feature_dim(arch: str) -> int:
    if arch not in ARCHS:
        raise ValueError(f"unknown encoder architecture '{arch}' (choose from {', '.join(ARCHS)})")
    return ARCHS[arch]


class ResNetEncoder(nn.Module):
    """torchvision ResNet trunk with a 1-channel stem; forward returns global-average-pooled features (B, D)."""

    def __init__(self, arch: str = "resnet18", in_channels: int = 1):
        super().__init__()
        feature_dim(arch)
        if arch == "resnet10":
            trunk = tv_models.ResNet(tv_models.resnet.BasicBlock, list(RESNET10_LAYERS))
        else:
            trunk = getattr(tv_models, arch)(weights=None)
        trunk.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(trunk.conv1.weight, mode="fan_out", nonlinearity="relu")
        trunk.fc = nn.Identity()
        self.trunk = trunk
        self.arch = arch
        self.in_channels = in_channels

    @property
    def out_dim(self) -> int:
        return ARCHS[self.arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def pooled_stages(self, x: torch.Tensor, stages: tuple[str, ...] = ("layer4",)) -> torch.Tensor:
        """Global-average-pooled outputs of the named residual stages (`layer1`..`layer4`), concatenated (B, D').

        `("layer4",)` equals `forward`. Earlier stages see finer structure (wire width, grain) at a smaller
        receptive field, which a few-shot probe on small images can use.
        """
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            raise ValueError(f"unknown encoder stages {unknown or stages} (choose from {', '.join(STAGES)})")
        t = self.trunk
        x = t.maxpool(t.relu(t.bn1(t.conv1(x))))
        pooled = []
        for name in STAGES[: max(STAGES.index(s) for s in stages) + 1]:
            x = getattr(t, name)(x)
            if name in stages:
                pooled.append(torch.flatten(t.avgpool(x), 1))
        return torch.cat(pooled, dim=1)

    def resnet_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under torchvision/smp ResNet key names (conv1.weight, layer1.0.bn1.running_mean, ...)."""
        return {k: v.detach().cpu().clone() for k, v in self.trunk.state_dict().items() if not k.startswith("fc.")}


class Projector(nn.Module):
    """Paper's projector: Linear+BN+ReLU for every hidden width, then a plain Linear to the last width."""

    def __init__(self, in_dim: int, dims: tuple[int, ...] = (128, 64, 1024)):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for width in dims[:-1]:
            layers += [nn.Linear(prev, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            prev = width
        layers.append(nn.Linear(prev, dims[-1], bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def save_encoder(path: str | Path, encoder: ResNetEncoder, meta: dict[str, Any]) -> Path:
    """Write {arch, in_channels, state_dict, meta} atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {"arch": encoder.arch, "in_channels": encoder.in_channels, "state_dict": encoder.resnet_state_dict(),
         "meta": dict(meta)},
        tmp,
    )
    tmp.replace(path)
    return path


def load_encoder(path: str | Path) -> tuple[ResNetEncoder, dict[str, Any]]:
    """Load an encoder saved by `save_encoder` (`load_weights`: no pickled code is executed)."""
    blob = load_weights(path)
    if not isinstance(blob, dict) or not {"arch", "in_channels", "state_dict", "meta"} <= set(blob):
        raise NanomorphError(f"{path}: not a nanomorph encoder file (expected the keys save_encoder writes)")
    encoder = ResNetEncoder(blob["arch"], blob["in_channels"])
    encoder.trunk.load_state_dict(blob["state_dict"], strict=False)
    missing = set(encoder.trunk.state_dict()) - set(blob["state_dict"]) - {k for k in encoder.trunk.state_dict() if k.startswith("fc.")}
    if missing:
        raise ValueError(f"{path}: encoder checkpoint lacks {len(missing)} weights, e.g. {sorted(missing)[:3]}")
    return encoder, blob["meta"]


def random_encoder(arch: str, seed: int, in_channels: int = 1) -> ResNetEncoder:
    """The random-init baseline: same architecture, weights drawn from torch's default init under `seed`."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return ResNetEncoder(arch, in_channels)
    finally:
        torch.random.set_rng_state(gen_state)


def resolve_encoder(name: str, arch: str, seed: int, directory: str | Path = "models/encoders") -> ResNetEncoder:
    """`random` is the random-init baseline; any other name is a pretrained encoder `<directory>/<name>.pt`
    (the pretrain stage writes models/encoders/)."""
    if name == "random":
        return random_encoder(arch, seed)
    path = Path(directory) / f"{name}.pt"
    if not path.is_file():
        raise NanomorphError(f"{path}: no pretrained encoder '{name}'; run the pretrain stage for it first")
    encoder, _meta = load_encoder(path)
    return encoder
