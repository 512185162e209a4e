"""Colorization quality on real anatomy: MNI152 T1 as the MR domain, demo color phantoms as the color domain.

    python bench/quality_mni.py                                  # 64x64, S 300 steps, G 600 steps, 1 seed
    python bench/quality_mni.py --seeds 3 --figure mni.png       # mean and std over 3 seeds, and a picture
    python bench/quality_mni.py --size 128                       # 128x128 (builds demo color phantoms at 128)
    python bench/quality_mni.py train.lr=2e-4 loss.identity=0    # any dotted override of the run config
    python bench/quality_mni.py --rescore --keep-luminance       # the runs in --out again, input luminance kept
    python bench/quality_mni.py --seeds 3 --jobs 2 --reuse-seg --reuse-runs   # add seeds 1, 2 to an earlier seed 0

Steps, each through the library:
1. Data (offline, nilearn): the MNI ICBM152 2009 T1 template (197x233x189, 1 mm, skull-stripped), written
   inside its brain mask, and a tissue label map from its GM/WM probability maps: inside the brain mask the
   argmax of (gm, wm, csf = 1 - gm - wm clipped at 0) -> cortex (1), white_matter (3), csf (4); outside 0.
   The maps do not tell cortical from deep gray matter, so all gray matter is labelled cortex and
   subcortical_gm (2) is absent. MNI is ONE subject, so `python -m shards build` puts every slice in the train
   split (--split 1,0,0), along --axis (default 2, axial), at --size.
2. S: `pretrain_segmenter` on those shards (--seg-steps). There is no held-out subject, so its Dice is measured
   on the training slices (`dice_train`, via `losses.segmentation.dice_counts`): it says whether S learnt the tissue
   map, not how it generalizes.
3. G: the named config (default configs/quality.toml) trained from scratch with data.mr_shards = the MNI shards,
   data.color_shards = the demo color phantoms and train.seg_checkpoint = the new S, for --steps, per seed.
4. The MNI T1 volume itself (the training subject: no second real subject exists offline) colorized by the run's
   export through `run_colorize`, the RGB NIfTI read back, and the volume scored slice by slice along the axis
   with `QualityAccumulator` (brain mask dilated 2 voxels in-plane): SSIM/PSNR of the BT.601 luminance against
   the input at its own grid (`ssim_fg`, `psnr_fg`) and against the input passed through the model's grid and
   back with the colorizer's own `to_size`/`from_size` (`grid_ssim_fg`, `grid_psnr_fg`: what the model costs
   beyond resolution), MI, tissue a*b* separation (beside the demo palette's own, `palette_separation_ab`),
   slice-to-slice chroma flicker inside the brain, the mean Lab color per tissue, wall times.
One JSON line: per metric mean, std (ddof 0) and the per-seed values.
"""

from __future__ import annotations

import argparse
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
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))  # its helpers, also when a test loads this file as a module

from parallel import map_in_processes, threads_per_job  # noqa: E402

from cmgan.config import ConfigError, load_config, to_dict  # noqa: E402
from cmgan.data import schema  # noqa: E402
from cmgan.models.edges import BT601  # noqa: E402

TISSUES = {1: "cortex", 3: "white_matter", 4: "csf"}
"""The labels the MNI maps give (schema.LABEL_NAMES indices)."""
SCORES = ("ssim_fg", "psnr_fg", "ssim", "psnr", "mi", "grid_ssim_fg", "grid_psnr_fg", "separation_ab",
          "flicker_ab", "rim_dy", "interior_dy", "seg_s", "train_s", "colorize_s", "score_s")
RIM_VOXELS = 2
"""Depth of the brain's outer shell in which a dark halo is measured (rim_dy)."""
T1_NAME, LABEL_NAME = "mni152_T1.nii", "mni152_T1_seg.nii"  # uncompressed: gzip costs more than it saves here


# ------------------------------------------------------------------------------------------------------ data


