import pytest
import torch

from cmgan.config import load_config
from cmgan.losses.objective import Objective
from cmgan.losses.perceptual import build_perceptual
from cmgan.models import build_networks, build_segmenter
from cmgan.train import distributed
from cmgan.train.step import StepNets, all_finite, discriminator_forward, generator_forward

MODEL = ["model.image_size=16", "model.width=4", "model.depth=2", "model.seg_width=4", "model.seg_depth=2",
         "model.disc_width=4", "train.precision=fp32", "train.channels_last=false"]


@pytest.fixture()
def setup():
    cfg = load_config(None, MODEL)
    backend = distributed.setup(cfg.train, batch_size=2)
    torch.manual_seed(0)
    G, F, Dx, Dy = build_networks(cfg.model)
    S = build_segmenter(cfg.model).eval().requires_grad_(False)
    gen = backend.prepare("generators", {"G": G, "F": F}, 1e-3, cfg.optim, 10)
    disc = backend.prepare("discriminators", {"Dx": Dx, "Dy": Dy}, 1e-3, cfg.optim, 10)
    nets = StepNets(G, F, Dx, Dy, Dx, Dy, S, build_perceptual(cfg.loss))  # no VGG file: pixel L1
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    yield cfg, backend, gen, disc, nets, x, y
    backend.close()


def grads(modules):
    return [p.grad for m in modules for p in m.parameters()]


def test_generator_step_trains_g_and_f_through_the_frozen_discriminators_only(setup):
    cfg, backend, gen, disc, nets, x, y = setup
    with backend.frozen(disc):
        images, obj = generator_forward(nets, x, y, cfg.loss, cfg.model.laplacian, backend.autocast())
        backend.backward(gen, obj.total)
    assert all(p.requires_grad for p in nets.Dx.parameters())  # unfrozen again after the block
    assert all(g is None for g in grads([nets.Dx, nets.Dy, nets.S]))
    g_grads = grads([nets.G, nets.F])
    assert all(g is not None and torch.isfinite(g).all() for g in g_grads)
    assert {"adv_g", "adv_f", "cycle_x", "cycle_y", "gray_g", "edge_g", "idt_g"} <= set(obj.terms)
    assert images.fake_y.shape == (2, 3, 16, 16) and images.rec_x.shape == (2, 1, 16, 16)


def test_segmenter_runs_once_per_step_on_every_image_g_receives(setup):
    cfg, backend, gen, disc, nets, x, y = setup
    calls = []
    nets.S.inc.register_forward_hook(lambda m, inp, out: calls.append((inp[0].shape[0], torch.is_grad_enabled())))
    with backend.frozen(disc):
        generator_forward(nets, x, y, cfg.loss, cfg.model.laplacian, backend.autocast())
    # One S pass over [x, gray(y), F(y)] (B = 2 each), under no_grad.
    assert calls == [(6, False)]


def test_discriminator_step_gives_no_gradient_to_the_generators(setup):
    cfg, backend, gen, disc, nets, x, y = setup
    with backend.frozen(disc):
        images, _ = generator_forward(nets, x, y, cfg.loss, cfg.model.laplacian, backend.autocast())
    obj = discriminator_forward(nets, x, y, images.fake_x, images.fake_y, cfg.loss, backend.autocast())
    backend.backward(disc, obj.total)
    assert all(g is None for g in grads([nets.G, nets.F]))
    assert all(g is not None for g in grads([nets.Dx, nets.Dy]))
    assert set(obj.terms) == {"dx_real", "dx_fake", "dy_real", "dy_fake"}


def test_all_finite_flags_a_nan_term():
    ok = Objective(torch.tensor(1.0), {"a": torch.tensor(2.0)})
    bad = Objective(torch.tensor(1.0), {"a": torch.tensor(float("nan"))})
    assert all_finite(ok) and not all_finite(ok, bad)


def test_the_non_finite_flag_stays_a_tensor_and_joins_the_one_agreement_per_step():
    """No host read per micro-batch: the flag is a device tensor, packed with the stop and clock flags into the
    step's single all-reduce (here one process: the same packing, read once)."""
    from cmgan.config import TrainConfig
    from cmgan.train import distributed, loop
    from cmgan.train.stop import StopFlag

    ok = Objective(torch.tensor(1.0), {"a": torch.tensor(2.0)})
    bad = Objective(torch.tensor(1.0), {"a": torch.tensor(float("inf"))})
    flag = torch.zeros((), dtype=torch.bool)
    for objective in (ok, bad, ok):  # three micro-batches, the second one non-finite
        finite = all_finite(objective)
        assert isinstance(finite, torch.Tensor) and finite.shape == () and finite.dtype == torch.bool
        flag = flag | ~finite
    backend = distributed.setup(TrainConfig(), batch_size=1)
    try:
        clock = loop.SaveClock(0)
        assert loop.agree(backend, StopFlag(), clock, flag) == (True, False, False)
        assert loop.agree(backend, StopFlag(), clock, torch.zeros((), dtype=torch.bool)) == (False, False, False)
        assert backend.all_reduce_max([1, 0], device_flag=torch.ones((), dtype=torch.bool)) == [1, 1, 0]
    finally:
        backend.close()
