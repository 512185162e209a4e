"""The distributed environment, read once: where this process sits in the job, which device it drives, and the
few collectives the trainer, the evaluator, segmentation pretraining and the colorizer share.

Launchers (the environment decides; the command is the same on a laptop and on 64 GPUs):
- `torchrun` / `accelerate launch` (and submitit jobs, which export the same names): RANK, WORLD_SIZE,
  LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT are set.
- SLURM tasks without a wrapper (`srun python launch/train.py ...`): the rank comes from SLURM_PROCID /
  SLURM_STEP_NUM_TASKS / SLURM_LOCALID, MASTER_ADDR is the first node of the step's node list and MASTER_PORT
  follows from the job id and its restart count (`master_port`). Only inside an `srun` step
  (SLURM_STEP_NUM_TASKS set): a batch script's own shell is one process.
- Anything else: one process.

Devices: one GPU per local rank. Two layouts exist and both work (`device_index`):
- every task sees all of the node's GPUs (torchrun, `srun --gpus-per-node=N`): rank k drives cuda:k;
- every task sees only its own GPU (`--gpus-per-task=1`, `--gpu-bind=single:1`, `CUDA_VISIBLE_DEVICES` set per
  task): LOCAL_RANK still goes 0..N-1 but each process has exactly one device, cuda:0.
`check_gpus` refuses more tasks than visible GPUs before any NCCL call, and warns about idle GPUs.
`require_cuda_if_assigned` stops a job that was given GPUs but whose torch cannot use them (instead of training on
the CPU for a day).

Collectives (`world`, `gather`, `broadcast`, `all_reduce_sum`, `raise_if_any_failed`) are the identity in a single
process without a process group.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """The distributed setup is inconsistent; the message says what to change."""


class CudaUnavailableError(DistributedError):
    """The job was given GPUs but this torch cannot use them."""


# ---------------------------------------------------------------------------------------------- environment


def expand_hostlist(text: str) -> list[str]:
    """Expand a SLURM host list: "gpu[01-03,07],login1" -> ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]."""
    hosts: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", text):
        parts = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            values = [literal]
            if ranges:
                values = []
                for r in ranges.split(","):
                    lo, _, hi = r.partition("-")
                    if hi:
                        values += [f"{literal}{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]
                    else:
                        values.append(f"{literal}{lo}")
            parts = [p + v for p in parts for v in values]
        hosts += [p for p in parts if p]
    return hosts


def tasks_per_node(text: str) -> list[int]:
    """SLURM_STEP_TASKS_PER_NODE "2(x3),1" -> [2, 2, 2, 1]."""
    out: list[int] = []
    for item in text.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if m:
            out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def master_port(job_id: str, restarts: int) -> int:
    """The rendezvous port of a SLURM job: derived from its id and restart count, so every task computes the same
    port without talking, two jobs sharing a node rarely collide, and a requeued job never meets its predecessor's
    lingering socket. In [20000, 40000)."""
    digits = int(re.sub(r"\D", "", str(job_id)) or 0)
    return 20000 + (digits * 7 + restarts) % 20000


def free_port() -> int:
    """A TCP port free on this host right now (for a one-process group, which needs no agreement)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"
    """torchrun (also accelerate launch and submitit jobs), slurm, or single."""


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables (torchrun first, then an srun step of SLURM, else one process)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=world,
            local_rank=int(env.get("LOCAL_RANK", 0)),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun",
        )
    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        per_node = tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "")))
        node = int(env.get("SLURM_NODEID", 0))
        restarts = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_STEP_NUM_TASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            local_world_size=per_node[node] if node < len(per_node) else 1,
            master_addr=env.get("MASTER_ADDR") or expand_hostlist(nodelist)[0],
            master_port=int(env.get("MASTER_PORT") or master_port(env.get("SLURM_JOB_ID", "0"), restarts)),
            launcher="slurm",
        )
    return DistEnv()


