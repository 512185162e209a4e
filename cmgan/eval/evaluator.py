"""The evaluator: colorize the MR test split and measure it, on 1 or N ranks, with a result independent of N.

Per slice: SSIM, PSNR, MI of the output's luminance vs the input (`structure`), SSIM and PSNR also over the
foreground only (`ssim_fg`, `psnr_fg`: the anatomy, slightly dilated) and as the paper's authors computed them
(`ssim_paper`, `psnr_paper`: 8-bit images, uniform 101-pixel window; `paper_structure`); on demo data with a true
rendering also the mean CIEDE2000 against it and the mean Lab color of every tissue label (`color`). FID of all
outputs against the real color domain (`fid`), with the real statistics cached by data and weights.

Exact aggregation across ranks: every rank colorizes its batch-aligned share of the split (`slices`), so each
slice is computed in the same batch for any number of ranks; the per-slice records (a few floats each) are
gathered to every rank and sorted by slice key, so means, stds and per-subject values come from the same numbers
in the same order (bitwise equal for 1 or N ranks at the same thread count); the FID statistics are float64
sums, all-reduced (equal to ~1e-13). An error on one rank is exchanged before any collective that could hang,
and raised on every rank.

    result = evaluate(load_export("runs/x"), "demo/shards/mr", "demo/shards/color", cfg.eval, out="m.json")
    result["metrics"]["ssim"]["mean"], result["metrics"]["fid"]
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmgan import distenv, files
from cmgan.config import EvalConfig, to_dict
from cmgan.data import schema
from cmgan.data.manifest import read_manifest
from cmgan.eval import color, fid, structure
from cmgan.eval.reference import FIDModel, NoRealImages, load_fid_model, real_statistics
from cmgan.eval.slices import MR_MEMBERS, SliceBatch, mr_batches, read_samples

log = logging.getLogger(__name__)

RESULT_FORMAT = "cmgan-eval-v1"


def _finite(values: list[float]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return a[np.isfinite(a)]


def summarize(values: list[float]) -> dict[str, float | int | None]:
    """mean, std (population, ddof 0), min, max and count of the finite values."""
    a = _finite(values)
    if a.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "count": 0}
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max()),
            "count": int(a.size)}


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


PAPER_WINDOW = 101
"""The authors' SSIM window: uniform, 101 x 101 pixels, sample covariance, on 8-bit images (data range 255)."""

STRUCTURE_KEYS = ("ssim", "psnr", "ssim_fg", "psnr_fg", "ssim_paper", "psnr_paper", "mi")
"""Per-slice structure metrics, each summarized over slices and averaged per subject."""

HEADLINES = {"default": ("ssim", "psnr"), "paper": ("ssim_paper", "psnr_paper")}
"""The SSIM/PSNR pair each `eval.preset` puts first; every key keeps its one meaning whatever the preset."""


def paper_window(height: int, width: int) -> int:
    """The paper's 101-pixel window, clipped to the largest odd size that fits an H x W image (63 at 64 x 64)."""
    side = min(height, width)
    return min(PAPER_WINDOW, side if side % 2 else side - 1)


