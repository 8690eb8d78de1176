import numpy as np
import pytest
import torch

from nanomorph.models.encoder import random_encoder
from nanomorph.segment.model import build_unet, set_train_mode
from nanomorph.segment.train import train_segmenter

ARCH = "resnet18"


def _square_data(n=4, side=32):
    images = np.full((n, side, side), 0.2, dtype=np.float32)
    masks = np.zeros((n, side, side), dtype=bool)
    masks[:, 8:20, 10:22] = True
    images[masks] = 0.8
    return images, masks


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_transferred_weights_arrive_in_the_unet_encoder():
    source = random_encoder(ARCH, seed=11).resnet_state_dict()
    model = build_unet(ARCH, source, freeze_encoder=False)
    target = model.encoder.state_dict()
    assert set(target) == set(source)
    for key, value in source.items():
        assert torch.equal(target[key], value), key
    # Not equal by coincidence: smp's own init differs from the transferred weights.
    fresh = build_unet(ARCH, None, freeze_encoder=False).encoder.state_dict()
    assert not torch.equal(fresh["conv1.weight"], source["conv1.weight"])


def test_resnet10_transfers_into_its_unet_and_is_half_of_resnet18():
    """`resnet10` (one BasicBlock per stage) is not a torchvision or smp name: the encoder builds it from
    torchvision's ResNet, the U-Net from smp's ResNetEncoder; weights move key for key, the features keep
    resnet18's width, and the U-Net segments a batch."""
    small, large = random_encoder("resnet10", seed=3), random_encoder("resnet18", seed=3)
    source = small.resnet_state_dict()
    assert {k.split(".")[1] for k in source if k.startswith("layer")} == {"0"}
    assert sum(v.numel() for v in source.values()) < 0.5 * sum(v.numel() for v in large.resnet_state_dict().values())
    model = build_unet("resnet10", source, freeze_encoder=True)
    for key, value in source.items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    x = torch.rand(2, 1, 64, 64)
    assert small.eval()(x).shape == (2, 512)
    assert model.eval()(x).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="missing"):
        build_unet("resnet18", source, freeze_encoder=True)


def test_build_unet_does_not_alter_the_callers_state():
    source = random_encoder(ARCH, seed=1).resnet_state_dict()
    keys = set(source)
    model = build_unet(ARCH, source, freeze_encoder=True)
    assert set(source) == keys
    with torch.no_grad():
        model.encoder.conv1.weight.add_(1.0)
    assert not torch.equal(model.encoder.conv1.weight, source["conv1.weight"])


def test_mismatched_states_are_refused():
    source = random_encoder(ARCH, seed=0).resnet_state_dict()
    missing = dict(source)
    del missing["layer3.1.bn2.running_var"]
    with pytest.raises(ValueError, match="missing.*layer3.1.bn2.running_var"):
        build_unet(ARCH, missing, freeze_encoder=True)
    extra = dict(source, **{"layer5.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected"):
        build_unet(ARCH, extra, freeze_encoder=True)
    with pytest.raises(ValueError, match="shape"):
        build_unet(ARCH, random_encoder(ARCH, seed=0, in_channels=3).resnet_state_dict(), freeze_encoder=True)
    with pytest.raises(ValueError):
        build_unet(ARCH, random_encoder("resnet50", seed=0).resnet_state_dict(), freeze_encoder=True)


def test_frozen_encoder_unchanged_by_training_while_decoder_learns():
    torch.manual_seed(0)
    model = build_unet(ARCH, random_encoder(ARCH, seed=2).resnet_state_dict(), freeze_encoder=True)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    encoder_before, decoder_before = _snapshot(model.encoder), _snapshot(model.decoder)
    images, masks = _square_data()
    train_segmenter(model, images, masks, epochs=1, lr=1e-2, batch_size=2, seed=0)
    encoder_after, decoder_after = _snapshot(model.encoder), _snapshot(model.decoder)
    # Every encoder tensor, BatchNorm running mean/var and batch counters included, is untouched.
    for key, value in encoder_before.items():
        assert torch.equal(encoder_after[key], value), key
    assert any(not torch.equal(decoder_after[k], v) for k, v in decoder_before.items())


def test_set_train_mode_keeps_frozen_batchnorm_statistics():
    model = build_unet(ARCH, random_encoder(ARCH, seed=3).resnet_state_dict(), freeze_encoder=True)
    x = torch.randn(2, 1, 32, 32) * 3 + 1
    before = model.encoder.bn1.running_mean.clone()
    set_train_mode(model, freeze_encoder=True)
    assert model.training and model.decoder.training and not model.encoder.training
    model(x)
    assert torch.equal(model.encoder.bn1.running_mean, before)
    # Control: requires_grad=False alone would not protect the statistics.
    set_train_mode(model, freeze_encoder=False)
    model(x)
    assert not torch.equal(model.encoder.bn1.running_mean, before)
