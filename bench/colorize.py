"""Benchmark of batch colorization; prints ONE JSON line.

Measured in one run, on the same export (random weights of the chosen size; speed does not depend on training)
and the same real brain volumes (the MNI152 T1 template shipped in nilearn, resampled by --stride, in several
orientations and intensity scales):

- pipeline:  `run_colorize` over an archive of --volumes NIfTI volumes with the command's default outputs
             (RGB NIfTI and OME-Zarr): read + normalize in a loader thread, slices in batches of --batch through
             the generator, outputs written in a writer thread.
- baseline:  a per-slice loop like the reference test script of the public code: for every slice, load its PNG,
             scale it to [-1, 1] and to the model size, call the generator at batch 1, save a PNG.
             (The PNG slices are cut from the same normalized volumes beforehand, untimed.)
- memory:    peak RSS of a fresh process colorizing archives of growing size (--rss-volumes) of full-size
             volumes (--rss-stride 1, a tiny model, default outputs); a least-squares line over archive size
             gives MB per volume. The runner holds up to one volume per stage (load, colorize, write), so memory
             rises until an archive fills the three stages; "flat" is judged on the line over the archives that
             do (more than 3 volumes) and reported only when its slope is under 5% of one volume's float32 size
             (each volume is ~33 MB as float32: holding the archive would show as >= 33 MB per volume). The line
             over all sizes is reported beside it.
The pipeline and the per-slice loop alternate for --rounds rounds (medians reported).
- consistency: mean colour change between adjacent slices (delta_ab, CIE Lab) without and with --smooth-chroma.

    python bench/colorize.py                       # image 64, width 16: a few minutes on 2 CPU cores
    python bench/colorize.py --size 256 --width 64 --seg-width 64 --stride 1     # the paper's sizes
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import machine_info  # noqa: E402

PIPELINE_STAGES = 3
"""Volumes the colorize runner holds at once at most: one being read, one through the generator, one written."""
CODES = ["RAS", "LPI", "PSR", "ILA", "SAL", "RPI", "LAS", "AIR"]


def template(stride: int) -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("nilearn")
    if spec is None:
        raise SystemExit("bench/colorize.py needs nilearn (dev extra) for its real T1 volumes")
    path = Path(spec.origin).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)[::stride, ::stride, ::stride]
    affine = img.affine.copy()
    affine[:3, :3] *= stride
    return np.ascontiguousarray(data), affine


def write_archive(folder: Path, n: int, data: np.ndarray, affine: np.ndarray, codes: list[str] = CODES) -> Path:
    """n NIfTI volumes: the template in the voxel orders `codes` (cycled) and different intensity scales."""
    for i in range(n):
        src = nib.orientations.io_orientation(affine)
        t = nib.orientations.ornt_transform(src, nib.orientations.axcodes2ornt(codes[i % len(codes)]))
        d = nib.orientations.apply_orientation(data * (1 + 0.2 * i) + 5 * i, t)
        a = affine @ nib.orientations.inv_ornt_aff(t, data.shape)
        path = folder / f"sub-{i:03d}" / f"sub-{i:03d}_T1w.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(d).astype(np.int16), a), str(path))
    return folder


def make_export(path: Path, size: int, width: int, seg_width: int) -> Path:
    from cmgan.config import ModelConfig
    from cmgan.data.intensity import Normalization
    from cmgan.export import save_export
    from cmgan.models import build_networks, build_segmenter

    cfg = ModelConfig(image_size=size, width=width, seg_width=seg_width)
    torch.manual_seed(0)
    nets = build_networks(cfg)
    return save_export(path, model_cfg=cfg, generator_state=nets.G.state_dict(),
                       segmenter_state=build_segmenter(cfg).state_dict(), normalization=Normalization().to_dict(),
                       meta={"axis": 2})


def pipeline(export: Path, archive: Path, out: Path, batch: int, device: str, smooth: float = 0.0) -> dict:
    from cmgan.colorize.runner import ColorizeOptions, run_colorize

    t = time.perf_counter()
    summary = run_colorize(ColorizeOptions(checkpoint=str(export), inputs=(str(archive),), out=str(out),
                                           batch=batch, device=device, smooth_chroma=smooth))
    wall = time.perf_counter() - t  # includes loading the export, like a user's run
    assert summary["counts"]["failed"] == 0, summary
    return {"wall_s": wall, "slices": summary["slices_colorized"], "inputs": summary["inputs"]}


def png_slices(archive: Path, folder: Path, norm_dict: dict) -> list[Path]:
    """The normalized tissue slices of every volume as 8-bit PNGs (the reference script's inputs; untimed)."""
    from PIL import Image

    from cmgan.data.intensity import Normalization, foreground_mask, normalize_mr
    from cmgan.data.slicing import take_slice
    from cmgan.data.volumes import read_volume

    files = []
    for i, nii in enumerate(sorted(archive.rglob("*.nii.gz"))):
        vol = read_volume(nii)
        mask = foreground_mask(vol.data)
        image = normalize_mr(vol.data, Normalization.from_dict(norm_dict), mask=mask, window_mask=mask)
        for k in range(image.shape[2]):
            if take_slice(mask, 2, k).any():
                p = folder / f"v{i:03d}_{k:04d}.png"
                Image.fromarray(np.clip(np.rint((take_slice(image, 2, k) + 1) * 127.5), 0, 255).astype(np.uint8)
                                ).save(p)
                files.append(p)
    return files


def per_slice_loop(export_path: Path, files: list[Path], out: Path, device: str) -> dict:
    """Reference-script style: one PNG in, one generator call at batch 1, one PNG out."""
    from PIL import Image

    from cmgan.data.slicing import to_size
    from cmgan.export import load_export

    t = time.perf_counter()
    export = load_export(export_path, device)
    size = export.model_cfg.image_size
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        gray = np.asarray(Image.open(f), dtype=np.float32) / 127.5 - 1.0
        x, _ = to_size(gray, size, -1.0)
        rgb = export.colorize(torch.from_numpy(x)[None, None])[0].permute(1, 2, 0).cpu().numpy()
        Image.fromarray(np.clip(np.rint((rgb + 1) * 127.5), 0, 255).astype(np.uint8)).save(out / f.name)
    return {"wall_s": time.perf_counter() - t, "slices": len(files)}


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB: VmHWM of its address space (Linux). Not ru_maxrss: Linux carries that over
    execve, so a child would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_rss(args: argparse.Namespace) -> None:
    """--child: colorize one archive and print this process's peak RSS (MiB)."""
    pipeline(Path(args.export), Path(args.archive), Path(args.out), args.batch, args.device)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="model image size")
    p.add_argument("--width", type=int, default=16, help="generator width")
    p.add_argument("--seg-width", type=int, default=16, help="segmenter width")
    p.add_argument("--stride", type=int, default=3, help="template voxel stride (3: 66x78x63 at 3 mm)")
    p.add_argument("--volumes", type=int, default=3, help="volumes of the throughput archive")
    p.add_argument("--rss-volumes", default="2,4,8,16", help="archive sizes of the memory measurement")
    p.add_argument("--rss-stride", type=int, default=1,
                   help="template stride of the memory archives (1: full 197x233x189 volumes, so that holding "
                        "them would show; a tiny model keeps these runs short: memory is about volumes)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of pipeline and per-slice loop")
    p.add_argument("--smooth-chroma", type=float, default=1.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for both measurements (default: torch's); the JSON says which")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--export", help=argparse.SUPPRESS)
    p.add_argument("--archive", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child_rss(args)
        return

    import logging

    logging.disable(logging.INFO)
    from cmgan.colorize.runner import resolve_device

    device = str(resolve_device(args.device))
    with tempfile.TemporaryDirectory(prefix="bench-colorize-") as tmp:
        tmp = Path(tmp)
        data, affine = template(args.stride)
        export = make_export(tmp / "export" / "generator.pt", args.size, args.width, args.seg_width)
        archive = write_archive(tmp / "archive", args.volumes, data, affine)
        from cmgan.export import load_export

        loaded = load_export(export, device)
        norm, autocast = loaded.normalization, loaded.autocast
        loaded.colorize(torch.zeros(2, 1, args.size, args.size))  # first-call setup out of both timings

        (tmp / "png-in").mkdir()
        files = sorted(png_slices(archive, tmp / "png-in", norm))
        fast_runs, slow_runs = [], []
        for r in range(max(1, args.rounds)):  # alternate: load from other processes falls on both alike
            fast_runs.append(pipeline(export, archive, tmp / f"out-pipeline-{r}", args.batch, device))
            slow_runs.append(per_slice_loop(export, files, tmp / f"png-out-{r}", device))
        fast = sorted(fast_runs, key=lambda x: x["wall_s"])[len(fast_runs) // 2]
        slow = sorted(slow_runs, key=lambda x: x["wall_s"])[len(slow_runs) // 2]
        smooth = pipeline(export, write_archive(tmp / "archive1", 1, data, affine), tmp / "out-smooth", args.batch,
                          device, smooth=args.smooth_chroma)["inputs"][0]

        rss = {}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        big, big_affine = template(args.rss_stride)
        tiny = make_export(tmp / "export-tiny" / "generator.pt", 32, 8, 8)
        for n in [int(v) for v in args.rss_volumes.split(",")]:
            # Every archive cycles the same two voxel orders (a permuted one costs copies when reoriented), so
            # the archives differ only in their number of volumes.
            arch = write_archive(tmp / f"archive-rss-{n}", n, big, big_affine, codes=["PSR", "LPI"])
            res = subprocess.run([sys.executable, __file__, "--child", "--export", str(tiny), "--archive",
                                  str(arch), "--out", str(tmp / f"out-rss-{n}"), "--batch", str(args.batch),
                                  "--device", device, "--threads", str(torch.get_num_threads())],
                                 env=env, capture_output=True, text=True, check=True)
            rss[str(n)] = round(json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_mb"], 1)

    fast_sps = fast["slices"] / fast["wall_s"]
    slow_sps = slow["slices"] / slow["wall_s"]
    sizes = sorted(rss, key=int)
    xs, ys = np.array([int(k) for k in sizes], float), np.array([rss[k] for k in sizes], float)
    slope, intercept = np.polyfit(xs, ys, 1) if len(xs) > 1 else (float("nan"), float("nan"))
    full = xs > PIPELINE_STAGES  # archives long enough to keep every stage busy: the steady state
    steady = np.polyfit(xs[full], ys[full], 1)[0] if full.sum() > 1 else float("nan")
    volume_mb = big.size * 4 / 2**20
    print(json.dumps({
        "bench": "colorize",
        **machine_info(),
        "device": device,
        "autocast": str(autocast).replace("torch.", "") if autocast else "float32",
        "model": {"image_size": args.size, "width": args.width, "seg_width": args.seg_width, "weights": "random"},
        "volume_shape": list(data.shape),
        "volumes": args.volumes,
        "slices": fast["slices"],
        "batch": args.batch,
        "pipeline_slices_per_s": round(fast_sps, 2),
        "per_slice_loop_slices_per_s": round(slow_sps, 2),
        "speedup": round(fast_sps / slow_sps, 2),
        "rss_volume_shape": list(big.shape),
        "rss_volume_mb": round(volume_mb, 1),
        "formats": "default (nifti + omezarr)",
        "rounds": max(1, args.rounds),
        "peak_rss_mb_by_volumes": rss,
        "rss_mb_per_volume_fit": round(float(slope), 2),
        "rss_mb_fixed_fit": round(float(intercept), 1),
        "rss_slope_over_volume_size": round(float(slope) / volume_mb, 3),
        "rss_steady_volumes": [int(v) for v in xs[full]],
        "rss_steady_mb_per_volume_fit": round(float(steady), 2),
        "rss_steady_slope_over_volume_size": round(float(steady) / volume_mb, 3),
        "rss_flat": bool(abs(steady) < 0.05 * volume_mb),
        "rss_growth_first_to_last": round(rss[sizes[-1]] / rss[sizes[0]], 3),
        # Holding the archive would add at least a float32 volume per extra volume; streaming adds ~nothing once
        # the three stages (load, colorize, write) are full.
        "rss_mb_added_by_last_step": round(rss[sizes[-1]] - rss[sizes[-2]], 1) if len(sizes) > 1 else None,
        "volumes_added_by_last_step": int(sizes[-1]) - int(sizes[-2]) if len(sizes) > 1 else None,
        "delta_ab_raw": smooth["consistency_raw"]["delta_ab"],
        "delta_ab_smoothed": smooth["consistency"]["delta_ab"],
        "smooth_chroma_sigma": args.smooth_chroma,
    }))


if __name__ == "__main__":
    main()
