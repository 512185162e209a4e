"""Seeding, random-number-generator state and replica digests: the parts of training state outside the nets.

Every value returned here is made of tensors, lists, dicts, ints, floats and strings, so checkpoints holding it
load with `torch.load(weights_only=True)` (numpy's MT19937 key becomes an int64 tensor, Python's a list).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch
from torch import nn


def rank_seed(seed: int, rank: int, stream: int = 0) -> int:
    """A distinct 63-bit seed for (run seed, rank, stream) so ranks and consumers draw independent numbers."""
    digest = hashlib.sha256(f"cmgan:{seed}:{rank}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_all(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and every CUDA device) with one value."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (bitwise-repeatable runs on the same hardware, software and thread count) or the
    fast ones. On CUDA an op without a deterministic kernel raises instead of warning (warn_only=False), so the
    promise holds or the run stops naming the op; cuBLAS gets its fixed workspace (CUBLAS_WORKSPACE_CONFIG, read at
    its first call). Where it holds: docs/gpu.md."""
    if not enabled and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True
        return  # nothing to undo (and the call below imports torch._inductor: seconds at start-up)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def capture_rng() -> dict:
    """The state of every global random stream of this process (Python, numpy, torch CPU, all CUDA devices)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    """Inverse of `capture_rng`. CUDA states are restored only when this process sees the same device count."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npy["bit_generator"],
            "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]},
            "has_gauss": npy["has_gauss"],
            "gauss": npy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda", [])
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


T = TypeVar("T")


def isolated_start(items: Iterator[T]) -> Iterator[T]:
    """`items`, with its first `next` kept off torch's global RNG. A DataLoader draws its base seed from the
    global generator when its iterator starts; without this, every resume would shift that stream by one draw
    (the data pipeline seeds itself and does not need the draw)."""
    with torch.random.fork_rng(devices=[]):
        first = next(items)
    yield first
    yield from items


def parameter_digest(modules: Iterable[nn.Module]) -> str:
    """sha256 over the bytes of every parameter and buffer, in state-dict order: equal digests = equal replicas."""
    h = hashlib.sha256()
    for module in modules:
        for name, value in module.state_dict().items():
            h.update(name.encode())
            h.update(value.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
