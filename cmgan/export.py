"""The generator export: the small, self-contained file the evaluator and the colorizer load.

One file holds what colorizing needs and nothing of training: G's weights (and the EMA copy if trained), the
frozen segmentation U-Net S that G's fusion reads, the model config that rebuilds both, and the MR intensity
normalization of the training shards (so a new volume is normalized exactly as the training slices were).

    save_export("runs/x/export/generator.pt", model_cfg=cfg.model, generator_state=G.state_dict(), ...)
    export = load_export("runs/x")            # a run directory resolves to <run>/export/generator.pt
    rgb = export.colorize(mr)                 # (B,1,H,W) float32 in [-1,1] -> (B,3,H,W) float32 in [-1,1]

The file is a `torch.save` dict of tensors and plain values only, so it loads with `weights_only=True`.
Its `model_id` is the SHA-256 of the file's bytes: outputs record it, and a changed model redoes them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cmgan import files, precision
from cmgan.config import ModelConfig, from_dict, to_dict
from cmgan.models import build_generator, build_segmenter

EXPORT_FORMAT = "cmgan-export-v1"
EXPORT_NAME = "generator.pt"


class ExportError(ValueError):
    """An export file is missing, unreadable or of another format; the message names the file."""


def resolve_export_path(path: str | Path) -> Path:
    """A run directory -> `<run>/export/generator.pt`; an export directory -> its `generator.pt`; a file -> itself."""
    path = Path(path)
    for candidate in (path, path / "export" / EXPORT_NAME, path / EXPORT_NAME):
        if candidate.is_file():
            return candidate
    raise ExportError(
        f"{path}: no generator export found (looked for {path}, {path / 'export' / EXPORT_NAME}); "
        "train a run first or name the export file"
    )


def save_export(
    path: str | Path,
    *,
    model_cfg: ModelConfig,
    generator_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None = None,
    segmenter_state: dict[str, torch.Tensor] | None = None,
    normalization: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Write the export atomically (temp file, fsync, rename) and return its path.

    States are copied to the CPU in fp32 so the file loads anywhere. `segmenter_state` is required when
    `model_cfg.fusion != "none"`.
    """
    if model_cfg.fusion != "none" and segmenter_state is None:
        raise ExportError(f"{path}: model.fusion={model_cfg.fusion!r} needs the segmenter's weights in the export")

    def cpu(state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        if state is None:
            return None
        return {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu())
                for k, v in state.items()}

    payload = {
        "format": EXPORT_FORMAT,
        "model": to_dict(model_cfg),
        "generator": cpu(generator_state),
        "generator_ema": cpu(ema_state),
        "segmenter": cpu(segmenter_state),
        "normalization": dict(normalization),
        "meta": dict(meta),
    }
    path = Path(path)
    with files.atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return path


@dataclass
class Export:
    """A loaded generator export, ready to colorize on `device`."""

    path: Path
    model_id: str
    model_cfg: ModelConfig
    normalization: dict[str, Any]
    meta: dict[str, Any]
    generator: torch.nn.Module
    segmenter: torch.nn.Module | None
    device: torch.device
    autocast: torch.dtype | None = None
    """Compute dtype under autocast (bf16 where it pays: AMX CPUs, recent GPUs), or None for fp32."""
    uses_ema: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @torch.inference_mode()
    def colorize(self, mr: torch.Tensor) -> torch.Tensor:
        """mr: (B, 1, H, W) float in [-1, 1], H and W divisible by 2**depth -> (B, 3, H, W) float32 in [-1, 1]."""
        if mr.ndim != 4 or mr.shape[1] != 1:
            raise ValueError(f"colorize expects (B, 1, H, W) gray images, got shape {tuple(mr.shape)}")
        x = mr.to(self.device, torch.float32, memory_format=torch.channels_last)
        ctx = (torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None
               else contextlib.nullcontext())
        with ctx:
            seg = self.segmenter.features(x) if self.segmenter is not None else None
            rgb = self.generator(x, seg)
        return rgb.float().clamp_(-1.0, 1.0).contiguous()


def load_export(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    use_ema: bool = True,
    autocast: torch.dtype | None | str = "auto",
) -> Export:
    """Load an export (file, export dir or run dir) onto `device`, in eval mode.

    use_ema: take the EMA weights of G when the export has them. autocast: "auto" picks bf16 on GPUs with
    native bf16 (fp16 on older GPUs) and on CPUs with AMX or AVX512-BF16, else fp32; pass None to force fp32
    (exact, slower).
    """
    file = resolve_export_path(path)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/zip error means the same thing to the user
        raise ExportError(f"{file}: cannot be read as a cmgan export ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{file}: not a {EXPORT_FORMAT} file (format={payload.get('format')!r})")
    model_cfg = from_dict(ModelConfig, payload["model"], prefix="model.")
    device = torch.device(device)

    generator = build_generator(model_cfg)
    ema = payload.get("generator_ema")
    uses_ema = bool(use_ema and ema is not None)
    segmenter = build_segmenter(model_cfg) if model_cfg.fusion != "none" else None
    try:
        generator.load_state_dict(ema if uses_ema else payload["generator"])
        if segmenter is not None:
            segmenter.load_state_dict(payload["segmenter"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise ExportError(f"{file}: its weights do not fit the networks of its model config "
                          f"(written by another cmgan version?): {str(e).splitlines()[0]}") from None
    for net in (generator, segmenter):
        if net is not None:
            net.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)

    if autocast == "auto":
        autocast = _preferred_autocast(device)
    return Export(
        path=file,
        model_id=files.sha256_file(file),
        model_cfg=model_cfg,
        normalization=payload["normalization"],
        meta=payload["meta"],
        generator=generator,
        segmenter=segmenter,
        device=device,
        autocast=autocast,
        uses_ema=uses_ema,
    )


def _preferred_autocast(device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware runs it natively (GPUs of compute capability >= 8.0, CPUs with AMX or
    AVX512-BF16); fp16 on older GPUs (inference needs no loss scaler); else fp32 (`cmgan.precision`)."""
    return precision.DTYPES[precision.resolve("auto", device.type)]
