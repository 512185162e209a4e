import torch
from torch import nn

from cmgan.train.ema import EMA


def test_ema_moves_towards_the_weights_and_copies_buffers():
    net = nn.BatchNorm1d(3)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(3.0)
        net.running_mean.fill_(7.0)
    for _ in range(50):
        ema.update(net)
    assert torch.allclose(ema.shadow["weight"], torch.full((3,), 3.0), atol=1e-6)
    assert torch.equal(ema.shadow["running_mean"], torch.full((3,), 7.0))


def test_ema_warms_up_so_the_first_update_is_mostly_the_current_weights():
    net = nn.Linear(2, 2)
    ema = EMA(net, decay=0.999)
    start = ema.shadow["weight"].clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)  # effective decay 1/10
    assert torch.allclose(ema.shadow["weight"], start + 0.9, atol=1e-6)


def test_ema_state_loads_into_a_fresh_average_and_into_the_module():
    net = nn.Linear(2, 2)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.mul_(2)
    ema.update(net)
    other = EMA(nn.Linear(2, 2), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1
    fresh = nn.Linear(2, 2)
    fresh.load_state_dict(other.shadow)
    assert torch.equal(fresh.weight, ema.shadow["weight"])
