"""Colorization quality of a generator on a labelled test split: the figures of `bench/quality.py`.

Everything the evaluator reports per slice (SSIM, PSNR, MI of the output's luminance against the input, whole
slice and over the foreground; CIEDE2000 to the true colors) plus what tells a good colorist from a gray or
flickering one, on slices read in volume order:

    tissue_de2000   mean CIEDE2000 to the true colors per tissue label (demo data: `truth.npy`)
    separation_ab   mean pairwise distance between the tissues' mean a*b* colors: a gray output scores 0; the
                    truth's own value is `separation_ab_truth` (where the data have true colors) and the ratio
                    `separation_ratio`
    flicker_ab      mean |ab(k+1) - ab(k)| of adjacent slices of a subject inside tissue
                    (`cmgan.colorize.consistency`), beside the truth's own `flicker_ab_truth`: anatomy changes
                    between slices too, so the truth's value is the floor, not 0

    q = QualityAccumulator(label_names); q.update(batch, rgb) per batch; q.result()

All colors in CIELAB (sRGB, D65). Labels are `schema.LABEL_NAMES` (0 = background, not a tissue).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch

from cmgan.colorize.consistency import slice_consistency
from cmgan.eval import color, fid, structure
from cmgan.eval.slices import SliceBatch


class QualityAccumulator:
    """Collects per-slice structure metrics and per-tissue color sums over batches of one split.

    update(batch, rgb): batch a `SliceBatch` (mask, label and truth used where present), rgb (B, 3, H, W) in
    [-1, 1], the colorization of batch.mr. Slices are regrouped per subject in key order for the flicker.
    """

    def __init__(self, label_names: tuple[str, ...], fg_dilate: int = 2, ssim_window: int = 11) -> None:
        self.label_names, self.fg_dilate, self.ssim_window = label_names, fg_dilate, ssim_window
        k = len(label_names)
        self.records: dict[str, list[float]] = {}
        self.ab_sum = {w: np.zeros((k, 2)) for w in ("out", "truth")}
        self.count = np.zeros(k)
        self.de_sum, self.de_count = np.zeros(k), np.zeros(k)
        self.slices: dict[str, list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]]] = {}

    def _add(self, name: str, values: torch.Tensor | list[float]) -> None:
        self.records.setdefault(name, []).extend(float(v) for v in values)

    def update(self, batch: SliceBatch, rgb: torch.Tensor) -> None:
        mask = batch.mask if batch.mask is not None else (batch.mr[:, 0] > -1 + 1e-6)
        fg = structure.foreground(mask, self.fg_dilate)
        s = structure.structure_metrics(batch.mr, rgb, window=self.ssim_window, mask=fg)
        for name, values in s.items():
            self._add(name, values)
        lab = color.output_lab(rgb)
        t_lab = color.truth_lab(batch.truth) if batch.truth is not None else None
        if t_lab is not None:
            self._add("delta_e2000", color.slice_delta_e(lab, t_lab, mask))
        if batch.label is not None:
            label = batch.label.clamp(0, len(self.label_names) - 1)
            flat = label.flatten().numpy()
            self.count += np.bincount(flat, minlength=len(self.count))
            for which, image in (("out", lab), ("truth", t_lab)):
                if image is None:
                    continue
                ab = image[..., 1:].reshape(-1, 2).numpy()
                for c in range(2):
                    self.ab_sum[which][:, c] += np.bincount(flat, weights=ab[:, c], minlength=len(self.count))
            if t_lab is not None:
                de = color.ciede2000(lab, t_lab).flatten().numpy()
                self.de_sum += np.bincount(flat, weights=de, minlength=len(self.count))
                self.de_count += np.bincount(flat, minlength=len(self.count))
        out8 = fid.to_uint8(rgb).permute(0, 2, 3, 1).numpy()  # (B, H, W, 3), as a PNG of the output holds
        truth8 = batch.truth.numpy() if batch.truth is not None else None
        for i, (key, subject) in enumerate(zip(batch.keys, batch.subjects)):
            self.slices.setdefault(subject, []).append(
                (key, out8[i], None if truth8 is None else truth8[i], mask[i].numpy()))

    def _separation(self, which: str) -> float | None:
        tissues = [k for k in range(1, len(self.count)) if self.count[k] > 0]
        if len(tissues) < 2 or not self.ab_sum[which].any():
            return None
        means = {k: self.ab_sum[which][k] / self.count[k] for k in tissues}
        return float(np.mean([np.linalg.norm(means[a] - means[b]) for a, b in itertools.combinations(tissues, 2)]))

    def _flicker(self, which: int) -> float | None:
        total, voxels = 0.0, 0
        for rows in self.slices.values():
            rows = sorted(rows, key=lambda r: r[0])
            if len(rows) < 2 or rows[0][which] is None:
                continue
            vol = np.stack([r[which] for r in rows])  # (S, H, W, 3), slices along axis 0
            c = slice_consistency(vol, np.stack([r[3] for r in rows]), axis=0)
            if c["voxels"]:
                total += c["delta_ab"] * c["voxels"]
                voxels += c["voxels"]
        return total / voxels if voxels else None

    def result(self) -> dict[str, Any]:
        """{metric: mean over slices} for the structure metrics and delta_e2000, plus the tissue figures."""
        out: dict[str, Any] = {}
        for name, values in self.records.items():
            a = np.asarray(values, dtype=np.float64)
            a = a[np.isfinite(a)]
            out[name] = float(a.mean()) if a.size else None
        if self.de_count.any():
            out["tissue_de2000"] = {self.label_names[k]: float(self.de_sum[k] / self.de_count[k])
                                    for k in range(1, len(self.count)) if self.de_count[k] > 0}
        out["separation_ab"] = self._separation("out")
        out["separation_ab_truth"] = self._separation("truth")
        if out["separation_ab"] is not None and out["separation_ab_truth"]:
            out["separation_ratio"] = out["separation_ab"] / out["separation_ab_truth"]
        out["flicker_ab"] = self._flicker(1)
        out["flicker_ab_truth"] = self._flicker(2)
        out["slices"] = sum(len(v) for v in self.slices.values())
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