def to_uint8_levels(unit: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> the 0..255 integer levels (as float64) an 8-bit PNG stores: round half up, clipped, as
    torchvision's save_image and PIL write them."""
    return torch.floor(unit.to(torch.float64) * 255.0 + 0.5).clamp(0.0, 255.0)


def paper_structure(gray: torch.Tensor, rgb: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
    """The authors' SSIM and PSNR: gray (B, 1, H, W) and rgb (B, 3, H, W) in [-1, 1] are written as 8-bit images,
    the RGB read back as 8-bit gray (BT.601, rounded: PIL's "L" conversion), then compared with data range 255:
    SSIM over a uniform window (`paper_window`) with sample covariance, PSNR per image.

    returns ({"ssim_paper", "psnr_paper"}: (B,) float64 each, the window used).
    """
    x8 = to_uint8_levels(structure.to_unit(gray))
    y8 = torch.floor(structure.luminance(to_uint8_levels(structure.to_unit(rgb))) + 0.5).clamp(0.0, 255.0)
    window = paper_window(*gray.shape[-2:])
    # SSIM and PSNR are unchanged when images and data range are scaled together: compare on [0, 1], range 1.
    x, y = x8 / 255.0, y8 / 255.0
    out = {
        "ssim_paper": structure.ssim(y, x, 1.0, window, "uniform", sample_covariance=True),
        "psnr_paper": structure.psnr(y, x, 1.0),
    }
    return out, window


def slice_records(
    batch: SliceBatch, rgb: torch.Tensor, cfg: EvalConfig, num_labels: int
) -> list[dict[str, Any]]:
    """Per-slice metrics of one colorized batch (rgb (B, 3, H, W) float32 in [-1, 1]).

    Foreground SSIM/PSNR use the slice's mask dilated by `cfg.fg_dilate` (NaN without a mask); the paper's SSIM
    and PSNR come from `paper_structure`, and each record notes the window it used (`paper_window`).
    """
    fg = structure.foreground(batch.mask, cfg.fg_dilate) if batch.mask is not None else None
    s = structure.structure_metrics(
        batch.mr, rgb, cfg.ssim_window, cfg.ssim_kernel, cfg.ssim_sigma, cfg.ssim_sample_covariance, cfg.mi_bins,
        mask=fg,
    )
    paper, window = paper_structure(batch.mr, rgb)
    s.update(paper)
    b = len(batch.keys)
    nan = torch.full((b,), math.nan, dtype=torch.float64)
    de = [math.nan] * b
    lab_means = truth_means = None
    if batch.truth is not None or batch.label is not None:
        lab = color.output_lab(rgb)
        t_lab = color.truth_lab(batch.truth) if batch.truth is not None else None
        if t_lab is not None:
            mask = batch.mask if batch.mask is not None else torch.ones(lab.shape[:3], dtype=torch.bool)
            de = color.slice_delta_e(lab, t_lab, mask).tolist()
        if batch.label is not None:
            lab_means = color.label_mean_lab(lab, batch.label, num_labels, cfg.color_min_pixels).tolist()
            if t_lab is not None:
                truth_means = color.label_mean_lab(t_lab, batch.label, num_labels, cfg.color_min_pixels).tolist()
    return [
        {
            "key": batch.keys[i],
            "subject": batch.subjects[i],
            **{name: float(s.get(name, nan)[i]) for name in STRUCTURE_KEYS},
            "paper_window": window,
            "delta_e2000": de[i],
            "lab": None if lab_means is None else lab_means[i],
            "truth_lab": None if truth_means is None else truth_means[i],
        }
        for i in range(b)
    ]


def colorize_checked(colorize: Callable[[torch.Tensor], torch.Tensor], batch: SliceBatch) -> torch.Tensor:
    """colorize(batch.mr) with the checks that name the slices: finite input, (B, 3, H, W) finite output."""
    bad = [k for k, ok in zip(batch.keys, torch.isfinite(batch.mr).flatten(1).all(1).tolist()) if not ok]
    if bad:
        raise ValueError(f"input slice(s) {bad} contain NaN or infinite values")
    rgb = colorize(batch.mr).float().cpu()
    want = (batch.mr.shape[0], 3, *batch.mr.shape[-2:])
    if tuple(rgb.shape) != want:
        raise ValueError(f"colorized batch {batch.keys[:3]}... has shape {tuple(rgb.shape)}, expected {want}")
    bad = [k for k, ok in zip(batch.keys, torch.isfinite(rgb).flatten(1).all(1).tolist()) if not ok]
    if bad:
        raise ValueError(f"the generator produced NaN or infinite values for slice(s) {bad}")
    return rgb


def evaluate_batches(
    colorize: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[SliceBatch],
    cfg: EvalConfig,
    *,
    fid_model: FIDModel | None = None,
    real: tuple[np.ndarray, np.ndarray] | None = None,
    fid_reason: str | None = None,
    label_names: tuple[str, ...] = schema.LABEL_NAMES,
) -> dict[str, Any]:
    """Colorize this rank's batches, measure them, aggregate over all ranks. Collective; same result on each rank.

    colorize: (B, 1, H, W) float32 in [-1, 1] -> (B, 3, H, W) float in [-1, 1]. FID needs fid_model and the
    real (mu, sigma); otherwise `fid_reason` says why it is missing.
    returns {"count", "subjects", "metrics", "per_subject"} (see `evaluate` for the file around it).
    """
    with_fid = fid_model is not None and real is not None
    fake = fid.FeatureStats(cfg.fid_dims) if with_fid else None
    records: list[dict[str, Any]] = []
    error = None
    try:
        for batch in batches:
            rgb = colorize_checked(colorize, batch)
            records.extend(slice_records(batch, rgb, cfg, len(label_names)))
            if fake is not None:
                fake.update(fid_model.features(fid.fid_input(rgb, cfg.fid_quantize)))
    except Exception as e:  # noqa: BLE001 - exchanged and re-raised on every rank
        error = e
    distenv.raise_if_any_failed(error)

    merged = sorted((r for part in distenv.gather(records) for r in part), key=lambda r: r["key"])
    keys = [r["key"] for r in merged]
    if len(set(keys)) != len(keys):
        dup = sorted(k for k, c in Counter(keys).items() if c > 1)[:5]
        raise ValueError(f"slices {dup} were evaluated more than once: the split reader must deal each slice once")
    if not merged:
        raise ValueError("no slices to evaluate: the split is empty")

    metrics: dict[str, Any] = {name: summarize([r[name] for r in merged]) for name in STRUCTURE_KEYS}
    metrics["headline"] = list(HEADLINES[cfg.preset])
    fid_value = None
    if fake is not None:
        fake.all_reduce()
        if fake.count < 2:
            fid_reason = f"only {fake.count} colorized image(s); FID needs >= 2"
        else:
            mu, sigma = fake.mean_cov()
            fid_value = distenv.broadcast(fid.frechet_distance(mu, sigma, *real) if distenv.world()[0] == 0 else None)
    metrics["fid"] = fid_value
    metrics["fid_unavailable"] = None if fid_value is not None else fid_reason
    metrics["fid_count"] = fake.count if fake is not None else 0

    by_subject: dict[str, list[dict[str, Any]]] = {}
    for r in merged:
        by_subject.setdefault(r["subject"], []).append(r)
    per_subject: dict[str, Any] = {}
    spreads: dict[str, list[np.ndarray]] = {"lab": [], "truth_lab": []}
    for subject, rows in by_subject.items():
        entry: dict[str, Any] = {"count": len(rows)}
        for name in (*STRUCTURE_KEYS, "delta_e2000"):
            a = _finite([r[name] for r in rows])
            entry[name] = float(a.mean()) if a.size else None
        for which in ("lab", "truth_lab"):
            if all(r[which] is not None for r in rows):
                spread = color.color_spread(np.array([r[which] for r in rows], dtype=np.float64))
                spreads[which].append(spread)
                name = "color_spread" if which == "lab" else "color_spread_truth"
                entry[name] = {label_names[k]: float(spread[k]) for k in range(1, len(label_names))}
        per_subject[subject] = entry

    if any(math.isfinite(r["delta_e2000"]) for r in merged):
        metrics["delta_e2000"] = summarize([r["delta_e2000"] for r in merged])
    for which, name in (("lab", "color_spread"), ("truth_lab", "color_spread_truth")):
        if spreads[which]:
            table = np.stack(spreads[which])  # (subjects, labels)
            metrics[name] = {label_names[k]: summarize(table[:, k].tolist()) for k in range(1, len(label_names))}
            metrics[name]["all"] = summarize(table[:, 1:].flatten().tolist())
    return _nan_to_none({"count": len(merged), "subjects": len(per_subject), "metrics": metrics,
                         "per_subject": per_subject,
                         "paper_windows": sorted({r["paper_window"] for r in merged})})


def settings(
    cfg: EvalConfig, fid_model: FIDModel | None, real_info: dict[str, Any] | None, paper_windows: list[int] = ()
) -> dict[str, Any]:
    """The definitions behind the numbers, written beside them (`paper_windows`: the paper SSIM windows used)."""
    return {
        "eval": to_dict(cfg),
        "preset": {"name": cfg.preset, "headline": list(HEADLINES[cfg.preset]),
                   "note": "both sets are always computed; the preset only says which SSIM/PSNR pair leads"},
        "foreground": {"keys": ["ssim_fg", "psnr_fg"], "mask": "the slice's anatomy mask (mask.npy)",
                       "dilate_px": cfg.fg_dilate, "structuring_element": f"square of side {2 * cfg.fg_dilate + 1}",
                       "ssim": "mean of the SSIM map over valid window centres inside the region",
                       "psnr": "MSE over the region's pixels", "without_mask": "null"},
        "paper": {"keys": ["ssim_paper", "psnr_paper"],
                  "images": "input and output written as 8-bit (round half up), output read back as 8-bit gray "
                            "(BT.601, rounded)", "data_range": 255, "ssim_kernel": "uniform",
                  "ssim_window": PAPER_WINDOW, "windows_used": list(paper_windows),
                  "window_rule": "101, clipped to the largest odd size that fits the slice (63 at 64 x 64)",
                  "covariance": "sample (N / (N - 1))", "K1": structure.K1, "K2": structure.K2,
                  "psnr": "per image on the 8-bit images"},
        "luminance": "BT.601 Y = 0.299 R + 0.587 G + 0.114 B of the output vs the gray input",
        "value_range": "[-1, 1] mapped to [0, 1] as (v + 1) / 2; data_range = 1.0; float64",
        "ssim": {"kernel": cfg.ssim_kernel, "window": cfg.ssim_window,
                 "sigma": cfg.ssim_sigma if cfg.ssim_kernel == "gaussian" else None,
                 "covariance": "sample" if cfg.ssim_sample_covariance else "population",
                 "K1": structure.K1, "K2": structure.K2, "border": "valid positions only (scikit-image's crop)"},
        "psnr": {"per_image": True, "max_db": structure.PSNR_MAX_DB},
        "mi": {"bins": cfg.mi_bins, "unit": "bits", "range": [0.0, 1.0]},
        "std": "population (ddof 0) over slices",
        "fid": None if fid_model is None else {
            "implementation": "pytorch-fid InceptionV3 (resize 299 bilinear, align_corners=False), pool3",
            "weights": fid_model.weights, "weights_sha256": fid_model.sha256, "dims": cfg.fid_dims,
            "precision": fid_model.precision, "quantize_uint8": cfg.fid_quantize, "real": real_info,
        },
        "color": {"space": "CIELAB (sRGB, D65, 2 deg)", "delta_e": "CIEDE2000, kL=kC=kH=1, mean over the mask",
                  "spread": "per subject and label: RMS Lab distance of per-slice mean colors to their mean",
                  "min_pixels": cfg.color_min_pixels},
    }



def evaluate(
    export: Any,
    mr_shards: str | Path,
    color_shards: str | Path | None = None,
    eval_cfg: EvalConfig | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate a generator export on the MR shards' `eval_cfg.split`; FID against `color_shards` (shards or a
    pytorch-fid .npz). Collective when torch.distributed is initialised (rank/world_size default to it).

    Writes `out` (rank 0, atomic) when given and returns the result on every rank:
    {"format", "model_id", "checkpoint", "data", "split", "count", "subjects", "metrics", "per_subject", "settings"}.
    """
    cfg = eval_cfg or EvalConfig()
    grank, gworld = distenv.world()
    rank = grank if rank is None else rank
    world_size = gworld if world_size is None else world_size
    if world_size != gworld:
        raise ValueError(f"world_size={world_size} but torch.distributed has {gworld} rank(s); initialise it first")

    manifest = read_manifest(mr_shards)
    if manifest.get("domain") != "mr":
        raise ValueError(f"{mr_shards}: holds the {manifest.get('domain')!r} domain; evaluation colorizes MR shards")
    label_names = tuple(manifest.get("label_names") or schema.LABEL_NAMES)
    device = getattr(export, "device", torch.device("cpu"))

    fid_model, reason, real, real_info = None, None, None, None
    if color_shards is None:
        reason = "no real color data given (--real COLOR_SHARDS or a pytorch-fid .npz)"
    else:
        fid_model, reason = load_fid_model(cfg, device)
        if fid_model is not None:
            try:
                mu, sigma, real_info = real_statistics(color_shards, fid_model, cfg)
                real = (mu, sigma)
            except NoRealImages as e:
                reason = str(e)
    if reason:
        log.warning("FID unavailable: %s", reason)

    samples = read_samples(mr_shards, cfg.split, rank, world_size, MR_MEMBERS, cfg.batch_size, cfg.max_images)
    core = evaluate_batches(
        export.colorize, mr_batches(samples, cfg.batch_size), cfg,
        fid_model=fid_model, real=real, fid_reason=reason, label_names=label_names,
    )
    result = {
        "format": RESULT_FORMAT,
        "model_id": getattr(export, "model_id", None),
        "checkpoint": str(getattr(export, "path", "")),
        "data": str(mr_shards),
        "split": cfg.split,
        "generator_autocast": str(getattr(export, "autocast", None)),
        **core,
        "settings": settings(cfg, fid_model, real_info, core.get("paper_windows", [])),
    }
    result = _nan_to_none(result)
    if out is not None and rank == 0:
        files.write_json(out, result, allow_nan=False)  # strict JSON: NaN became None above
    return result


def resolve_config(checkpoint: str | Path, config: str | Path | None, overrides: list[str]) -> EvalConfig:
    """The eval section: from `config` if given, else the run's own config.toml (a run directory), else the
    defaults; then the dotted overrides (e.g. eval.ssim_window=101)."""
    from cmgan.config import load_config

    run_config = Path(checkpoint) / "config.toml"
    path = config or (run_config if run_config.is_file() else None)
    return load_config(path, overrides).eval


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    real: str | Path | None = None,
    out: str | Path | None = None,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Everything `launch/evaluate.py` does: join the ranks, load the export (a run directory resolves to
    <run>/export/generator.pt), evaluate, write `out` (default: <run>/eval.json, or beside the export file)."""
    from cmgan.export import load_export, resolve_export_path

    env, device = distenv.init_process_group()  # this rank's GPU (one per rank or per task), else the CPU
    rank, world = env.rank, env.world_size
    cfg = resolve_config(checkpoint, config, overrides or [])
    export = load_export(checkpoint, device)
    if out is None:
        file = resolve_export_path(checkpoint)
        out = Path(checkpoint) / "eval.json" if Path(checkpoint).is_dir() else file.with_suffix(".eval.json")
    result = evaluate(export, data, real, cfg, rank, world, out=out)
    result["out"] = str(out)
    return result
