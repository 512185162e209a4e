"""Loader throughput: cmgan's tar-shard stream vs the reference CycleGAN way (one PNG per slice, PIL per sample).

    python bench/loader.py                        # 256x256 slices, batch 4, 2 workers, demo phantoms
    python bench/loader.py --shards DIR --workers 4 --batches 200

Both sides read the same slices of both domains and give (B, C, 256, 256) float32 tensors in [-1, 1]:
- shards: `cmgan.data.pipeline.UnpairedStream` (tar members, safe .npy decode, schema check, flips + small affine +
  intensity jitter, batching in the workers);
- png: the reference `UnalignedDataset` recipe: `Image.open(path).convert(...)`, Resize(286) + RandomCrop(256) +
  flip + ToTensor + Normalize, per sample, collated by a DataLoader with the same workers.
Both use the same workers and the same prefetch depth (`--prefetch` batches per worker). Rounds alternate
between the two; before each timed round the loader's ready queue is drained (workers x prefetch batches taken
untimed), so no round starts with batches its workers made while the other loader was being timed.
Prints ONE JSON line: pairs/s (one MR + one color slice) of each (medians of alternating rounds), per worker,
and the ratio. Compare
`shards_pairs_per_s` with the trainer's steps/s x batch (bench/train.py): the loader must stay well above it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_info
from PIL import Image


def make_shards(root: Path, size: int) -> Path:
    """Demo phantoms (64^3 volumes) built into `size` x `size` slices through the real ingest."""
    from shards.build import BuildOptions, build
    from shards.demo import write_sources

    dirs = write_sources(root, subjects=4, color_subjects=4, size=64, seed=0)
    common = dict(size=size, salt_file=dirs["salt"], max_count=64, split=(1.0, 0.0, 0.0))
    build([dirs["mr"]], BuildOptions(domain="mr", out=root / "mr", labels=(str(dirs["mr_labels"]),), **common))
    build([dirs["color"]], BuildOptions(domain="color", out=root / "color", **common))
    return root


def export_png(shards: Path, out: Path) -> dict[str, list[Path]]:
    """The same slices as 8-bit PNG files (trainA: MR gray, trainB: color RGB), as CycleGAN data sets are laid out."""
    from cmgan.data.splits import read_split

    paths: dict[str, list[Path]] = {"mr": [], "color": []}
    for domain, key in (("mr", "mr.npy"), ("color", "rgb.npy")):
        folder = out / domain
        folder.mkdir(parents=True, exist_ok=True)
        for sample in read_split(shards / domain, "train", keys=(key,)):
            arr = sample[key]
            if domain == "mr":
                arr = np.clip((arr.astype(np.float32) + 1) * 127.5, 0, 255).round().astype(np.uint8)
            path = folder / f"{sample['__key__']}.png"
            Image.fromarray(arr).save(path)
            paths[domain].append(path)
    return paths


class UnalignedPNG(torch.utils.data.Dataset):
    """pytorch-CycleGAN-and-pix2pix's UnalignedDataset, reduced to what it does per sample."""

    def __init__(self, paths: dict[str, list[Path]], size: int, seed: int = 0) -> None:
        import torchvision.transforms as T

        self.a, self.b = paths["mr"], paths["color"]
        self.rng = np.random.default_rng(seed)

        def tf(channels: int):
            half = (0.5,) * channels
            return T.Compose([T.Resize([int(size * 286 / 256)] * 2, T.InterpolationMode.BICUBIC), T.RandomCrop(size),
                              T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(half, half)])

        self.tf_a, self.tf_b = tf(1), tf(3)

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a = Image.open(self.a[i % len(self.a)]).convert("L")
        b = Image.open(self.b[int(self.rng.integers(len(self.b)))]).convert("RGB")
        return {"A": self.tf_a(a), "B": self.tf_b(b)}


def rate(it, n: int, batch: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    return n * batch / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=Path, help="directory with mr/ and color/ shard sets (default: build demo)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds (medians reported)")
    p.add_argument("--prefetch", type=int, default=2, help="batches prefetched per worker, both loaders")
    args = p.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from cmgan.config import DataConfig
    from cmgan.data.pipeline import UnpairedStream

    with tempfile.TemporaryDirectory() as tmp:
        root = args.shards or make_shards(Path(tmp) / "shards", args.size)
        paths = export_png(root, Path(tmp) / "png")
        cfg = DataConfig(mr_shards=str(root / "mr"), color_shards=str(root / "color"), split="train",
                         batch_size=args.batch, num_workers=args.workers, shuffle_buffer=64,
                         prefetch_factor=args.prefetch)
        shards = iter(UnpairedStream(cfg, args.size, seed=0))
        loader = torch.utils.data.DataLoader(UnalignedPNG(paths, args.size), batch_size=args.batch, shuffle=True,
                                             num_workers=args.workers, persistent_workers=args.workers > 0,
                                             prefetch_factor=args.prefetch if args.workers > 0 else None,
                                             drop_last=True, generator=torch.Generator().manual_seed(0))

        def forever():
            while True:
                yield from loader

        png = forever()
        for _ in range(args.warmup):
            next(shards), next(png)
        # Alternate rounds so both see the same machine load (this machine is shared); report medians.
        rounds = max(1, args.rounds)
        queued = max(1, args.workers) * args.prefetch  # batches a loader can have ready before it is asked
        shards_rates, png_rates = [], []
        for _ in range(rounds):
            for it, rates in ((shards, shards_rates), (png, png_rates)):
                for _ in range(queued):  # drain: what was made while the other loader ran is not timed
                    next(it)
                rates.append(rate(it, args.batches // rounds, args.batch))
        shards_rate, png_rate = float(np.median(shards_rates)), float(np.median(png_rates))
    w = max(1, args.workers)
    print(json.dumps({
        "bench": "loader", **machine_info(), "size": args.size, "batch": args.batch, "workers": args.workers,
        "prefetch_per_worker": args.prefetch, "rounds": rounds,
        "shards_pairs_per_s_rounds": [round(r, 1) for r in shards_rates],
        "png_pairs_per_s_rounds": [round(r, 1) for r in png_rates],
        "samples": {"mr": len(paths["mr"]), "color": len(paths["color"])},
        "shards_pairs_per_s": round(shards_rate, 1), "png_pairs_per_s": round(png_rate, 1),
        "shards_pairs_per_s_per_worker": round(shards_rate / w, 1),
        "png_pairs_per_s_per_worker": round(png_rate / w, 1),
        "shards_over_png": round(shards_rate / png_rate, 2),
    }))


if __name__ == "__main__":
    main()
