import pytest
import torch

from cmgan.config import OptimConfig
from cmgan.train.schedule import build_scheduler, lr_factor, scaled_lr


def test_step_schedule_multiplies_by_gamma_at_each_milestone():
    f = lr_factor(OptimConfig(schedule="step", milestones=(0.5, 0.75), gamma=0.1), total_steps=100)
    assert f(0) == 1.0 and f(49) == 1.0
    assert f(50) == pytest.approx(0.1) and f(74) == pytest.approx(0.1)
    assert f(75) == pytest.approx(0.01) and f(99) == pytest.approx(0.01)


def test_linear_schedule_is_constant_then_decays_towards_zero():
    f = lr_factor(OptimConfig(schedule="linear", linear_start=0.5), total_steps=100)
    values = [f(s) for s in range(100)]
    assert values[:51] == [1.0] * 51
    assert all(a > b for a, b in zip(values[50:], values[51:]))
    assert 0 < values[-1] < 0.05


def test_lr_scales_with_the_global_batch_only_when_asked():
    assert scaled_lr(OptimConfig(lr=1e-4, base_batch=1, scale_lr=True), 8) == pytest.approx(8e-4)
    assert scaled_lr(OptimConfig(lr=1e-4, base_batch=4, scale_lr=True), 8) == pytest.approx(2e-4)
    assert scaled_lr(OptimConfig(lr=1e-4, scale_lr=False), 8) == pytest.approx(1e-4)


def test_scheduler_follows_the_rule_after_a_state_dict_round_trip():
    def make():
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return opt, build_scheduler(opt, OptimConfig(schedule="step", milestones=(0.5,), gamma=0.5), 10)

    opt, sched = make()
    for _ in range(6):
        opt.step()
        sched.step()
    opt2, sched2 = make()
    sched2.load_state_dict(sched.state_dict())
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5)
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5)


def test_the_rate_a_run_uses_is_reported_and_a_rate_beyond_the_gan_bound_warns(caplog):
    from cmgan.train.schedule import LR_WARN_ABOVE, report_lr

    scaled = OptimConfig(lr=2e-4, scale_lr=True, base_batch=1)
    with caplog.at_level("INFO", logger="cmgan.train.schedule"):
        assert report_lr(scaled, 2) == pytest.approx(4e-4)
    assert "learning rate 0.0004" in caplog.text and "WARNING" not in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="cmgan.train.schedule"):
        lr = report_lr(scaled, 32)  # e.g. 8 GPUs x batch 4
    assert lr == pytest.approx(6.4e-3) and lr > LR_WARN_ABOVE
    assert any(r.levelname == "WARNING" and "above 0.001" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("INFO", logger="cmgan.train.schedule"):
        report_lr(scaled, 32, is_main=False)  # other ranks stay quiet
    assert not caplog.records