def mni_arrays(resolution: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The MNI152 template from nilearn's bundled files (no network).

    returns t1 (X, Y, Z) float32 in [0, 1] set to 0 outside the brain, label (X, Y, Z) uint8 (see module doc),
    brain (X, Y, Z) bool, affine (4, 4) RAS mm.
    """
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=resolution)
    gm = datasets.load_mni152_gm_template(resolution=resolution).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=resolution).get_fdata(dtype=np.float32)
    brain = datasets.load_mni152_brain_mask(resolution=resolution).get_fdata(dtype=np.float32) > 0
    return (np.where(brain, t1.get_fdata(dtype=np.float32), 0.0).astype(np.float32), tissue_labels(gm, wm, brain),
            brain, t1.affine.copy())


def tissue_labels(gm: np.ndarray, wm: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Label map from GM/WM probabilities: inside `brain` the argmax of (gm, wm, 1 - gm - wm clipped at 0) as
    cortex (1) / white_matter (3) / csf (4); 0 outside. All arrays (X, Y, Z); returns uint8."""
    csf = np.clip(1.0 - gm - wm, 0.0, None)
    codes = np.array([1, 3, 4], dtype=np.uint8)[np.argmax(np.stack([gm, wm, csf]), axis=0)]
    return np.where(brain, codes, 0).astype(np.uint8)


def prepare_data(root: Path, size: int, axis: int, resolution: int = 1) -> dict[str, Any]:
    """Write the T1 and label NIfTIs under root/sources and build root/shards/mr (all slices in train)."""
    import nibabel as nib

    from shards.build import BuildOptions, build

    t1, label, brain, affine = mni_arrays(resolution)
    # The scoring compares the colorizer's output (stored in this file's voxel order) with canonical RAS+ arrays.
    if nib.aff2axcodes(affine) != ("R", "A", "S"):
        raise RuntimeError(f"MNI template not stored RAS+ ({nib.aff2axcodes(affine)})")
    src = root / "sources"
    src.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(t1, affine), src / T1_NAME)
    nib.save(nib.Nifti1Image(label, affine), src / LABEL_NAME)
    shards = root / "shards" / "mr"
    result = build([str(src / T1_NAME)], BuildOptions(
        domain="mr", out=shards, size=size, axis=axis, split=(1.0, 0.0, 0.0), labels=(str(src / LABEL_NAME),),
        salt_file=root / "pseudonym-salt", max_count=32, overwrite=True, zarr=False))
    if result.exit_code != 0:
        raise RuntimeError(f"{shards}: building the MNI shards failed: {[f.message for f in result.failures]}")
    return {"t1": src / T1_NAME, "label": src / LABEL_NAME, "shards": shards, "brain": brain, "tissue": label,
            "samples": result.manifest["counts"]["samples"]}


def color_domain(args: argparse.Namespace, out: Path) -> tuple[Path, Path | None]:
    """(color shards, demo MR shards with true colors or None): given, the demo's at 64, or built at --size."""
    if args.color_shards:
        color = Path(args.color_shards).absolute()
    elif args.size == 64:
        color = REPO / "demo" / "shards" / "color"
    else:
        color = out / f"demo{args.size}" / "color"
        if not (color / "manifest.json").is_file():
            from shards.demo import demo

            demo(color.parent, size=args.size)
    if not (color / "manifest.json").is_file():
        raise SystemExit(f"{color}: no color shards (run `python launch/sweep.py` once, or give --color-shards)")
    mr = color.parent / "mr"
    return color, (mr if (mr / "manifest.json").is_file() else None)


def palette_separation(demo_mr: Path | None, label_names: tuple[str, ...]) -> float | None:
    """The a*b* separation of the demo phantoms' true colors (the color domain's palette) from their test split,
    over the tissues the MNI labels have (cortex, white_matter, csf), so it compares with the output's."""
    if demo_mr is None:
        return None
    import dataclasses

    from cmgan.eval.quality import QualityAccumulator
    from cmgan.eval.slices import MR_MEMBERS, mr_batches, read_samples

    acc = QualityAccumulator(label_names)
    for batch in mr_batches(read_samples(demo_mr, "test", 0, 1, MR_MEMBERS, 16), 16):
        if batch.truth is None or batch.label is None:
            return None
        keep = torch.zeros(len(label_names), dtype=torch.long)
        keep[list(TISSUES)] = torch.tensor(list(TISSUES))
        batch = dataclasses.replace(batch, label=keep[batch.label.clamp(0, len(label_names) - 1)])
        acc.update(batch, batch.truth.permute(0, 3, 1, 2).float() / 127.5 - 1)
    return acc.result()["separation_ab"]


# ------------------------------------------------------------------------------------------------------- S


