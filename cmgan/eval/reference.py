"""FID's two inputs besides the generated images: the Inception (from a local weights file) and the real color
domain's statistics, computed once on all ranks and cached as an npz keyed by the data and the weights.

    model, reason = load_fid_model(cfg.eval, device)      # (None, "why") without weights
    mu, sigma, info = real_statistics("demo/shards/color", model, cfg.eval)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmgan import distenv
from cmgan.config import EvalConfig
from cmgan.data import schema
from cmgan.data.manifest import NAME, read_manifest
from cmgan.eval import fid, inception
from cmgan.eval.slices import read_samples, rgb_batches
from cmgan.files import sha256_file

log = logging.getLogger(__name__)

STATS_VERSION = 1
"""Bump when the way real statistics are computed changes: old cache entries are then not reused."""


@dataclass
class FIDModel:
    """The FID Inception and what identifies it in results and cache keys."""

    net: inception.FIDInception
    weights: str
    sha256: str
    precision: str
    device: torch.device

    @torch.inference_mode()
    def features(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 in [0, 1] -> (B, dims) float32, with TF32 off (`exact_fp32`)."""
        x = images01.to(self.device, non_blocking=True)
        if self.precision == "bf16":
            x = x.contiguous(memory_format=torch.channels_last)
            ctx = torch.autocast(self.device.type, dtype=torch.bfloat16)
        else:
            ctx = nullcontext()
        with exact_fp32(), ctx:
            return self.net(x).float().cpu()

    @property
    def device_name(self) -> str:
        """What the features were computed on: "cpu", or "cuda:<GPU model>" (kernels differ between GPUs)."""
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.device)}"
        return self.device.type


@contextmanager
def exact_fp32() -> Iterator[None]:
    """float32 convolutions and matmuls in full precision inside the block: TF32 (Ampere and newer GPUs) keeps
    10 mantissa bits and moves FID features away from pytorch-fid's. The global settings are restored after."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision, conv.fp32_precision = "ieee", "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def load_fid_model(cfg: EvalConfig, device: torch.device | str = "cpu") -> tuple[FIDModel | None, str | None]:
    """(FIDModel, None), or (None, reason) when no weights are available; a broken file raises WeightsError."""
    path: str | Path | None = cfg.inception_weights or inception.default_weights()
    if not path:
        return None, (
            "no FID Inception weights: set eval.inception_weights to pytorch-fid's pt_inception-2015-12-05 file, "
            "or make one offline with `python -m cmgan.eval.inception convert --out weights/pt_inception-fid.pth`"
        )
    if not Path(path).is_file():
        return None, f"eval.inception_weights={str(path)!r} does not exist"
    device = torch.device(device)
    net = inception.load_fid_inception(path, dims=cfg.fid_dims).to(device)
    precision = cfg.fid_precision
    if precision == "bf16" and not distenv.native_bf16(device):
        log.warning("eval.fid_precision=bf16 but %s has no native bf16: FID features in fp32", device)
        precision = "fp32"
    if precision == "bf16":
        net = net.to(memory_format=torch.channels_last)
    return FIDModel(net, str(path), sha256_file(path), precision, device), None


def accumulate(model: FIDModel, batches: Iterable[torch.Tensor], dims: int) -> fid.FeatureStats:
    """Local float64 feature sums of uint8 image batches (B, 3, H, W) (no all-reduce)."""
    stats = fid.FeatureStats(dims)
    for rgb in batches:
        stats.update(model.features(fid.uint8_to_unit(rgb)))
    return stats


def cache_dir(cfg: EvalConfig) -> Path:
    if cfg.stats_cache:
        return Path(cfg.stats_cache)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cmgan" / "fid"


def real_stats_key(color_shards: str | Path, splits: list[str], model: FIDModel, cfg: EvalConfig) -> dict[str, Any]:
    """What identifies real statistics: the shards (manifest sha256, which lists every shard's sha256), the
    splits used, the weights (sha256), the feature size, and the precision and device the features were computed
    in (bf16 vs fp32 and CPU vs GPU kernels give slightly different features). Its sha256 names the cache file."""
    return {
        "version": STATS_VERSION,
        "manifest_sha256": sha256_file(Path(color_shards) / NAME),
        "splits": splits,
        "weights_sha256": model.sha256,
        "dims": cfg.fid_dims,
        "precision": model.precision,
        "device": model.device_name,
    }


class NoRealImages(ValueError):
    """The real color data has fewer than 2 images in the chosen splits (FID is then reported unavailable)."""


def real_statistics(
    color_shards: str | Path, model: FIDModel, cfg: EvalConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(mu, sigma, info) of the real color images, from the cache or computed once on all ranks and cached.

    `color_shards` may also be a pytorch-fid statistics file (.npz with mu and sigma). Collective.
    """
    if str(color_shards).endswith(".npz"):
        with np.load(color_shards, allow_pickle=False) as f:
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
        d = cfg.fid_dims
        if mu.shape != (d,) or sigma.shape != (d, d):
            raise ValueError(f"{color_shards}: statistics of {mu.shape[0]}-d features, eval.fid_dims={d}")
        return mu, sigma, {"source": str(color_shards), "count": None, "cache": None}

    manifest = read_manifest(color_shards)
    if manifest.get("domain") != "color":
        raise ValueError(f"{color_shards}: holds the {manifest.get('domain')!r} domain; FID's reference must be "
                         "the color shards (or a pytorch-fid .npz)")
    counts = manifest.get("counts", {})
    splits = [s for s in cfg.real_splits if counts.get(s, 1) > 0]
    if not splits:
        raise NoRealImages(f"{color_shards}: no real color images in eval.real_splits={list(cfg.real_splits)}")
    key = real_stats_key(color_shards, splits, model, cfg)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    path = cache_dir(cfg) / f"real-{digest[:32]}.npz"
    info = {"source": str(color_shards), "splits": splits, "cache": str(path)}
    if distenv.broadcast(path.is_file()):  # rank 0 decides, so no rank can see a half-finished write of another
        mu, sigma, count, _ = fid.load_stats(path)
        log.info("real FID statistics from cache %s (%d images)", path, count)
        return mu, sigma, {**info, "count": count, "cached": True}

    stats = fid.FeatureStats(cfg.fid_dims)
    error = None
    try:
        rank, world = distenv.world()
        for split in splits:
            samples = read_samples(color_shards, split, rank, world, (schema.RGB_KEY,), cfg.batch_size)
            part = accumulate(model, rgb_batches(samples, cfg.batch_size), cfg.fid_dims)
            stats.count += part.count
            stats.total += part.total
            stats.outer += part.outer
    except Exception as e:  # noqa: BLE001 - exchanged and re-raised on every rank below
        error = e
    distenv.raise_if_any_failed(error)
    stats.all_reduce()
    if stats.count < 2:
        raise NoRealImages(f"{color_shards}: {stats.count} real color image(s) in splits {splits}; FID needs >= 2")
    mu, sigma = stats.mean_cov()
    if distenv.world()[0] == 0:
        try:
            fid.save_stats(path, mu, sigma, stats.count, key)
        except OSError as e:  # the cache only saves time; a read-only folder must not fail the evaluation
            log.warning("could not cache real FID statistics in %s: %s (set eval.stats_cache)", path, e)
    return mu, sigma, {**info, "count": stats.count, "cached": False}