def export_env(env: DistEnv, single: bool = False) -> DistEnv:
    """Publish `env` in the variables torch.distributed's env:// rendezvous (Accelerate, DeepSpeed) reads.

    torchrun set them already. A single process exports nothing unless `single`: DeepSpeed needs RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT even for one process (without them it falls back to MPI
    discovery and needs mpi4py); a free local port is taken then. Returns the environment as exported.
    """
    if env.world_size > 1:
        if env.launcher != "torchrun":
            os.environ.update(_variables(env))
        return env
    if single:
        if "MASTER_PORT" not in os.environ:
            env = DistEnv(master_port=free_port(), launcher=env.launcher)
        for key, value in _variables(env).items():
            os.environ.setdefault(key, value)
    return env


def _variables(env: DistEnv) -> dict[str, str]:
    return {"RANK": str(env.rank), "WORLD_SIZE": str(env.world_size), "LOCAL_RANK": str(env.local_rank),
            "LOCAL_WORLD_SIZE": str(env.local_world_size), "MASTER_ADDR": env.master_addr,
            "MASTER_PORT": str(env.master_port)}


# ---------------------------------------------------------------------------------------------- devices

_NO_DEVICES = {"", "-1", "none", "nodevfiles", "void"}
_SLURM_GPU_IDS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
"""Lists of the GPU indices SLURM bound to the step / job ("0,1")."""
_SLURM_GPU_COUNTS = ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_TASK", "SLURM_GPUS_PER_NODE", "SLURM_GPUS")
"""Counts of GPUs requested, optionally typed ("a100:2"); 0 means none."""


def gpus_assigned(environ: Mapping[str, str] | None = None) -> str | None:
    """Why this process is expected to have GPUs ("SLURM_JOB_GPUS=0,1", "CUDA_VISIBLE_DEVICES=2"), or None."""
    env = os.environ if environ is None else environ
    for key in _SLURM_GPU_IDS:
        value = env.get(key, "").strip()
        if value and value.lower() not in _NO_DEVICES:
            return f"{key}={value}"
    for key in _SLURM_GPU_COUNTS:
        value = env.get(key, "").strip()
        counts = [c.rpartition(":")[2] for c in value.split(",")]
        if any(c.isdigit() and int(c) > 0 for c in counts):
            return f"{key}={value}"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip().lower() not in _NO_DEVICES:
        return f"CUDA_VISIBLE_DEVICES={visible.strip()}"
    return None