def segmenter(cfg, shards: Path) -> dict[str, Any]:
    """Pretrain S and measure its hard Dice per class on the (training) slices of `shards`."""
    from cmgan.data.splits import read_split
    from cmgan.losses.segmentation import dice_counts
    from cmgan.seg_export import load_segmenter
    from cmgan.train.seg_pretrain import pretrain_segmenter

    t0 = time.time()
    summary = pretrain_segmenter(cfg)
    seconds = time.time() - t0
    if summary["status"] != "completed":
        raise RuntimeError(f"S pretraining ended {summary['status']}")
    S, _, _ = load_segmenter(summary["export"], cfg.model)
    counts = torch.zeros(cfg.model.seg_classes, 2, dtype=torch.float64)
    samples = list(read_split(shards, "train", keys=(schema.MR_KEY, schema.LABEL_KEY)))
    with torch.inference_mode():
        for i in range(0, len(samples), 32):
            part = samples[i : i + 32]
            x = torch.stack([torch.from_numpy(s[schema.MR_KEY].astype(np.float32)) for s in part])[:, None]
            y = torch.stack([torch.from_numpy(s[schema.LABEL_KEY].astype(np.int64)) for s in part])
            counts += dice_counts(S(x).float().argmax(1), y, cfg.model.seg_classes)
    dice = {schema.LABEL_NAMES[c]: round(float(counts[c, 0] / counts[c, 1]), 4)
            for c in range(cfg.model.seg_classes) if counts[c, 1] > 0}
    return {"export": summary["export"], "dice_train": dice, "seconds": round(seconds, 1),
            "steps": summary["steps"]}


# ----------------------------------------------------------------------------------------------- the volume


def read_rgb_nifti(path: str | Path) -> np.ndarray:
    """An RGB24 NIfTI (as the colorizer writes it) -> (X, Y, Z, 3) uint8 in its stored voxel order."""
    import nibabel as nib

    data = np.asanyarray(nib.load(str(path)).dataobj)
    return np.ascontiguousarray(data).view(np.uint8).reshape(data.shape + (3,))


def model_grid(image: np.ndarray, mask: np.ndarray, axis: int, size: int, pixel: tuple[float, float]) -> np.ndarray:
    """The normalized input seen through the model's grid: each slice along `axis` resized to (size, size) and back
    with the colorizer's `to_size` / `from_size` (bilinear), background -1 outside `mask`. (X, Y, Z) float32."""
    from cmgan.data.slicing import from_size, put_slice, take_slice, to_size

    out = np.full(image.shape, -1.0, dtype=np.float32)
    for k in range(image.shape[axis]):
        m2 = take_slice(mask, axis, k)
        if not m2.any():
            continue
        small, place = to_size(take_slice(image, axis, k), size, -1.0, pixel, order=1)
        m, _ = to_size(m2.astype(np.uint8), size, 0, pixel, order=0)
        small[m == 0] = -1.0
        back = from_size(np.clip(small, -1, 1).astype(np.float16).astype(np.float32), place, order=1)
        back[~m2] = -1.0
        put_slice(out, axis, k, back)
    return out


