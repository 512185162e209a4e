"""Structure kept by the colorization: SSIM, PSNR and mutual information between luminances, per slice.

The paper compares the BT.601 luminance Y = 0.299 R + 0.587 G + 0.114 B of the colorized output with the gray
input. Both are mapped from [-1, 1] to [0, 1] ((v + 1) / 2) and compared with data range 1.0, i.e. as 8-bit
images scaled by 1/255 would be (SSIM is not invariant to that shift: [-1, 1] with range 2 gives other values).
All arithmetic is float64.

- SSIM (Wang et al. 2004): K1 = 0.01, K2 = 0.03; local statistics under a Gaussian window (11 taps, sigma 1.5,
  population covariance: scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)`) or a uniform window (scikit-image's default kind, e.g. the authors' 101 pixels,
  usually with sample covariance); the mean over the positions where the window fits inside the image (what
  scikit-image's border crop leaves).
- PSNR per image: 10 log10(range^2 / MSE), capped at `PSNR_MAX_DB` for identical images (not a pooled MSE).
- MI: from the joint histogram of the two [0, 1] images with `bins` equal bins per axis, in bits.
- Foreground variants (`mask=`): the black background of a masked MR slice is reproduced almost perfectly by any
  model and pads whole-slice SSIM and PSNR, so they are also reported over the anatomy alone: SSIM is the mean of
  the SSIM map over the valid positions whose window centre lies in the mask, PSNR uses the MSE over the mask's
  pixels. `foreground` builds that mask: the slice's anatomy mask dilated by a few pixels, so a dark halo or a
  bleed just outside the anatomy counts against the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmgan.models.edges import BT601  # the gray of the gray loss; here applied in float64

K1, K2 = 0.01, 0.03
"""SSIM's stabilising constants: C1 = (K1 * range)^2, C2 = (K2 * range)^2."""

PSNR_MAX_DB = 100.0
"""PSNR of identical images (MSE = 0) is reported as this instead of infinity, so means stay finite."""

