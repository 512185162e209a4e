"""cmgan.losses.objective: the cycle's images, the weighted generator objective, the discriminator objective."""

import pytest
import torch

from cmgan.config import LossConfig, ModelConfig
from cmgan.losses.objective import discriminator_losses, generator_losses, translate
from cmgan.losses.perceptual import build_perceptual
from cmgan.models import build_networks, build_segmenter

TINY = ModelConfig(image_size=32, width=8, seg_width=8, seg_depth=3, disc_width=4)
GEN_TERMS = {"adv_g", "adv_f", "cycle_x", "cycle_y", "idt_g", "idt_f", "gray_g", "gray_f", "edge_g", "edge_f"}


def setup(fusion="sigmoid", seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**TINY.__dict__, "fusion": fusion})
    nets = build_networks(cfg)
    S = build_segmenter(cfg).eval().requires_grad_(False)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    return nets, S, x, y


def test_translate_runs_both_directions_and_equals_separate_calls():
    (G, F, _, _), S, x, y = setup()
    G.eval(), F.eval()  # no power iteration: batched and separate calls see the same weights
    im = translate(G, F, x, y, S)
    gray_y = 0.299 * y[:, :1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:]
    with torch.no_grad():
        fake_x = F(y)
        fake_y = G(x, S.features(x))
        assert torch.allclose(im.fake_x, fake_x, atol=1e-5)
        assert torch.allclose(im.fake_y, fake_y, atol=1e-5)
        assert torch.allclose(im.rec_x, F(fake_y), atol=1e-5)
        assert torch.allclose(im.rec_y, G(fake_x, S.features(fake_x)), atol=1e-5)
        assert torch.allclose(im.idt_y, G(gray_y, S.features(gray_y)), atol=1e-5)
        assert torch.allclose(im.idt_x, F(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_generator_objective_is_the_weighted_sum_of_its_named_terms():
    (G, F, Dx, Dy), S, x, y = setup()
    loss = LossConfig(adversarial=1, cycle=10, identity=5, gray=2, edge=3)
    Dx.requires_grad_(False), Dy.requires_grad_(False)
    out = generator_losses(translate(G, F, x, y, S), Dx, Dy, build_perceptual(loss), loss, "4")
    assert set(out.terms) == GEN_TERMS
    t = out.terms
    want = (t["adv_g"] + t["adv_f"] + 10 * (t["cycle_x"] + t["cycle_y"]) + 5 * (t["idt_g"] + t["idt_f"])
            + 2 * (t["gray_g"] + t["gray_f"]) + 3 * (t["edge_g"] + t["edge_f"]))
    assert out.total.item() == pytest.approx(want.item(), rel=1e-5)
    assert all(not v.requires_grad and v.dtype == torch.float32 for v in t.values())
    out.total.backward()
    assert all(p.grad is not None for p in [*G.parameters(), *F.parameters()])
    assert all(p.grad is None for p in [*Dx.parameters(), *Dy.parameters()])


def test_identity_off_skips_the_identity_images_and_terms():
    (G, F, Dx, Dy), S, x, y = setup()
    loss = LossConfig(identity=0)
    im = translate(G, F, x, y, S, identity=False)
    assert im.idt_x is None and im.idt_y is None
    out = generator_losses(im, Dx, Dy, build_perceptual(loss), loss)
    assert set(out.terms) == GEN_TERMS - {"idt_g", "idt_f"}
    with pytest.raises(ValueError, match="identity"):
        generator_losses(im, Dx, Dy, build_perceptual(loss), LossConfig(identity=5))


def test_fused_generator_without_segmenter_or_with_a_training_segmenter_is_rejected():
    (G, F, _, _), S, x, y = setup()
    with pytest.raises(ValueError, match="no segmentation net S"):
        translate(G, F, x, y, None)
    with pytest.raises(RuntimeError, match="eval"):
        translate(G, F, x, y, S.train())
    (G0, F0, _, _), _, _, _ = setup("none")
    assert translate(G0, F0, x, y, None).fake_y.shape == (2, 3, 32, 32)


def test_discriminator_objective_weights_its_terms_and_gives_no_gradient_to_the_generators():
    (G, F, Dx, Dy), S, x, y = setup()
    im = translate(G, F, x, y, S, identity=False)
    loss = LossConfig(disc_x=0.5, disc_y=2.0)
    out = discriminator_losses(Dx, Dy, x, y, im.fake_x, im.fake_y, loss)
    t = out.terms
    assert set(t) == {"dx_real", "dx_fake", "dy_real", "dy_fake"}
    want = 0.5 * (t["dx_real"] + t["dx_fake"]) + 2.0 * (t["dy_real"] + t["dy_fake"])
    assert out.total.item() == pytest.approx(want.item(), rel=1e-6)
    out.total.backward()
    assert all(p.grad is None for p in [*G.parameters(), *F.parameters()])
    assert all(p.grad is not None for p in [*Dx.parameters(), *Dy.parameters()])


def test_discriminators_learn_to_score_reals_above_fakes():
    (G, F, Dx, Dy), S, x, y = setup()
    with torch.no_grad():
        im = translate(G, F, x, y, S, identity=False)
    opt = torch.optim.Adam([*Dx.parameters(), *Dy.parameters()], 1e-3, betas=(0.5, 0.999))
    first = None
    for _ in range(15):
        out = discriminator_losses(Dx, Dy, x, y, im.fake_x, im.fake_y, LossConfig())
        opt.zero_grad()
        out.total.backward()
        opt.step()
        first = first if first is not None else out.total.item()
    assert out.total.item() < first
    Dy.eval()
    assert Dy(y).mean() > Dy(im.fake_y).mean()


@pytest.mark.parametrize("fusion", ["sigmoid", "concat"])
def test_thirty_adam_steps_reduce_the_generators_combined_loss(fusion):
    (G, F, Dx, Dy), S, x, y = setup(fusion)
    Dx.requires_grad_(False), Dy.requires_grad_(False)
    loss = LossConfig()
    perceptual = build_perceptual(loss)
    opt = torch.optim.Adam([*G.parameters(), *F.parameters()], 2e-3, betas=(0.5, 0.999))
    totals = []
    for _ in range(30):
        out = generator_losses(translate(G, F, x, y, S), Dx, Dy, perceptual, loss)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        totals.append(out.total.item())
    assert sum(totals[-5:]) / 5 < 0.7 * sum(totals[:5]) / 5


def test_objective_under_bf16_autocast_is_float32_and_close_to_fp32():
    (G, F, Dx, Dy), S, x, y = setup()
    for m in (G, F, Dx, Dy):
        m.eval()
    loss = LossConfig()
    perceptual = build_perceptual(loss)
    with torch.no_grad():
        ref = generator_losses(translate(G, F, x, y, S), Dx, Dy, perceptual, loss)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = generator_losses(translate(G, F, x, y, S), Dx, Dy, perceptual, loss)
    assert low.total.dtype == torch.float32
    assert low.total.item() == pytest.approx(ref.total.item(), rel=0.05)
