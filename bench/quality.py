"""Colorization quality along training: train from scratch, evaluate at several points, one JSON line.

    python bench/quality.py                                   # paper config, demo phantoms, 64x64, 1 seed
    python bench/quality.py --seeds 3 --minutes 10            # mean and std over 3 seeds, 10 min budget each
    python bench/quality.py --size 128                        # 128x128 phantoms
    python bench/quality.py --mr-shards D --color-shards D --seg S.pt   # any shard directories
    python bench/quality.py train.lr=2e-4 loss.identity=0     # any dotted override of the run config

Each seed trains the named config (default configs/quality.toml: the paper's method with the measured recipe)
for `--steps` (or until `--minutes` of training), saves a checkpoint at `--points` evenly spaced steps, then
scores every checkpoint on the MR test split (`cmgan.eval.quality`: SSIM/PSNR of the luminance over the whole
slice and over the foreground, MI, CIEDE2000 to the true colors overall and per tissue, tissue a*b* separation
beside the truth's, slice-to-slice chroma flicker beside the truth's) and FID against the color shards.
The JSON line holds per point the mean and std over seeds, the per-seed values, the wall time of training to
that point, and the issue's targets with whether the last point meets them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))  # its helpers, also when a test loads this file as a module

from parallel import map_in_processes  # noqa: E402

from cmgan import checkpoint, precision  # noqa: E402
from cmgan.colorize.consistency import smooth_chroma  # noqa: E402
from cmgan.colorize.luminance import keep_luminance  # noqa: E402
from cmgan.config import load_config  # noqa: E402
from cmgan.data import schema  # noqa: E402
from cmgan.data.manifest import read_manifest  # noqa: E402
from cmgan.eval import fid, structure  # noqa: E402
from cmgan.eval.quality import QualityAccumulator, tissue_mask  # noqa: E402
from cmgan.eval.reference import load_fid_model, real_statistics  # noqa: E402
from cmgan.eval.slices import MR_MEMBERS, mr_batches, read_samples  # noqa: E402
from cmgan.models import build_generator  # noqa: E402

#: The issue's targets on the demo phantoms at 64x64 (mean of 3 seeds).
TARGETS = {"ssim_fg": (">=", 0.93), "psnr_fg": (">=", 30.0), "delta_e2000": ("<=", 6.0),
           "separation_ratio": (">=", 0.70), "flicker_ab": ("<=", 2.0)}
CURVE = ("ssim", "psnr", "ssim_fg", "psnr_fg", "mi", "fid", "delta_e2000", "separation_ab", "separation_ratio",
         "flicker_ab", "wall_s")


def _label_names(cfg) -> tuple[str, ...]:
    return tuple(read_manifest(cfg.data.mr_shards).get("label_names") or schema.LABEL_NAMES)


def _generator(cfg, state: dict, use_ema: bool) -> torch.nn.Module:
    G = build_generator(cfg.model)
    ema = state.get("ema")
    G.load_state_dict(ema["shadow"] if (use_ema and ema) else state["generators"]["nets"]["G"])
    return G.to(memory_format=torch.channels_last).eval().requires_grad_(False)


FINISHES = ("raw", "luma", "smooth", "luma+smooth")
"""What is scored: G's output as is, with the input's luminance (`colorize --keep-luminance`), with chroma
averaged over neighbouring slices (`colorize --smooth-chroma`), or both, as the colorizer applies them."""


def finish(outputs: list[tuple[Any, torch.Tensor]], how: str, sigma: float) -> list[torch.Tensor]:
    """Apply a colorizer finishing to G's outputs of the whole split: [(SliceBatch, (B, 3, H, W) in [-1, 1])]
    -> the finished (B, 3, H, W) per batch. Smoothing runs per subject along its slices in key order."""
    rgbs = [rgb for _, rgb in outputs]
    if "luma" in how:
        rgbs = [torch.from_numpy(keep_luminance(rgb.permute(0, 2, 3, 1).numpy(), b.mr[:, 0].numpy()))
                .permute(0, 3, 1, 2) for (b, _), rgb in zip(outputs, rgbs)]
    if "smooth" in how:
        where: dict[str, list[tuple[str, int, int]]] = {}
        for i, (b, _) in enumerate(outputs):
            for j, (key, subject) in enumerate(zip(b.keys, b.subjects)):
                where.setdefault(subject, []).append((key, i, j))
        rgbs = [rgb.clone() for rgb in rgbs]
        for rows in where.values():
            rows.sort()
            vol = np.stack([fid.to_uint8(rgbs[i][j : j + 1])[0].permute(1, 2, 0).numpy() for _, i, j in rows])
            mask = np.stack([tissue_mask(outputs[i][0])[j].numpy() for _, i, j in rows])
            smooth = smooth_chroma(vol, mask, axis=0, sigma=sigma)
            for (_, i, j), image in zip(rows, smooth):
                rgbs[i][j] = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0
    return rgbs


def score(cfg, G, S, fid_model, real, label_names, how: str = "raw", sigma: float = 1.0) -> dict[str, Any]:
    """Colorize the MR test split with G (S's features when G fuses them), finish it (`finish`), measure it."""
    dtype = precision.DTYPES[precision.resolve(cfg.train.precision, "cpu", fp16_ok=False)]
    autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    samples = read_samples(cfg.data.mr_shards, cfg.eval.split, 0, 1, MR_MEMBERS, cfg.eval.batch_size)
    outputs = []
    with torch.inference_mode():
        for batch in mr_batches(samples, cfg.eval.batch_size):
            x = batch.mr.contiguous(memory_format=torch.channels_last)
            with autocast:
                seg = S.features(x) if S is not None else None
                outputs.append((batch, G(x, seg).float().clamp(-1, 1)))
    acc = QualityAccumulator(label_names, fg_dilate=2)
    feats = fid.FeatureStats(cfg.eval.fid_dims) if fid_model is not None else None
    with torch.inference_mode():
        for (batch, _), rgb in zip(outputs, finish(outputs, how, sigma)):
            acc.update(batch, rgb)
            if feats is not None:
                feats.update(fid_model.features(fid.fid_input(rgb, cfg.eval.fid_quantize)))
    result = acc.result()
    if feats is not None and feats.count >= 2:
        result["fid"] = fid.frechet_distance(*feats.mean_cov(), *real)
    return result


def oracles(cfg, label_names) -> dict[str, Any]:
    """What perfect colorists would score, where the data have true colors and labels (the demo phantoms):

    truth                        the true rendering itself
    truth_chroma_input_luma      the true chroma with the luminance of the MR input (RGB shifted by Y_in - Y_true)
    palette                      every tissue label painted its mean true color (a flawless label-wise colorist:
                                 no grain, no texture)
    palette_input_luma           the palette with the input's luminance
    They bound the targets: the true colors do not keep the MR's luminance (other tissue contrast, MR noise and
    bias), so a colorist that keeps the input's structure is CIEDE2000 ~9-10 from the truth, and even a flawless
    label-wise colorist flickers ~3 where tissue boundaries move between slices.
    """
    batches = list(mr_batches(read_samples(cfg.data.mr_shards, cfg.eval.split, 0, 1, MR_MEMBERS,
                                           cfg.eval.batch_size), cfg.eval.batch_size))
    if not batches or any(b.truth is None or b.label is None or b.mask is None for b in batches):
        return {}
    k = len(label_names)
    sums, counts = torch.zeros(k, 3, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    for b in batches:
        inside = b.mask.unsqueeze(-1) & (b.label.unsqueeze(-1) == torch.arange(k))  # (B, H, W, k)
        sums += torch.einsum("bhwk,bhwc->kc", inside.double(), b.truth.double() / 255.0)
        counts += inside.flatten(0, 2).sum(0)
    palette = sums / counts.clamp_min(1).unsqueeze(1)

    def with_input_luma(rgb: torch.Tensor, mr: torch.Tensor) -> torch.Tensor:
        return (rgb + (mr.double() + 1) / 2 - structure.luminance(rgb)).clamp(0, 1)

    out = {}
    for name in ("truth", "truth_chroma_input_luma", "palette", "palette_input_luma"):
        acc = QualityAccumulator(label_names, fg_dilate=2)
        for b in batches:
            if name.startswith("truth"):
                rgb = b.truth.permute(0, 3, 1, 2).double() / 255.0
            else:
                rgb = palette[b.label.clamp(0, k - 1)].permute(0, 3, 1, 2) * b.mask.unsqueeze(1)
            if name.endswith("input_luma"):
                rgb = with_input_luma(rgb, b.mr)
            acc.update(b, (rgb * 2 - 1).float())
        r = acc.result()
        out[name] = {m: round(v, 4) for m, v in r.items() if isinstance(v, float) and m in CURVE}
    return out


def figure(cfg, G, S, path: Path, count: int = 6, how: str = "raw", sigma: float = 1.0) -> None:
    """A PNG a user can judge: rows of test slices (evenly spread through the test split), columns MR input |
    colorization | its luminance | (with a `luma` finish) the colorization with the input's luminance | true
    colors (where the data have them), upscaled 3x. Smoothing needs neighbouring slices and is not shown."""
    from PIL import Image

    samples = list(read_samples(cfg.data.mr_shards, cfg.eval.split, 0, 1, MR_MEMBERS, cfg.eval.batch_size))
    picks = [samples[round(i)] for i in np.linspace(len(samples) * 0.15, len(samples) * 0.85, count)]
    batch = next(mr_batches(picks, count))
    with torch.inference_mode():
        x = batch.mr.contiguous(memory_format=torch.channels_last)
        rgb = G(x, S.features(x) if S is not None else None).float().clamp(-1, 1)
    u8 = lambda t: fid.to_uint8(t).permute(0, 2, 3, 1).numpy()  # noqa: E731
    luma = structure.luminance(rgb).expand(-1, 3, -1, -1)
    cols = [u8(batch.mr.expand(-1, 3, -1, -1)), u8(rgb), u8(luma)]
    if "luma" in how:
        cols.append(u8(finish([(batch, rgb)], "luma", sigma)[0]))
    if batch.truth is not None:
        cols.append(batch.truth.numpy())
    grid = np.concatenate([np.concatenate(list(row), 1) for row in zip(*cols)], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def run_seed(config: str, overrides: list[str], seed: int, steps: int, points: int, out: Path,
             use_ema: bool, rescore: bool = False, figure_path: Path | None = None, how: str = "raw",
             sigma: float = 1.0) -> list[dict[str, Any]]:
    from cmgan.seg_export import load_segmenter
    from cmgan.train.trainer import train

    every = max(1, steps // points)
    run_dir = out / f"seed{seed}"
    if not rescore:
        shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(config, overrides + [
        f'train.run_dir="{run_dir}"', f"train.seed={seed}", f"train.steps={steps}",
        f"train.ckpt_every_steps={every}", "train.ckpt_every_minutes=0", f"train.keep_last={points + 2}",
        f"train.sample_every={steps}"])
    t0 = time.time()
    if rescore:  # score the checkpoints of an earlier run of the same command
        t0 = (run_dir / "config.toml").stat().st_mtime
    else:
        summary = train(cfg)
        if summary["status"] != "completed":
            raise RuntimeError(f"seed {seed}: training ended {summary['status']}")
    S = load_segmenter(cfg.train.seg_checkpoint, cfg.model)[0] if cfg.model.fusion != "none" else None
    S = S.to(memory_format=torch.channels_last) if S is not None else None
    fid_model, reason = load_fid_model(cfg.eval, "cpu")
    real = real_statistics(cfg.data.color_shards, fid_model, cfg.eval)[:2] if fid_model is not None else None
    label_names = _label_names(cfg)
    rows = []
    for ckpt in sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1])):
        state, _ = checkpoint.load(ckpt, 0)
        row = {"step": int(state["step"]), "wall_s": round((ckpt / checkpoint.COMPLETE).stat().st_mtime - t0, 1)}
        G = _generator(cfg, state, use_ema)
        row.update(score(cfg, G, S, fid_model, real, label_names, how, sigma))
        rows.append(row)
        if figure_path is not None and ckpt.name.endswith(f"{steps:08d}"):
            figure(cfg, G, S, figure_path, how=how, sigma=sigma)
        print(json.dumps({"seed": seed, **{k: row.get(k) for k in CURVE if k in row}, "step": row["step"]}),
              file=sys.stderr, flush=True)
    return rows


def aggregate(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per point: mean, std (ddof 0) and the values over seeds of every numeric metric."""
    curve = []
    for rows in zip(*per_seed):
        point: dict[str, Any] = {"step": rows[0]["step"]}
        for name in rows[0]:
            vals = [r.get(name) for r in rows]
            if name == "step" or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
                continue
            a = np.asarray(vals, dtype=np.float64)
            point[name] = {"mean": round(float(a.mean()), 4), "std": round(float(a.std()), 4),
                           "values": [round(float(v), 4) for v in a]}
        for name in ("tissue_de2000",):
            if all(name in r for r in rows):
                point[name] = {t: round(float(np.mean([r[name][t] for r in rows])), 3) for t in rows[0][name]}
        for name in ("separation_ab_truth", "flicker_ab_truth"):
            if rows[0].get(name) is not None:
                point[name] = round(float(rows[0][name]), 4)
        curve.append(point)
    return curve


def targets_met(last: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, (op, bound) in TARGETS.items():
        m = last.get(name, {}).get("mean") if isinstance(last.get(name), dict) else None
        out[name] = {"target": f"{op} {bound}", "mean": m,
                     "met": None if m is None else (m >= bound if op == ">=" else m <= bound)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "quality.toml"))
    p.add_argument("--size", type=int, default=64, help="image side (64 or 128 on the demo phantoms)")
    p.add_argument("--mr-shards", help="MR shard directory (default: the demo's, at --size)")
    p.add_argument("--color-shards", help="color shard directory (default: the demo's, at --size)")
    p.add_argument("--seg", help="segmenter export (default: the config's train.seg_checkpoint)")
    p.add_argument("--steps", type=int, default=0, help="training steps (default: the config's train.steps)")
    p.add_argument("--points", type=int, default=4, help="evaluation points along training")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="seeds trained at once, in separate processes")
    p.add_argument("--out", default="bench-out/quality", help="scratch directory of the runs")
    p.add_argument("--no-ema", action="store_true", help="score G's own weights even when an EMA is kept")
    p.add_argument("--figure", help="PNG of test slices colorized by seed 0's last checkpoint (input | output | "
                   "its luminance | truth)")
    p.add_argument("--rescore", action="store_true", help="score the checkpoints already in --out; train nothing")
    p.add_argument("--finish", default="raw", choices=FINISHES,
                   help="score G's output as is (raw), with the input's luminance (luma: colorize "
                   "--keep-luminance), chroma-smoothed over slices (smooth: colorize --smooth-chroma) or both")
    p.add_argument("--smooth-sigma", type=float, default=1.0, help="Gaussian sigma in slices of --finish smooth")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("CMGAN_THREADS", torch.get_num_threads())))

    overrides = [f"model.image_size={args.size}"]
    if args.mr_shards:
        overrides.append(f'data.mr_shards="{Path(args.mr_shards).absolute()}"')
    if args.color_shards:
        overrides.append(f'data.color_shards="{Path(args.color_shards).absolute()}"')
    if args.seg:
        overrides.append(f'train.seg_checkpoint="{Path(args.seg).absolute()}"')
    overrides += args.overrides
    cfg = load_config(args.config, overrides)
    steps = args.steps or cfg.train.steps
    out = Path(args.out).absolute()
    t0 = time.time()
    jobs = [(args.config, overrides, s, steps, args.points, out, not args.no_ema, args.rescore,
             Path(args.figure) if args.figure and s == 0 else None, args.finish, args.smooth_sigma)
            for s in range(args.seeds)]
    per_seed = map_in_processes(run_seed, jobs, args.jobs)
    curve = aggregate(per_seed)
    line = {
        "bench": "quality", "config": str(args.config), "overrides": overrides, "seeds": args.seeds,
        "steps": steps, "image_size": cfg.model.image_size, "width": cfg.model.width,
        "batch": cfg.data.batch_size, "threads": torch.get_num_threads(),
        "ema": cfg.train.ema_decay > 0 and not args.no_ema, "finish": args.finish,
        "smooth_sigma": args.smooth_sigma if "smooth" in args.finish else None, "curve": curve,
        "targets": targets_met(curve[-1]),
        "oracles": oracles(cfg, _label_names(cfg)), "total_s": round(time.time() - t0, 1),
        "per_seed": per_seed,
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
