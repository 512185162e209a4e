"""What the evaluator needs from torch.distributed: joining the job's ranks, gathering, broadcasting, summing,
and turning an error on one rank into an error on every rank (instead of a hang in the next collective).

Every function is a no-op (or the identity) in a single process without a process group.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    n = world()[1]
    if n == 1:
        return [obj]
    out: list[Any] = [None] * n
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def raise_if_any_failed(error: BaseException | None) -> None:
    """Collective: if any rank failed, raise on every rank (the failing rank re-raises its own error)."""
    messages = gather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None]
    if failed:
        raise RuntimeError("evaluation failed on another rank: " + "; ".join(failed))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place; returned). NCCL reduces CUDA tensors only, so the tensor visits
    the current GPU there and comes back."""
    if world()[1] == 1:
        return tensor
    if dist.get_backend() == "nccl":
        moved = tensor.cuda()
        dist.all_reduce(moved)
        tensor.copy_(moved.cpu())
    else:
        dist.all_reduce(tensor)
    return tensor


def init_distributed_from_env() -> tuple[int, int, int]:
    """Join the process group that torchrun (RANK, WORLD_SIZE) or an srun step (SLURM_PROCID, ...) describes.

    Returns (rank, world_size, local_rank); one process without those variables stays uninitialised.
    NCCL with CUDA (one GPU per local rank), else gloo. Environment parsing: `cmgan.train.distributed`.
    """
    from cmgan.train.distributed import detect_env, export_env

    env = detect_env()
    export_env(env)
    if env.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    if dist.is_initialized() and dist.get_world_size() != env.world_size:
        raise RuntimeError(f"the launcher asked for {env.world_size} ranks, torch.distributed has "
                           f"{dist.get_world_size()}")
    return env.rank, env.world_size, env.local_rank
