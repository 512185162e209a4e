"""Typed run configuration: frozen dataclasses, TOML values, dotted command-line overrides.

Every constant of the method lives here with the defaults of ColorMedGAN (docs/method.md); code never
hard-codes one. A run is described by `RunConfig`; each component receives only its own section
(`ModelConfig`, `LossConfig`, ...).

    cfg = load_config("configs/demo.toml", ["loss.cycle=5", "train.run_dir='runs/x'"])
    cfg.loss.cycle  # 5.0

Override values are parsed as TOML literals (`true`, `5`, `"text"`, `[1, 2]`); a bare word that is not a
TOML literal is taken as a string, so `train.precision=bf16` works without quotes.

Why one file of ~540 lines: it holds one concept, the run's configuration. About 380 lines are the sections'
fields with a docstring each (a reader looks a setting up in one place); the rest turns TOML and overrides into
those types and back, and needs every section.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import tomli_w

from cmgan import files


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what it may be."""


def _choice(section: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{section}.{name}={value!r} is not valid; choose one of {list(allowed)}")


def _positive(section: str, name: str, value: float, strict: bool = True) -> None:
    if (value <= 0) if strict else (value < 0):
        bound = "> 0" if strict else ">= 0"
        raise ConfigError(f"{section}.{name}={value!r} must be {bound}")


def _registry(module: str, name: str) -> tuple[str, ...]:
    """The valid values of a choice field: the keys of the registry in the module that implements the choices
    (the single source; a new fusion mode registered in the generator is valid here at once). Imported on use,
    because those modules import this one."""
    return tuple(getattr(importlib.import_module(module), name))


@dataclass(frozen=True)
class ModelConfig:
    """Networks: generator G (MR -> RGB), F (RGB -> MR), segmentation U-Net S, discriminators Dx, Dy."""

    image_size: int = 256
    """Side of the square training slices in pixels; must be divisible by 2**depth (and by 2**seg_depth)."""
    width: int = 64
    """Channels of the generator's first conv; later stages double it (capped at 8x). 64 gives ~7.3M params."""
    depth: int = 3
    """Stride-2 downsamplings in the generator trunk (the paper's G has 3)."""
    fusion: str = "sigmoid"
    """How G uses S's features at half resolution: sigmoid (gate, the paper's best), concat, or none."""
    seg_width: int = 64
    """Channels of the segmentation U-Net's first stage (the public code: 64 .. 1024)."""
    seg_depth: int = 4
    """Downsamplings in the segmentation U-Net."""
    seg_classes: int = 5
    """Classes of S: background, cortex, subcortical gray matter, white matter, CSF."""
    disc_width: int = 32
    """Channels of the discriminator's first conv (32 -> 64 -> 128 -> 256 -> 256 -> 1)."""
    disc_input: str = "concat"
    """What D sees besides the image: concat (cat(img, E)), residual (img + img*E), gate (img*E), image."""
    laplacian: str = "4"
    """Laplacian kernel of the edge maps: 4-neighbour (paper eq. 9) or 8-neighbour (public code)."""
    upsample: str = "transpose"
    """Up-sampling of G and F: transpose (convT 4x4 stride 2, the paper's) or resize (nearest x2 + conv 3x3:
    no checkerboard; docs/method.md)."""

    def __post_init__(self) -> None:
        _choice("model", "fusion", self.fusion, _registry("cmgan.models.generator", "FUSION"))
        _choice("model", "disc_input", self.disc_input, _registry("cmgan.models.discriminator", "DISC_INPUT"))
        _choice("model", "laplacian", self.laplacian, _registry("cmgan.models.edges", "LAPLACIAN_KERNELS"))
        _choice("model", "upsample", self.upsample, _registry("cmgan.models.generator", "UPSAMPLE"))
        for name in ("image_size", "width", "depth", "seg_width", "seg_depth", "seg_classes", "disc_width"):
            _positive("model", name, getattr(self, name))
        if self.depth < 2:
            raise ConfigError(f"model.depth={self.depth} must be >= 2 (fusion happens after the first down conv)")
        for name, d in (("depth", self.depth), ("seg_depth", self.seg_depth)):
            if self.image_size % (2**d):
                raise ConfigError(
                    f"model.image_size={self.image_size} must be divisible by 2**model.{name}={2**d}; "
                    f"use e.g. {max(2**d, self.image_size // 2**d * 2**d)}"
                )


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (docs/method.md); generator terms are summed over both directions of the cycle."""

    adversarial: float = 1.0
    """Least-squares adversarial term, (D(fake) - 1)^2."""
    cycle: float = 10.0
    """L1(F(G(x)), x) + L1(G(F(y)), y)."""
    identity: float = 5.0
    """Perceptual identity: L1 of VGG features of G(y) vs y and F(x) vs x (pixel L1 without VGG weights)."""
    gray: float = 10.0
    """L1(gray(G(x)), x) + L1(F(y), gray(y)), gray = BT.601 luma."""
    edge: float = 10.0
    """L1(Lap(gray(G(x))), Lap(x)) + L1(Lap(F(y)), Lap(gray(y)))."""
    disc_x: float = 0.5
    """Weight of Dx's least-squares loss (the public code used 10)."""
    disc_y: float = 0.5
    """Weight of Dy's least-squares loss."""
    pool_size: int = 50
    """Fakes kept in each discriminator's history pool (0 disables the pool)."""
    vgg_weights: str = ""
    """Local file of VGG weights for the perceptual loss (see README); empty: pixel L1 fallback, with a warning."""
    vgg_layer: str = "relu3_3"
    """VGG activation compared by the perceptual loss."""

    def __post_init__(self) -> None:
        for name in ("adversarial", "cycle", "identity", "gray", "edge", "disc_x", "disc_y"):
            _positive("loss", name, getattr(self, name), strict=False)
        _positive("loss", "pool_size", self.pool_size, strict=False)
        _choice("loss", "vgg_layer", self.vgg_layer, ("relu1_2", "relu2_2", "relu3_3", "relu4_3"))


@dataclass(frozen=True)
class OptimConfig:
    """Adam for G+F and for Dx+Dy, and the learning-rate schedule."""

    lr: float = 1e-4
    """Learning rate at `base_batch` images per step (both optimizers)."""
    betas: tuple[float, float] = (0.5, 0.999)
    """Adam betas."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    schedule: str = "step"
    """step: x gamma at each milestone (the public code); linear: constant, then linear decay to 0 (CycleGAN)."""
    milestones: tuple[float, ...] = (16 / 33, 24 / 33)
    """Step schedule: fractions of train.steps at which lr is multiplied by gamma (public code: epochs 16, 24 of 33)."""
    gamma: float = 0.1
    """Step schedule: the factor at each milestone."""
    linear_start: float = 0.5
    """Linear schedule: fraction of train.steps after which lr decays linearly to 0."""
    scale_lr: bool = True
    """Scale lr linearly with the global batch (per-rank batch x ranks x accumulation) over base_batch."""
    base_batch: int = 1
    """Global batch at which `lr` is given (the paper trained at batch 1)."""

    def __post_init__(self) -> None:
        _choice("optim", "schedule", self.schedule, ("step", "linear", "constant"))
        _positive("optim", "lr", self.lr)
        _positive("optim", "base_batch", self.base_batch)
        if not all(0.0 < m < 1.0 for m in self.milestones):
            raise ConfigError(f"optim.milestones={self.milestones} must be fractions of train.steps in (0, 1)")
        if not 0.0 <= self.linear_start <= 1.0:
            raise ConfigError(f"optim.linear_start={self.linear_start} must be in [0, 1]")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation, applied per sample in the loader workers."""

    hflip: float = 0.5
    """Probability of a left-right flip."""
    vflip: float = 0.0
    """Probability of an up-down flip."""
    rotate_deg: float = 5.0
    """Maximum absolute rotation in degrees of the small random affine (0 disables the affine)."""
    scale: float = 0.05
    """Maximum relative zoom of the random affine."""
    translate: float = 0.02
    """Maximum shift of the random affine, as a fraction of the image side."""
    intensity: float = 0.05
    """MR only: maximum gamma/contrast jitter (0 disables)."""

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"data.augment.{name}={getattr(self, name)} must be a probability in [0, 1]")
        for name in ("rotate_deg", "scale", "translate", "intensity"):
            _positive("data.augment", name, getattr(self, name), strict=False)
        if self.scale >= 1.0:
            raise ConfigError(f"data.augment.scale={self.scale} must be < 1 (a relative zoom)")