def score_volume(image: np.ndarray, rgb: np.ndarray, brain: np.ndarray, tissue: np.ndarray, axis: int,
                 grid_image: np.ndarray | None = None, batch: int = 16) -> dict[str, Any]:
    """Score a colorized volume slice by slice along `axis` over the brain (dilated 2 voxels in-plane).

    image: (X, Y, Z) float in [-1, 1] (the normalized input); rgb: (X, Y, Z, 3) uint8 (the output); brain:
    (X, Y, Z) bool; tissue: (X, Y, Z) uint8 labels; grid_image: the input through the model's grid (optional).
    returns QualityAccumulator's figures (ssim_fg, psnr_fg, ssim, psnr, mi, separation_ab, flicker_ab, slices),
    grid_ssim_fg / grid_psnr_fg against grid_image, tissue_lab {tissue: [L, a, b]} (mean inside the brain), and
    rim_dy / interior_dy: the output's BT.601 luminance minus the input's (both in [0, 1]), mean over the brain's
    outer shell of RIM_VOXELS voxels and over the rest of the brain (a dark halo: rim_dy < 0 while interior_dy ~ 0).
    """
    from cmgan.colorspace import srgb8_to_lab as rgb_to_lab
    from cmgan.data.slicing import take_slice
    from cmgan.eval.quality import QualityAccumulator
    from cmgan.eval.slices import SliceBatch

    names = schema.LABEL_NAMES
    accs = {"": QualityAccumulator(names, fg_dilate=2)}
    if grid_image is not None:
        accs["grid_"] = QualityAccumulator(names, fg_dilate=2)
    sources = {"": image.astype(np.float32, copy=False)}
    if grid_image is not None:
        sources["grid_"] = grid_image.astype(np.float32, copy=False)
    ks = [k for k in range(image.shape[axis]) if take_slice(brain, axis, k).any()]
    for i in range(0, len(ks), batch):
        part = ks[i : i + batch]
        stack = lambda a, part=part: torch.from_numpy(np.stack([take_slice(a, axis, k) for k in part]))  # noqa: E731
        out = stack(rgb).permute(0, 3, 1, 2).float() / 127.5 - 1
        for prefix, acc in accs.items():
            acc.update(SliceBatch(keys=[f"{k:05d}" for k in part], subjects=["mni"] * len(part),
                                  mr=stack(sources[prefix])[:, None], mask=stack(brain),
                                  label=stack(tissue).long(), truth=None), out)
    result = accs[""].result()
    if "grid_" in accs:
        g = accs["grid_"].result()
        result.update(grid_ssim_fg=g["ssim_fg"], grid_psnr_fg=g["psnr_fg"])
    dy = (rgb[brain].astype(np.float32) @ np.asarray(BT601, np.float32)) / 255 - (image[brain] + 1) / 2
    shell = (brain & ~ndimage.binary_erosion(brain, ndimage.generate_binary_structure(3, 1), RIM_VOXELS))[brain]
    result.update(rim_dy=float(dy[shell].mean()), interior_dy=float(dy[~shell].mean()))
    lab = rgb_to_lab(rgb[brain])
    result["tissue_lab"] = {names[t]: [round(float(v), 2) for v in lab[tissue[brain] == t].mean(0)]
                            for t in sorted(set(np.unique(tissue[brain]).tolist()) - {0})}
    return result


# ---------------------------------------------------------------------------------------------------- figure


def figure(image: np.ndarray, rgb: np.ndarray, brain: np.ndarray, path: Path, count: int = 6) -> None:
    """One PNG: `count` axial slices as input | output pairs (3 pairs a row), then a coronal and a sagittal reslice
    through the centre (input | output each), where slice-to-slice flicker shows as horizontal streaks. Canonical
    RAS arrays; shown with anterior / superior up, upscaled 2x."""
    from PIL import Image

    gray = np.repeat(np.clip(np.rint((image + 1) * 127.5), 0, 255).astype(np.uint8)[..., None], 3, -1)
    gray[~brain] = 0
    zs = np.flatnonzero(brain.any((0, 1)))
    picks = [int(round(z)) for z in np.linspace(zs[0] + 0.2 * len(zs), zs[0] + 0.85 * len(zs), count)]
    cx, cy, _ = [int(round(c)) for c in np.argwhere(brain).mean(0)]
    up = lambda a: np.rot90(a)  # noqa: E731 - (X, Y) RAS -> rows from anterior/superior down, columns left to right
    pair = lambda a, b: np.concatenate([up(a), up(b)], 1)  # noqa: E731
    panels = [pair(gray[:, :, z], rgb[:, :, z]) for z in picks]
    rows = [np.concatenate(panels[i : i + 3], 1) for i in range(0, len(panels), 3)]
    rows.append(np.concatenate([pair(gray[:, cy], rgb[:, cy]), pair(gray[cx], rgb[cx])], 1))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------ runs


