import pytest
import torch

from nanomorph.ssl.lars import LARS
from nanomorph.ssl.train import make_optimizer


def test_lars_step_is_trust_ratio_scaled_for_weights_and_plain_for_biases():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    weight.grad = torch.tensor([[0.6, 0.8]])  # norm 1
    bias.grad = torch.tensor([0.5])
    opt = LARS([weight, bias], lr=0.1, weight_decay=0.0, momentum=0.9, eta=0.001)
    opt.step()
    trust = 0.001 * 5.0 / 1.0
    assert torch.allclose(weight, torch.tensor([[3.0, 4.0]]) - 0.1 * trust * torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(bias, torch.tensor([1.0 - 0.1 * 0.5]))
    opt.step()  # momentum: the second update is (1 + 0.9) times the (unchanged-gradient) first one for the bias
    assert torch.allclose(bias, torch.tensor([1.0 - 0.1 * 0.5 - 0.1 * 0.5 * 1.9]))


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("lars", LARS), ("adamw", torch.optim.AdamW)])
def test_make_optimizer_builds_each_choice(name, cls):
    params = [torch.nn.Parameter(torch.ones(2, 2))]
    assert isinstance(make_optimizer(name, params, lr=0.1, momentum=0.9, weight_decay=0.0), cls)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop", [torch.nn.Parameter(torch.ones(1))], lr=0.1, momentum=0.9, weight_decay=0.0)