@dataclass(frozen=True)
class DataConfig:
    """Where the shards are and how they stream."""

    mr_shards: str = "demo/shards/mr"
    """Directory of the MR domain's shards (with manifest.json), as written by `python -m shards build`."""
    color_shards: str = "demo/shards/color"
    """Directory of the color domain's shards."""
    split: str = "train"
    """Which split of the manifest to stream."""
    batch_size: int = 1
    """Images per rank per step (each domain)."""
    num_workers: int = 2
    """Loader worker processes per rank (0 reads in the training process)."""
    shuffle_buffer: int = 256
    """Samples held in the shuffle buffer of each stream."""
    prefetch_factor: int = 4
    """Batches prefetched by each worker."""
    resume: str = "reseed"
    """After a restart: reseed (fold the restart count into the data seeds: reproducible, no replayed sequence) or
    exact (fast-forward each worker to the batch where it stopped: the uninterrupted stream; reads the consumed
    samples once at start-up; needs the same num_workers and batch size)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _choice("data", "resume", self.resume, _registry("cmgan.data.pipeline", "RESUME_MODES"))
        _positive("data", "batch_size", self.batch_size)
        _positive("data", "num_workers", self.num_workers, strict=False)
        _choice("data", "split", self.split, ("train", "val", "test"))


@dataclass(frozen=True)
class TrainConfig:
    """One training run: length, precision, distribution, checkpoints, logging."""

    run_dir: str = "runs/default"
    """Run directory (config, checkpoints, logs, samples, export); a run resumes from it when it has a checkpoint."""
    steps: int = 10_000
    """Optimizer steps of the run."""
    seed: int = 0
    """Seed of every random stream (models, data, pools); ranks derive their own from it."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    precision: str = "auto"
    """auto (bf16 where the hardware computes it natively, fp16 on older GPUs, else fp32; `cmgan.precision`),
    fp32, bf16 (autocast; no scaler) or fp16 (autocast + a loss scaler per optimizer; CUDA only)."""
    channels_last: bool = True
    """Use channels_last memory format (the fast path for bf16 convolutions on AMX CPUs and tensor cores)."""
    compile: bool = False
    """torch.compile G, F, Dx and Dy (off: at 64x64 on a 2-core CPU it was 1.07x after 290 s of compiling;
    docs/performance.md). Each network compiles once per call signature in the first step, then never again."""
    compile_backend: str = "inductor"
    """torch.compile backend when compile = true: inductor (generated kernels: the speed-up, minutes of compiling)
    or aot_eager (dynamo + AOTAutograd over the eager kernels: shows in seconds that a model traces and trains
    compiled, under DDP too, with no speed-up)."""
    backend: str = "ddp"
    """ddp (Accelerate) or deepspeed (ZeRO, two engines: generators and discriminators)."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage (0, 1 or 2) when backend = deepspeed."""
    deterministic: bool = False
    """Deterministic algorithms: with data.resume=exact, a stopped and resumed run ends bitwise equal to an
    uninterrupted one on the same machine and thread count (tested on the CPU); may be slower on GPUs."""
    ckpt_every_steps: int = 500
    """Checkpoint every N steps (0: off)."""
    ckpt_every_minutes: float = 30.0
    """Checkpoint when this many minutes passed since the last one (0: off)."""
    keep_last: int = 3
    """Complete checkpoints kept in the run directory."""
    log_every: int = 10
    """Steps between metric lines (JSONL and TensorBoard)."""
    sample_every: int = 500
    """Steps between sample grids (PNG)."""
    ema_decay: float = 0.0
    """EMA of G's weights, exported beside G (0: off; 0.999 is usual)."""
    nonfinite: str = "stop"
    """On a non-finite loss: stop (keeping the last good checkpoint) or skip the step."""
    max_nonfinite_skips: int = 10
    """With nonfinite = skip: stop after this many consecutive skipped steps."""
    seg_checkpoint: str = ""
    """Frozen segmentation U-Net exported by `launch/train.py --stage seg` (required when model.fusion != none)."""
    expect_world_size: int = 0
    """Fail at start-up unless the job runs exactly this many processes (0: accept any)."""

    def __post_init__(self) -> None:
        _choice("train", "precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _positive("train", "expect_world_size", self.expect_world_size, strict=False)
        if self.backend == "deepspeed" and self.precision == "fp16":
            raise ConfigError("train.precision=fp16 is not supported with train.backend=deepspeed; use bf16")
        if self.backend == "deepspeed" and self.nonfinite == "skip":
            raise ConfigError("train.nonfinite=skip needs train.backend=ddp (DeepSpeed cannot skip an update)")
        _choice("train", "backend", self.backend, ("ddp", "deepspeed"))
        _choice("train", "compile_backend", self.compile_backend, ("inductor", "aot_eager"))
        _choice("train", "zero_stage", self.zero_stage, (0, 1, 2))
        _choice("train", "nonfinite", self.nonfinite, ("stop", "skip"))
        _positive("train", "steps", self.steps)
        _positive("train", "grad_accum", self.grad_accum)
        _positive("train", "keep_last", self.keep_last)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay={self.ema_decay} must be in [0, 1)")


@dataclass(frozen=True)
class SegConfig:
    """Offline pretraining of the segmentation U-Net S on labelled MR shards (Dice + cross-entropy)."""

    run_dir: str = "runs/seg"
    """Run directory of the segmentation pretraining; its export is `<run_dir>/export/seg.pt`."""
    steps: int = 2_000
    """Optimizer steps."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 8
    """Slices per rank per step."""
    dice_weight: float = 1.0
    """Weight of the soft Dice loss (cross-entropy has weight 1)."""
    val_every: int = 200
    """Steps between validation passes (per-class Dice on the val split)."""

    def __post_init__(self) -> None:
        _positive("seg", "steps", self.steps)
        _positive("seg", "lr", self.lr)
        _positive("seg", "batch_size", self.batch_size)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: SSIM/PSNR/MI on luminance, FID against the color domain, color truth on demo data."""

    inception_weights: str = ""
    """Local file of pytorch-fid's FID Inception weights (`python -m cmgan.eval.inception convert` makes one
    offline); empty: pytorch-fid's own file in the torch hub cache if present, else FID is reported unavailable."""
    ssim_window: int = 11
    """SSIM window side in pixels (11 with sigma 1.5: the common standard; the authors used 101)."""
    ssim_kernel: str = "gaussian"
    """SSIM window weights: gaussian (Wang et al.; with ssim_sigma) or uniform (scikit-image's default kind)."""
    ssim_sigma: float = 1.5
    """Standard deviation in pixels of the Gaussian SSIM window."""
    ssim_sample_covariance: bool = False
    """SSIM local variances with N/(N-1) (scikit-image's default for uniform windows); false: population."""
    mi_bins: int = 256
    """Bins per axis of the joint histogram of the mutual information (luminance in [0, 1])."""
    fid_dims: int = 2048
    """Inception feature size of FID (pytorch-fid's --dims: 64, 192, 768, 2048 = pool3, the standard)."""
    fid_quantize: bool = True
    """Round generated images to 8 bits before the Inception, as pytorch-fid sees them when read from PNGs."""
    fid_precision: str = "fp32"
    """Inception forward: fp32 (exact, pytorch-fid's) or bf16 (autocast + channels_last; bench/eval.py
    reports the FID difference)."""
    real_splits: tuple[str, ...] = ("train", "val", "test")
    """Splits of the real color shards whose images form FID's reference set (those present are used)."""
    stats_cache: str = ""
    """Folder of cached real-domain FID statistics (npz keyed by data and weights); empty: ~/.cache/cmgan/fid."""
    color_min_pixels: int = 16
    """Demo color metrics: a tissue label counts on a slice only with at least this many pixels."""
    batch_size: int = 16
    """Images per forward pass of the evaluator."""
    max_images: int = 0
    """Evaluate at most this many slices (0: all of the split)."""
    split: str = "test"
    """Which split of the MR shards is evaluated."""
    fg_dilate: int = 2
    """Foreground SSIM/PSNR (`ssim_fg`, `psnr_fg`): pixels by which the slice's anatomy mask is dilated, so a dark
    halo or a bleed just outside the anatomy counts against the model (0: the mask itself)."""
    preset: str = "default"
    """Which SSIM/PSNR set is the headline (both are always computed and stored under their own keys):
    default: `ssim`/`psnr` as set above (float luminance, Gaussian 11 window); paper: `ssim_paper`/`psnr_paper`,
    the authors' definition (8-bit PNGs, uniform 101-pixel window, sample covariance) for a comparison with the
    paper's numbers. The preset orders tables and reports; it never changes what a key means."""

    def __post_init__(self) -> None:
        _choice("eval", "preset", self.preset, ("default", "paper"))
        _positive("eval", "fg_dilate", self.fg_dilate, strict=False)
        if self.ssim_window < 3 or self.ssim_window % 2 == 0:
            raise ConfigError(f"eval.ssim_window={self.ssim_window} must be an odd integer >= 3")
        _choice("eval", "split", self.split, ("train", "val", "test"))
        _choice("eval", "ssim_kernel", self.ssim_kernel, _registry("cmgan.eval.structure", "SSIM_KERNELS"))
        _choice("eval", "fid_dims", self.fid_dims, (64, 192, 768, 2048))
        _choice("eval", "fid_precision", self.fid_precision, ("fp32", "bf16"))
        for split in self.real_splits:
            _choice("eval", "real_splits", split, ("train", "val", "test"))
        _positive("eval", "ssim_sigma", self.ssim_sigma)
        _positive("eval", "batch_size", self.batch_size)
        _positive("eval", "max_images", self.max_images, strict=False)
        _positive("eval", "color_min_pixels", self.color_min_pixels)
        if self.mi_bins < 2:
            raise ConfigError(f"eval.mi_bins={self.mi_bins} must be >= 2")


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; serialized to `<run_dir>/config.toml`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------- building


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """Check/convert one TOML value against a field's annotated type; errors name the dotted field."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(path, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{path}={value!r} does not fit type {tp}")
    if origin is Literal:
        _choice(*path.rsplit(".", 1), value, get_args(tp))
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r} must be a list")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{path}={value!r} must have {len(args)} elements")
        return tuple(_coerce(f"{path}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}={value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}={value!r} must be a string")
        return value
    raise ConfigError(f"{path}: unsupported field type {tp}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from nested dicts; unknown keys are errors that list the valid ones."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in {where}; valid keys: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        path = f"{prefix}{name}"
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{path} must be a table of {sorted(f.name for f in dataclasses.fields(tp))}")
            kwargs[name] = from_dict(tp, value, prefix=f"{path}.")
        else:
            kwargs[name] = _coerce(path, value, tp)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict of a config (tuples become lists), for TOML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); value parsed as a TOML literal, else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. loss.cycle=5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; write section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge nested dicts (overrides win); returns a new dict."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted `key=value` strings to a nested dict."""
    data = merge({}, data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is a value, not a section")
        node[keys[-1]] = value
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config TOML file as a dict; a file may name `include = "other.toml"` (relative to itself) as its base,
    whose values it overrides."""
    path = Path(path)
    data = files.read_toml(path, "config file", ConfigError)
    include = data.pop("include", None)
    if include:
        data = merge(read_config_file(path.parent / include), data)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- TOML file (optional) <- dotted overrides -> validated `RunConfig`."""
    data = read_config_file(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data)


def replace(cfg: Any, overrides: list[str]) -> Any:
    """A copy of config `cfg` with dotted overrides applied and validated again."""
    return from_dict(type(cfg), apply_overrides(to_dict(cfg), overrides))


def dumps_toml(cfg: Any) -> str:
    return tomli_w.dumps(to_dict(cfg))


def dumps_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as TOML, atomically."""
    files.write_text(path, dumps_toml(cfg))