def completed_run(run_dir: Path, cfg: Any) -> bool:
    """Whether `run_dir` holds a completed run of `cfg`: its recorded config.toml, read as a config (a field added to
    cmgan since then takes its default), equals `cfg`. A completed run of another config ends the command with one
    line naming the fields that differ: reusing it would mix recipes, and training over it would delete it."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    if summary.get("status") != "completed" or not summary.get("export"):
        return False  # preempted or failed: trained again
    try:
        recorded = load_config(run_dir / "config.toml")
    except (OSError, ConfigError) as e:
        raise SystemExit(f"{run_dir / 'config.toml'}: a completed run whose config cannot be read ({e}); move the "
                         "run away, or drop --reuse-runs to train over it") from None
    if recorded != cfg:
        old, new = flat(to_dict(recorded)), flat(to_dict(cfg))
        differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise SystemExit(f"{run_dir}: a completed run of another config (differs in {', '.join(differ)}); move it "
                         "away, or drop --reuse-runs to train over it")
    return True


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"seed": 1}} -> {"train.seed": 1}."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def run_seed(args: argparse.Namespace, overrides: list[str], seed: int, data: dict[str, Any], out: Path,
             threads: int) -> dict[str, Any]:
    """Train G for one seed, colorize the MNI volume with its export, score it (and draw it for seed 0)."""
    from cmgan.colorize.inputs import discover
    from cmgan.colorize.runner import ColorizeOptions, run_colorize
    from cmgan.colorize.volume import prepare_volume, read_source
    from cmgan.data.intensity import Normalization
    from cmgan.data.slicing import slice_spacing
    from cmgan.export import load_export
    from cmgan.train.trainer import train

    run_dir = out / f"seed{seed}"
    cfg = load_config(args.config, overrides + [
        f'train.run_dir="{run_dir}"', f"train.seed={seed}", f"train.steps={args.steps}",
        f"train.ckpt_every_steps={args.steps}", "train.ckpt_every_minutes=0", f"train.sample_every={args.steps}"])
    if args.rescore or (args.reuse_runs and completed_run(run_dir, cfg)):  # the export of an earlier run
        summary = json.loads((run_dir / "summary.json").read_text())
        train_s = None
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # from scratch: a run directory with a checkpoint resumes
        t0 = time.time()
        summary = train(cfg)
        train_s = round(time.time() - t0, 1)
    if summary["status"] != "completed" or not summary.get("export"):
        raise RuntimeError(f"seed {seed}: training ended {summary['status']}")
    t0 = time.time()
    col = run_colorize(ColorizeOptions(checkpoint=summary["export"], inputs=(str(data["t1"]),),
                                       out=str(run_dir / ("colorized-luma" if args.keep_luminance else "colorized")),
                                       formats=("nifti",), shard="0/1", threads=threads,
                                       keep_luminance=args.keep_luminance))
    colorize_s = time.time() - t0
    record = col["inputs"][0]
    if record["status"] not in ("done", "skipped"):
        raise RuntimeError(f"seed {seed}: colorizing failed: {record.get('error') or record}")
    rgb = read_rgb_nifti(record["outputs"]["nifti"])  # the T1 was written in RAS: stored order == canonical
    t0 = time.time()
    export = load_export(summary["export"], "cpu")
    axis = int(export.meta.get("axis", args.axis))
    (inp,), _ = discover([str(data["t1"])])
    vol, geometry = read_source(inp)
    prep = prepare_volume(vol, geometry, Normalization.from_dict(export.normalization), axis,
                          int(export.model_cfg.image_size))
    grid = model_grid(prep.image, prep.mask, axis, int(export.model_cfg.image_size),
                      slice_spacing(vol.spacing, axis))
    result = score_volume(prep.image, rgb, data["brain"], data["tissue"], axis, grid)
    result.update(train_s=train_s, colorize_s=round(colorize_s, 1), score_s=round(time.time() - t0, 1),
                  steps=summary["steps"], seed=seed)
    if args.figure and seed == 0:
        figure(prep.image, rgb, data["brain"], Path(args.figure))
    print(json.dumps({k: result.get(k) for k in ("seed", *SCORES) if k in result}), file=sys.stderr, flush=True)
    return result


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per numeric metric: mean, std (ddof 0) and the per-seed values; tissue_lab averaged over seeds."""
    out: dict[str, Any] = {}
    for name in rows[0]:
        vals = [r.get(name) for r in rows]
        if name == "seed" or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            continue
        a = np.asarray(vals, dtype=np.float64)
        out[name] = {"mean": round(float(a.mean()), 4), "std": round(float(a.std()), 4),
                     "values": [round(float(v), 4) for v in a]}
    out["tissue_lab"] = {t: [round(float(np.mean([r["tissue_lab"][t][c] for r in rows])), 2) for c in range(3)]
                         for t in rows[0]["tissue_lab"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "quality.toml"))
    p.add_argument("--size", type=int, default=64, help="image side of the shards and the model (64 or 128)")
    p.add_argument("--axis", type=int, default=2, choices=[0, 1, 2], help="slicing axis (RAS; 2 = axial)")
    p.add_argument("--resolution", type=int, default=1, choices=[1, 2], help="MNI voxel size in mm (2: nilearn "
                   "resamples the 1 mm template; for quick checks)")
    p.add_argument("--color-shards", help="color shard directory (default: the demo's at 64, else demo phantoms "
                   "built at --size under --out)")
    p.add_argument("--seg-steps", type=int, default=300, help="S pretraining steps")
    p.add_argument("--steps", type=int, default=600, help="CycleGAN training steps per seed")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--out", default="bench-out/quality_mni", help="scratch directory (data, S, runs)")
    p.add_argument("--figure", help="PNG of seed 0's colorized volume: axial input | output pairs, coronal and "
                   "sagittal reslices")
    p.add_argument("--rescore", action="store_true", help="colorize and score the runs already in --out (their S, "
                   "exports and data); train nothing")
    p.add_argument("--reuse-seg", action="store_true", help="keep the S already pretrained in --out by an earlier "
                   "run of this command (the same data and --seg-steps: it resumes, and a completed S is kept as is) "
                   "instead of pretraining it again; its Dice is measured either way")
    p.add_argument("--reuse-runs", action="store_true", help="keep each seed's run already in --out when it "
                   "completed with exactly this config (its config.toml); train the other seeds")
    p.add_argument("--jobs", type=int, default=1, help="seeds trained at once, in separate processes (the threads "
                   "split between them)")
    p.add_argument("--keep-luminance", action="store_true", help="colorize with the input's luminance "
                   "(`launch/colorize.py --keep-luminance`)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    threads = int(os.environ.get("CMGAN_THREADS", torch.get_num_threads()))
    torch.set_num_threads(threads)
    out = Path(args.out).absolute()
    t_all = time.time()

    data = prepare_data(out / "mni", args.size, args.axis, args.resolution)
    color, demo_mr = color_domain(args, out)
    overrides = [f"model.image_size={args.size}", f'data.mr_shards="{data["shards"]}"',
                 f'data.color_shards="{color}"', f'seg.run_dir="{out / "seg"}"',
                 f'train.seg_checkpoint="{out / "seg" / "export" / "seg.pt"}"']
    overrides += args.overrides
    seg_cfg = load_config(args.config, overrides + [f"seg.steps={args.seg_steps}", "seg.val_every=0"])
    if args.rescore:
        seg = {"export": str(out / "seg" / "export" / "seg.pt"), "dice_train": None, "seconds": None,
               "steps": json.loads((out / "seg" / "summary.json").read_text()).get("steps")}
    else:
        if not args.reuse_seg:
            shutil.rmtree(out / "seg", ignore_errors=True)  # from scratch: pretrain_segmenter resumes otherwise
        seg = segmenter(seg_cfg, data["shards"])
    per_job = threads_per_job(threads, args.jobs)
    rows = map_in_processes(run_seed, [(args, overrides, s, data, out, per_job) for s in range(args.seeds)],
                            args.jobs, threads)
    for r in rows:
        r["seg_s"] = seg["seconds"]
    cfg = load_config(args.config, overrides)
    line = {
        "bench": "quality_mni", "config": str(args.config), "overrides": overrides, "seeds": args.seeds,
        "steps": args.steps, "image_size": cfg.model.image_size, "axis": args.axis, "width": cfg.model.width,
        "batch": cfg.data.batch_size, "threads": threads, "precision": cfg.train.precision,
        "keep_luminance": args.keep_luminance, "rescore": args.rescore,
        "volume": f"MNI152 2009 T1 template, {'x'.join(map(str, data['brain'].shape))} at {args.resolution} mm: the "
                  "training subject itself (no second real subject offline)",
        "labels": "from the GM/WM maps: cortex = all gray matter (deep GM not separable), white_matter, csf",
        "mr_slices": data["samples"], "color_shards": str(color),
        "seg": {"steps": seg["steps"], "dice_train": seg["dice_train"], "seconds": seg["seconds"]},
        "palette_separation_ab": palette_separation(demo_mr, schema.LABEL_NAMES),
        "scores": aggregate(rows), "total_s": round(time.time() - t_all, 1), "per_seed": rows,
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
