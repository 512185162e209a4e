"""The ColorMedGAN objective, assembled once: the cycle's images, the generator loss, the discriminator loss.

Code names -> paper names (X: MR slices, Y: color images):
    G  (Generator 1 -> 3, fuses S)   G: X -> Y      fake_y = G(x), rec_y = G(F(y)), idt_y = G(gray(y))
    F  (Generator 3 -> 1)            F: Y -> X      fake_x = F(y), rec_x = F(G(x)), idt_x = F(x as RGB)
    Dx (PatchDiscriminator 1)        D_X            judges real x vs fake_x
    Dy (PatchDiscriminator 3)        D_Y            judges real y vs fake_y
    S  (SegUNet, frozen)             S              features of every image G sees (x, gray(y), F(y))

Generator terms (unweighted, each a scalar float32; weights from `LossConfig`):
    adv_g   = mean (Dy(G(x)) - 1)^2                      adv_f   = mean (Dx(F(y)) - 1)^2          x adversarial
    cycle_x = L1(F(G(x)), x)                              cycle_y = L1(G(F(y)), y)                 x cycle
    idt_g   = L1(VGG(G(gray(y))), VGG(y))                 idt_f   = L1(VGG(F(x)), VGG(x))          x identity
    gray_g  = L1(gray(G(x)), x)                           gray_f  = L1(F(y), gray(y))              x gray
    edge_g  = L1(Lap(gray(G(x))), Lap(x))                 edge_f  = L1(Lap(F(y)), Lap(gray(y)))    x edge
G takes 1-channel input, so its identity image is G of y's luma (and S sees that luma); F's is F of x
replicated to 3 channels. The idt terms are absent when `loss.identity == 0` (translate(identity=False)).

Discriminator terms: dx_real = mean (Dx(x) - 1)^2, dx_fake = mean Dx(fake_x)^2, likewise dy_*;
total = disc_x * (dx_real + dx_fake) + disc_y * (dy_real + dy_fake).

Batching: InstanceNorm is per sample, so images that go through the same network are concatenated along the
batch and run in one call (F on [y, x], S and G on [x, gray(y), F(y)], D on [real, fake], VGG on both identity
images, then on both targets); results equal separate calls and the per-call overhead is paid once.

Freezing is the caller's job: in the generator step Dx and Dy must not collect gradients
(`requires_grad_(False)`, see docs/environment.md for DDP/DeepSpeed), and S must be in eval mode.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cmgan.config import LossConfig
from cmgan.losses.adversarial import lsgan_discriminator, lsgan_generator
from cmgan.losses.cycle import cycle_loss
from cmgan.losses.gray_edge import edge_loss, gray_loss
from cmgan.losses.perceptual import PerceptualLoss
from cmgan.models.edges import to_gray
from cmgan.models.generator import Generator
from cmgan.models.segmentation import SegUNet

#: LossConfig weight of each generator term, by the term's prefix.
_WEIGHT = {"adv": "adversarial", "cycle": "cycle", "idt": "identity", "gray": "gray", "edge": "edge"}


class CycleImages(NamedTuple):
    """The images of one generator step: reals (inputs) and everything G and F made of them.

    real_x (B, 1, H, W), real_y (B', 3, H, W): float32 in [-1, 1]. The rest in [-1, 1], in the autocast dtype,
    attached to the graph: fake_y, rec_y, idt_y (B, 3, H, W); fake_x, rec_x, idt_x (B, 1, H, W).
    idt_* are None when the identity term is off.
    """

    real_x: torch.Tensor
    real_y: torch.Tensor
    fake_y: torch.Tensor
    rec_x: torch.Tensor
    fake_x: torch.Tensor
    rec_y: torch.Tensor
    idt_y: torch.Tensor | None
    idt_x: torch.Tensor | None


class Objective(NamedTuple):
    """total: scalar float32 to backpropagate; terms: unweighted named terms, detached, for logging."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def segment(S: SegUNet | None, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """S's (enc, dec) features of img (B, 1 or 3, H, W) in [-1, 1] (color images: their luma), computed under
    no_grad with S in eval mode; None when S is None."""
    if S is None:
        return None
    if S.training:
        raise RuntimeError("the segmentation net S must be frozen in eval mode (S.eval()) before it is used in G")
    with torch.no_grad():
        return getattr(S, "module", S).features(to_gray(img) if img.shape[1] == 3 else img)


def translate(
    G: Generator, F: Generator, x: torch.Tensor, y: torch.Tensor, S: SegUNet | None = None, identity: bool = True
) -> CycleImages:
    """Run both directions of the cycle (and the identity images) for reals x (B, 1, H, W), y (B', 3, H, W).

    S must be given (in eval mode) when G fuses segmentation features; it runs once, on [x, gray(y), F(y)].
    G and F may be DDP-wrapped (they are only called).
    """
    if x.dim() != 4 or y.dim() != 4 or x.shape[1] != 1 or y.shape[1] != 3 or x.shape[-2:] != y.shape[-2:]:
        raise ValueError(
            f"translate expects x (B, 1, H, W) and y (B, 3, H, W) of one size, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    fusion = getattr(G, "module", G).fusion
    if fusion != "none" and S is None:
        raise ValueError(f"G fuses segmentation features (fusion={fusion!r}) but no segmentation net S was given")
    bx, by = x.shape[0], y.shape[0]
    gray_y = to_gray(y).to(x.dtype)

    # F on [y, x as RGB]: fake_x = F(y), idt_x = F(x).
    f_in = torch.cat([y, x.expand(-1, 3, -1, -1)]) if identity else y
    f_out = F(f_in)
    fake_x, idt_x = f_out[:by], (f_out[by:] if identity else None)

    # S and G on [x, gray(y), F(y)]: fake_y = G(x), idt_y = G(gray(y)), rec_y = G(F(y)).
    g_in = torch.cat([x, gray_y, fake_x.to(x.dtype)] if identity else [x, fake_x.to(x.dtype)])
    seg = segment(S, g_in) if fusion != "none" else None
    g_out = G(g_in, seg)
    fake_y = g_out[:bx]
    idt_y = g_out[bx : bx + by] if identity else None
    rec_y = g_out[-by:]

    rec_x = F(fake_y)
    return CycleImages(x, y, fake_y, rec_x, fake_x, rec_y, idt_y, idt_x)


def generator_losses(
    images: CycleImages,
    Dx: torch.nn.Module,
    Dy: torch.nn.Module,
    perceptual: PerceptualLoss,
    loss: LossConfig,
    laplacian: str = "4",
) -> Objective:
    """The generator objective of G and F (both directions summed); laplacian = `model.laplacian`.

    Dx, Dy: frozen by the caller for this step. perceptual: `build_perceptual(loss)`.
    """
    im = images
    terms = {
        "adv_g": lsgan_generator(Dy(im.fake_y)),
        "adv_f": lsgan_generator(Dx(im.fake_x)),
        "cycle_x": cycle_loss(im.rec_x, im.real_x),
        "cycle_y": cycle_loss(im.rec_y, im.real_y),
        "gray_g": gray_loss(im.fake_y, im.real_x),
        "gray_f": gray_loss(im.fake_x, im.real_y),
        "edge_g": edge_loss(im.fake_y, im.real_x, laplacian),
        "edge_f": edge_loss(im.fake_x, im.real_y, laplacian),
    }
    if im.idt_y is not None and im.idt_x is not None:
        terms["idt_g"], terms["idt_f"] = perceptual.pairs((im.idt_y, im.real_y), (im.idt_x, im.real_x))
    elif loss.identity > 0:
        raise ValueError("loss.identity > 0 but the identity images are missing; call translate(identity=True)")
    total = sum(getattr(loss, _WEIGHT[name.split("_")[0]]) * value for name, value in terms.items())
    return Objective(total, {k: v.detach() for k, v in terms.items()})


def discriminator_losses(
    Dx: torch.nn.Module,
    Dy: torch.nn.Module,
    real_x: torch.Tensor,
    real_y: torch.Tensor,
    fake_x: torch.Tensor,
    fake_y: torch.Tensor,
    loss: LossConfig,
) -> Objective:
    """The discriminators' objective. Reals and fakes (e.g. from the history pools; detached here) in [-1, 1]:
    real_x, fake_x (B, 1, H, W); real_y, fake_y (B, 3, H, W). Each D runs once on [real, fake]."""
    sx = Dx(torch.cat([real_x, fake_x.detach().to(real_x.dtype)]))
    sy = Dy(torch.cat([real_y, fake_y.detach().to(real_y.dtype)]))
    dx = lsgan_discriminator(sx[: real_x.shape[0]], sx[real_x.shape[0] :])
    dy = lsgan_discriminator(sy[: real_y.shape[0]], sy[real_y.shape[0] :])
    terms = {"dx_real": dx["real"], "dx_fake": dx["fake"], "dy_real": dy["real"], "dy_fake": dy["fake"]}
    total = loss.disc_x * (dx["real"] + dx["fake"]) + loss.disc_y * (dy["real"] + dy["fake"])
    return Objective(total, {k: v.detach() for k, v in terms.items()})
