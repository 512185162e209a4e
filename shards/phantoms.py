"""Deterministic brain phantoms: a T1-like MRI, its 5-class labels and a cryosection-like color rendering.

A phantom is a head of random ellipsoidal shape (seeded): scalp, skull, outer CSF, a folded cortex, white matter,
two deep gray-matter nuclei and two lateral ventricles. `mri()` gives a T1 contrast with partial-volume blur, a
smooth multiplicative bias field and Rician noise; `color()` renders the same tissues in the colors of frozen
anatomical sections (pale cream white matter, pink-brown gray matter, dark blue-gray CSF) with stain-like texture
and grain. The two renderings share the geometry, so `color()` is the true colorization of `mri()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Tissue codes of `Phantom.tissue` (finer than the labels: the renderers need scalp, skull and ventricles).
BACKGROUND, SCALP, SKULL, CSF, CORTEX, DEEP_GM, WM, VENTRICLE = range(8)
TISSUE_TO_LABEL = np.array([0, 0, 0, 4, 1, 2, 3, 4], np.uint8)
"""Tissue code -> schema.LABEL_NAMES index (background, cortex, subcortical_gm, white_matter, csf)."""

T1 = np.array([0, 700, 120, 260, 560, 610, 860, 230], np.float32)
"""T1-weighted signal per tissue (arbitrary scanner units)."""

CRYO_RGB = np.array(
    [
        [0, 0, 0],  # background
        [222, 184, 140],  # scalp: fat and skin
        [226, 214, 180],  # skull: bone
        [72, 82, 104],  # CSF: frozen, dark blue-gray
        [168, 112, 96],  # cortex: pink-brown gray matter
        [150, 98, 84],  # deep gray matter
        [228, 208, 182],  # white matter: pale cream
        [58, 64, 86],  # ventricles
    ],
    np.float32,
)
"""Cryosection color per tissue (RGB 0-255), after photographs of frozen brain sections."""


@dataclass(frozen=True)
class Phantom:
    """tissue: (X, Y, Z) uint8 tissue codes; affine: (4, 4) voxel -> RAS mm (canonical, isotropic)."""

    tissue: np.ndarray
    affine: np.ndarray
    seed: int

    @property
    def labels(self) -> np.ndarray:
        """(X, Y, Z) uint8 in [0, 5): schema.LABEL_NAMES (skull and scalp are background)."""
        return TISSUE_TO_LABEL[self.tissue]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def make_phantom(seed: int, size: int = 64, fov_mm: float = 192.0) -> Phantom:
    """A random head on a (0.875 s, s, 0.75 s) grid of isotropic voxels (fov_mm / s) in RAS+ orientation."""
    rng = np.random.default_rng(seed)
    shape = (max(8, round(0.875 * size)), size, max(8, round(0.75 * size)))
    vox = fov_mm / size
    grid = [np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in shape]
    x, y, z = np.meshgrid(*grid, indexing="ij")
    radii = np.array([0.42 * shape[0], 0.45 * shape[1], 0.46 * shape[2]], np.float32) * rng.uniform(0.88, 1.05, 3)
    angle = rng.uniform(-0.15, 0.15)
    c, s = np.cos(angle), np.sin(angle)
    xr, yr = c * x - s * y, s * x + c * y
    zr = z - rng.uniform(-0.04, 0.04) * shape[2]
    u = np.stack([xr / radii[0], yr / radii[1], zr / radii[2]])
    r = np.sqrt((u**2).sum(0))

    low = _smooth_noise(rng, shape, sigma=size / 8)
    folds = _smooth_noise(rng, shape, sigma=max(1.0, size / 32))
    # A cortical ribbon of roughly constant thickness whose both surfaces follow the folding field: white matter
    # reaches into the gyri (folds > 0) and CSF fills the sulci (folds < -0.8) from the outer surface.
    r_brain = 0.80 + 0.02 * low
    r_wm = r_brain - rng.uniform(0.09, 0.12) + 0.04 * np.clip(folds, -1.5, 1.5)

    tissue = np.zeros(shape, np.uint8)
    tissue[r <= 1.0] = SCALP
    tissue[r <= 0.93] = SKULL
    tissue[r <= 0.86] = CSF
    tissue[r <= r_brain] = CORTEX
    sulci = (folds < -0.8) & (r > r_wm + 0.03) & (r <= r_brain)
    tissue[sulci] = CSF
    tissue[r <= r_wm] = WM

    def ellipsoid(center: tuple[float, float, float], axes: tuple[float, float, float]) -> np.ndarray:
        d = sum(((u[i] - center[i]) / axes[i]) ** 2 for i in range(3))
        return d <= 1.0

    vsize = rng.uniform(0.8, 1.4)
    for side in (-1, 1):
        cx = side * rng.uniform(0.2, 0.26)
        tissue[ellipsoid((cx, rng.uniform(-0.12, -0.04), -0.05), (0.11, 0.13, 0.11))] = DEEP_GM
        tissue[ellipsoid((side * 0.08, 0.02, 0.08), (0.05 * vsize, 0.3, 0.1 * vsize))] = VENTRICLE
    # Flip to RAS: array axis 0 runs to the right, 1 anteriorly, 2 superiorly; centre the head at the origin.
    affine = np.diag([vox, vox, vox, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * vox for n in shape]
    return Phantom(tissue, affine, seed)


def mri(ph: Phantom, noise: float = 0.03, bias: float = 0.2) -> np.ndarray:
    """T1-like image of the phantom: (X, Y, Z) float32 >= 0, partial-volume blur, bias field, Rician noise."""
    rng = np.random.default_rng(ph.seed + 1_000_003)
    img = ndimage.gaussian_filter(T1[ph.tissue], 0.6)
    shape = img.shape
    grid = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    coef = rng.uniform(-1, 1, 6).astype(np.float32)
    field = coef[0] * grid[0] + coef[1] * grid[1] + coef[2] * grid[2] + coef[3] * grid[0] * grid[1]
    field += coef[4] * grid[2] ** 2 + coef[5] * grid[0] ** 2
    img *= np.exp(bias * field / 2)
    sigma = noise * float(T1.max())
    n1 = rng.standard_normal(shape).astype(np.float32) * sigma
    n2 = rng.standard_normal(shape).astype(np.float32) * sigma
    return np.sqrt((img + n1) ** 2 + n2**2).astype(np.float32)


def color(ph: Phantom, brain_only: bool = True) -> np.ndarray:
    """Cryosection-like rendering: (X, Y, Z, 3) uint8; outside the brain (labels 0) black when `brain_only`.

    Soft tissue boundaries (blurred class weights), smooth per-tissue color variation (staining, freezing),
    a faint illumination gradient and photographic grain.
    """
    rng = np.random.default_rng(ph.seed + 2_000_003)
    shape = ph.tissue.shape
    onehot = np.stack([ndimage.gaussian_filter((ph.tissue == t).astype(np.float32), 0.5) for t in range(8)], -1)
    rgb = onehot @ CRYO_RGB  # (X, Y, Z, 3)
    size = max(shape)
    stain = _smooth_noise(rng, shape, sigma=max(1.0, size / 16))
    fine = _smooth_noise(rng, shape, sigma=0.7)
    tint = np.array([1.0, 0.85, 0.75], np.float32) * rng.uniform(0.8, 1.2, 3).astype(np.float32)
    rgb *= (1 + 0.06 * stain[..., None] * tint + 0.04 * fine[..., None])
    light = np.linspace(0.95, 1.05, shape[1], dtype=np.float32)[None, :, None, None]
    rgb *= light
    rgb += rng.normal(0, 3.0, rgb.shape).astype(np.float32)
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if brain_only:
        out[ph.labels == 0] = 0
    return out