SSIM_KERNELS = ("gaussian", "uniform")


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) BT.601 luma (same range as the input); 1 channel passes through."""
    if rgb.shape[1] == 1:
        return rgb
    if rgb.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got shape {tuple(rgb.shape)}")
    r, g, b = rgb.unbind(1)
    return (BT601[0] * r + BT601[1] * g + BT601[2] * b).unsqueeze(1)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] as float64 ((v + 1) / 2); no clipping (the generator's tanh stays inside)."""
    return (images.to(torch.float64) + 1.0) / 2.0


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected (B, 1, H, W) images, got {tuple(x.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")


def window_1d(kernel: str, size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D window (size,) float64: Gaussian exp(-x^2 / (2 sigma^2)) or uniform 1 / size."""
    if kernel not in SSIM_KERNELS:
        raise ValueError(f"SSIM kernel {kernel!r} is not valid; choose one of {list(SSIM_KERNELS)}")
    if size < 3 or size % 2 == 0:
        raise ValueError(f"SSIM window {size} must be an odd integer >= 3")
    if kernel == "uniform":
        return torch.full((size,), 1.0 / size, dtype=torch.float64)
    x = torch.arange(size, dtype=torch.float64) - size // 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def foreground(mask: torch.Tensor, dilate: int = 2) -> torch.Tensor:
    """The region of the foreground metrics: mask (B, H, W) or (B, 1, H, W) bool/{0,1} -> (B, 1, H, W) bool,
    dilated by `dilate` pixels (a square structuring element of side 2 * dilate + 1)."""
    m = mask.reshape(mask.shape[0], 1, *mask.shape[-2:]).to(torch.float32)
    if dilate > 0:
        m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
    return m > 0


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-image mean of (B, 1, h, w) values over mask (B, 1, h, w) bool (None: all); NaN where the mask is empty."""
    flat = values.flatten(1)
    if mask is None:
        return flat.mean(1)
    m = mask.flatten(1).to(values.dtype)
    n = m.sum(1)
    return torch.where(n > 0, (flat * m).sum(1) / n.clamp_min(1), torch.nan)


def _filter(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of (N, 1, H, W) with the 1-D window w."""
    k = w.numel()
    x = F.conv2d(x, w.view(1, 1, 1, k))
    return F.conv2d(x, w.view(1, 1, k, 1))


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window: int = 11,
    kernel: str = "gaussian",
    sigma: float = 1.5,
    sample_covariance: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean SSIM per image: x, y (B, 1, H, W) -> (B,) float64.

    sample_covariance: scale variances by N / (N - 1) with N = window^2 (scikit-image's default for its
    uniform window); False: population statistics (Wang et al., the Gaussian standard).
    mask: (B, 1, H, W) bool: average only over the valid positions whose window centre is in the mask (NaN for
    an image whose mask has no valid position); None: every valid position.
    """
    _check_pair(x, y)
    if min(x.shape[-2:]) < window:
        raise ValueError(f"images of {tuple(x.shape[-2:])} pixels are smaller than the SSIM window {window}")
    w = window_1d(kernel, window, sigma)
    x, y = x.to(torch.float64), y.to(torch.float64)
    b = x.shape[0]
    stats = _filter(torch.cat([x, y, x * x, y * y, x * y]), w)
    ux, uy, uxx, uyy, uxy = stats.split(b)
    n = window * window
    cov_norm = n / (n - 1.0) if sample_covariance else 1.0
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    if mask is not None:
        _check_mask(mask, x)
        pad = window // 2
        mask = mask[..., pad : mask.shape[-2] - pad, pad : mask.shape[-1] - pad]  # the window centres of `s`
    return _masked_mean(s, mask)


def _check_mask(mask: torch.Tensor, x: torch.Tensor) -> None:
    if mask.shape != x.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match the images {tuple(x.shape)}")


def psnr(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """PSNR per image in dB: x, y (B, 1, H, W) -> (B,) float64, at most PSNR_MAX_DB.

    mask: (B, 1, H, W) bool: the MSE over the mask's pixels only (NaN for an empty mask); None: every pixel.
    """
    _check_pair(x, y)
    if mask is not None:
        _check_mask(mask, x)
    mse = _masked_mean((x.to(torch.float64) - y.to(torch.float64)).pow(2), mask)
    floor = data_range**2 / 10 ** (PSNR_MAX_DB / 10)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(floor))


def mutual_information(x: torch.Tensor, y: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """MI in bits per image from a bins x bins joint histogram: x, y (B, 1, H, W) in [0, 1] -> (B,) float64.

    Bin i holds values in [i / bins, (i + 1) / bins); 1.0 falls into the last bin; values outside are clipped.
    """
    _check_pair(x, y)
    if bins < 2:
        raise ValueError(f"mutual information needs >= 2 bins, got {bins}")
    b = x.shape[0]
    ix = (x.to(torch.float64).flatten(1) * bins).floor().clamp(0, bins - 1).long()
    iy = (y.to(torch.float64).flatten(1) * bins).floor().clamp(0, bins - 1).long()
    flat = ix * bins + iy + torch.arange(b).unsqueeze(1) * bins * bins
    joint = torch.bincount(flat.flatten(), minlength=b * bins * bins).view(b, bins, bins).to(torch.float64)
    p = joint / joint.sum((1, 2), keepdim=True)
    px, py = p.sum(2, keepdim=True), p.sum(1, keepdim=True)
    ratio = p / (px * py)
    terms = torch.where(p > 0, p * torch.log2(torch.where(p > 0, ratio, 1.0)), 0.0)
    return terms.sum((1, 2))


def structure_metrics(
    gray: torch.Tensor,
    rgb: torch.Tensor,
    window: int = 11,
    kernel: str = "gaussian",
    sigma: float = 1.5,
    sample_covariance: bool = False,
    bins: int = 256,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """SSIM, PSNR, MI of the output's luminance vs the input, per slice.

    gray: (B, 1, H, W) in [-1, 1] (the MR input); rgb: (B, 3, H, W) in [-1, 1] (the colorized output);
    mask: (B, 1, H, W) bool, the foreground (`foreground`), or None.
    returns {"ssim", "psnr", "mi"}: each (B,) float64; with a mask also {"ssim_fg", "psnr_fg"} over it.
    """
    if gray.shape[0] != rgb.shape[0] or gray.shape[-2:] != rgb.shape[-2:]:
        raise ValueError(f"output {tuple(rgb.shape)} does not match input {tuple(gray.shape)} in batch or size")
    x, y = to_unit(gray), to_unit(luminance(rgb.to(torch.float64)))
    out = {
        "ssim": ssim(y, x, 1.0, window, kernel, sigma, sample_covariance),
        "psnr": psnr(y, x, 1.0),
        "mi": mutual_information(x, y, bins),
    }
    if mask is not None:
        out["ssim_fg"] = ssim(y, x, 1.0, window, kernel, sigma, sample_covariance, mask=mask)
        out["psnr_fg"] = psnr(y, x, 1.0, mask=mask)
    return out