def cuda_unavailable_reason() -> str:
    """Why `torch.cuda.is_available()` is False, as far as torch can tell (for the one-line error)."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only wheel"
    try:
        torch.cuda.init()
    except Exception as e:  # noqa: BLE001 - only its message is reported
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"this torch ({torch.__version__}, built for CUDA {torch.version.cuda}) cannot use the GPU: {first}"
    return (f"this torch ({torch.__version__}, built for CUDA {torch.version.cuda}) finds no usable GPU "
            "(the NVIDIA driver is probably older than this CUDA version needs)")


def require_cuda_if_assigned(environ: Mapping[str, str] | None = None) -> None:
    """Stop with one line when the job was given GPUs but torch cannot use them (no silent CPU fallback).

    Set CMGAN_ALLOW_CPU=1 to run on the CPU anyway.
    """
    env = os.environ if environ is None else environ
    given = gpus_assigned(env)
    if given is None or torch.cuda.is_available() or env.get("CMGAN_ALLOW_CPU", "") == "1":
        return
    raise CudaUnavailableError(
        f"the job was given GPUs ({given}) but CUDA is unavailable: {cuda_unavailable_reason()}. Install the torch "
        "wheel that matches the cluster's driver (`nvidia-smi` shows the driver's CUDA version; docs/gpu.md), or "
        "set CMGAN_ALLOW_CPU=1 to train on the CPU on purpose"
    )


def device_index(local_rank: int, count: int) -> int:
    """The CUDA device index of local rank `local_rank` when this process sees `count` devices.

    count == 1: 0, whatever the local rank (one GPU per task: each rank sees only its own device as cuda:0).
    local_rank < count: local_rank (every rank sees all of the node's GPUs, one per rank).
    Otherwise there are more ranks on this node than GPUs: DistributedError.
    """
    if count < 1:
        raise DistributedError("no CUDA device visible to this process")
    if count == 1:
        return 0
    if local_rank < count:
        return local_rank
    raise DistributedError(
        f"local rank {local_rank} but this process sees only {count} GPUs: start at most {count} tasks per node "
        "(tasks_per_node <= gpus_per_node), or give each task its own GPU (--gpus-per-task=1)"
    )


def check_gpus(env: DistEnv, count: int | None = None) -> None:
    """Validate tasks vs GPUs on this node at start-up, before NCCL: more tasks than visible GPUs is an error
    (unless each task sees its own single GPU); fewer tasks than GPUs warns and names the idle ones."""
    count = torch.cuda.device_count() if count is None else count
    if count == 0:
        return
    if count > 1 and env.local_world_size > count:
        raise DistributedError(
            f"{env.local_world_size} tasks on this node but only {count} GPUs visible to each: lower the tasks per "
            f"node to {count} (torchrun --nproc_per_node / profile tasks_per_node), or request more GPUs"
        )
    device_index(env.local_rank, count)
    if count > env.local_world_size and env.local_rank == 0:
        idle = list(range(env.local_world_size, count))
        log.warning("%d task(s) on this node but %d GPUs visible: GPU(s) %s stay idle; start one task per GPU "
                    "(torchrun --nproc_per_node %d, or profile tasks_per_node = %d)",
                    env.local_world_size, count, idle, count, count)


def rank_device(env: DistEnv | None = None) -> torch.device:
    """This rank's device: its GPU (`device_index`) where CUDA is usable, else the CPU (after checking that no GPU
    was assigned to the job). Makes that GPU the current device."""
    env = detect_env() if env is None else env
    require_cuda_if_assigned()
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", device_index(env.local_rank, torch.cuda.device_count()))
    torch.cuda.set_device(device)
    return device


def native_bf16(device: torch.device) -> bool:
    """bf16 runs natively: CUDA compute capability >= 8.0 (Ampere+; older GPUs only emulate it, slowly), or any
    CPU (autocast bf16 works everywhere; its speed depends on AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu"


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` (fp32 -> None, bf16, fp16) on `device`; bf16 on a GPU without native
    bf16 becomes fp16 (with a warning; the caller then needs loss scalers)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cuda" and not native_bf16(device):
            log.warning("%s (compute capability %s) has no native bf16: using fp16 with loss scaling instead",
                        torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device))
            return torch.float16
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise ValueError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")


# ---------------------------------------------------------------------------------------------- process group


def init_process_group(env: DistEnv | None = None) -> tuple[DistEnv, torch.device]:
    """Join the process group the environment describes (NCCL with CUDA, else gloo) for code that has no
    Accelerate (the evaluator): returns (env, this rank's device). One process stays without a group."""
    env = detect_env() if env is None else env
    if torch.cuda.is_available():
        check_gpus(env)
    device = rank_device(env)
    export_env(env)
    if env.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size, **kwargs)
    if dist.is_initialized() and dist.get_world_size() != env.world_size:
        raise DistributedError(f"the launcher asked for {env.world_size} ranks, torch.distributed has "
                               f"{dist.get_world_size()}")
    return env, device


# ---------------------------------------------------------------------------------------------- collectives


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order, on every rank."""
    n = world()[1]
    if n == 1:
        return [obj]
    out: list[Any] = [None] * n
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's picklable `obj` on every rank."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce `tensor` over all ranks in place (op: sum or max) and return it. NCCL reduces CUDA tensors only: a
    CPU tensor visits the current GPU there and comes back."""
    if world()[1] == 1:
        return tensor
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        moved = tensor.to("cuda", non_blocking=False)
        dist.all_reduce(moved, op=reduce_op)
        tensor.copy_(moved.cpu())
    else:
        dist.all_reduce(tensor, op=reduce_op)
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks (in place; returned)."""
    return all_reduce(tensor, "sum")


def raise_if_any_failed(error: BaseException | None) -> None:
    """Collective: if any rank failed, raise on every rank (the failing rank re-raises its own error)."""
    messages = gather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None]
    if failed:
        raise RuntimeError("failed on another rank: " + "; ".join(failed))
