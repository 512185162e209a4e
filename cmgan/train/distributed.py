"""The one seam between the trainer and the distributed runtime: processes, devices, precision, DDP or DeepSpeed.

The rest of the trainer calls `setup(train_cfg, batch_size)` and then only the methods of the returned
`Backend`; it never knows whether gradients are synchronized by DDP (Accelerate) or by DeepSpeed engines.

Processes and devices come from `cmgan.distenv` (torchrun, SLURM tasks or one process; one GPU per local rank,
or one GPU per task). A job that was given GPUs but whose torch cannot use them stops at start-up; tasks are
checked against the GPUs before NCCL starts. On a machine without CUDA the process group uses gloo (and
`Accelerator(cpu=True)`). The world size that the runtime reports is checked against the environment at start-up
(`accelerate launch --cpu --num_processes 2` silently starts one process: that is caught here).

Backends (`train.backend`):
- ddp (`Backend`): Accelerate prepares G, F, Dx, Dy separately (DDP each). Optimizers, schedulers and loss
  scalers stay plain torch objects: Accelerate's scheduler wrapper steps once per process and it keeps a single
  scaler, while a GAN needs two. Accumulation uses `no_sync` on the non-final micro-batches.
- deepspeed (`cmgan.train.deepspeed_backend`): plain `deepspeed.initialize` twice, one engine for the generators
  (G, F) and one for the discriminators (Dx, Dy), each with its own Adam and LambdaLR; each engine's own
  `backward`/`step`, ZeRO stage 0-2; save/load are collective, each engine in its own folder. (Accelerate's
  multi-model DeepSpeed is experimental and imports transformers.) The discriminators must be frozen during the
  generator step (`Backend.frozen`): otherwise ZeRO-2 crashes and ZeRO-0/1 silently leak generator-loss
  gradients into D.
The frozen segmenter S is never wrapped (DDP refuses modules without trainable parameters); `place` moves it.

Precision (`train.precision`): fp32; bf16 autocast (CPU, and GPUs with compute capability >= 8.0; older GPUs
get fp16 with scalers under ddp, fp32 under deepspeed, with a warning); fp16 autocast with one GradScaler per
optimizer (CUDA + ddp only). DeepSpeed's engine switches an outer autocast off inside its forward unless its own
config asks for one, so the deepspeed backend declares the same autocast in the engine config (`torch_autocast`,
gradients still reduced in float32). Autocast covers network forwards only; the losses are computed in float32
(step.py casts outputs up), and master weights, optimizer states, EMA and pools stay float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cmgan import distenv, precision
from cmgan.config import OptimConfig, TrainConfig
from cmgan.distenv import DistEnv, DistributedError
from cmgan.train.schedule import build_scheduler

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- trainables


@dataclass
class Trainable:
    """One optimizer's networks: call `nets[name](...)` in forward; read weights from `raw[name]`."""

    name: str
    nets: dict[str, Any]
    """Callables for the forward pass (DDP-wrapped, engine-dispatched and/or compiled)."""
    raw: dict[str, nn.Module]
    """The plain modules (state dicts, frozen use, EMA, export)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None
    engine: Any = None
    """The DeepSpeed engine, when backend = deepspeed."""

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


# ---------------------------------------------------------------------------------------------- backend


class Backend:
    """Processes, device, precision and gradient synchronization for one run (DDP through Accelerate)."""

    name = "ddp"

    def __init__(self, train: TrainConfig, batch_size: int, env: DistEnv) -> None:
        from accelerate import Accelerator

        distenv.require_cuda_if_assigned()  # a job given GPUs never falls back to the CPU silently
        cuda = torch.cuda.is_available()
        # `auto` becomes the concrete precision of this hardware here, once; everything after reads train.precision.
        train = dataclasses.replace(train, precision=precision.resolve(
            train.precision, "cuda" if cuda else "cpu", fp16_ok=self.name != "deepspeed"))
        if train.precision == "fp16" and not cuda:
            raise DistributedError(
                "train.precision=fp16 needs a CUDA device (autocast fp16 with a loss scaler); on the CPU use "
                "train.precision=bf16"
            )
        if cuda:
            distenv.check_gpus(env)  # more tasks than GPUs: a clear error here instead of NCCL's later
        self.train = train
        self.batch_size = batch_size
        # DeepSpeed needs the rendezvous variables even for one process (else it looks for MPI); close() removes
        # what was exported here, so a next run in the same process reads the launcher's environment again.
        before = dict(os.environ)
        self.env = distenv.export_env(env, single=self.name == "deepspeed")
        self._exported = {k for k in os.environ if k not in before}
        # Accelerate owns the process group (gloo on CPU, NCCL on GPU) and the device (local rank modulo the
        # visible GPUs: the same choice as distenv.device_index once check_gpus passed); mixed precision is ours.
        self.accelerator = Accelerator(cpu=not cuda, mixed_precision="no")
        state = self.accelerator.state
        self.rank = state.process_index
        self.world_size = state.num_processes
        self.local_rank = state.local_process_index
        self.device = self.accelerator.device
        if cuda:
            # One process without a launcher gets plain "cuda" (the current device); name the index.
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            expected = distenv.device_index(env.local_rank, torch.cuda.device_count())
            if index != expected:
                raise DistributedError(f"Accelerate chose cuda:{index} for local rank {env.local_rank}, expected "
                                       f"cuda:{expected}")
            self.device = torch.device("cuda", index)
        if self.world_size != env.world_size:
            raise DistributedError(
                f"the launcher announced {env.world_size} processes ({env.launcher}) but Accelerate runs "
                f"{self.world_size}; on the CPU start ranks with `ACCELERATE_USE_CPU=true torchrun "
                f"--nproc_per_node N` (`accelerate launch --cpu` starts one process)"
            )
        if train.expect_world_size and self.world_size != train.expect_world_size:
            raise DistributedError(
                f"train.expect_world_size={train.expect_world_size} but this job runs {self.world_size} "
                f"processes; fix the launch (tasks x nodes) or the setting"
            )
        self.amp_dtype = self._amp_dtype()

    def _amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype actually used (bf16 falls back to fp16 on GPUs without native bf16)."""
        return distenv.amp_dtype(self.train.precision, self.device)

    @property
    def precision(self) -> str:
        """The precision the networks actually run in: fp32, bf16 or fp16."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    # -- process facts -----------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.train.grad_accum

    def describe(self) -> str:
        return (
            f"{self.name} backend, {self.world_size} process(es) via {self.env.launcher}, device {self.device}, "
            f"precision {self.precision}, global batch {self.global_batch}"
        )

    # -- collectives -------------------------------------------------------------------------------
    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_reduce_max(self, values: list[int], device_flag: torch.Tensor | None = None) -> list[int]:
        """Element-wise MAX over ranks of `[device_flag] + values` (the agreement on non-finite / stop /
        checkpoint flags): one all-reduce and one host read. `device_flag` is a 0-dim tensor that may still be
        computing on the GPU (e.g. "a loss was non-finite"); it is never read alone."""
        flags = torch.tensor(values, dtype=torch.int64)
        if device_flag is not None:
            # Joined on the flag's device: the GPU keeps computing, and the one read below waits once.
            flags = torch.cat([device_flag.detach().reshape(1).to(torch.int64), flags.to(device_flag.device)])
        if self.world_size > 1:
            flags = flags.to(self.device, non_blocking=True)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return [int(v) for v in flags.tolist()]

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over ranks of a float tensor (for logging)."""
        values = values.detach().float().to(self.device)
        if self.world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values = values / self.world_size
        return values

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable `obj`, in rank order."""
        return distenv.gather(obj)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        return distenv.broadcast(obj)

    # -- precision ---------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for network forwards (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def place(self, module: nn.Module) -> nn.Module:
        """Move a module to the device (channels_last when configured); used for every net and for S."""
        module = module.to(self.device)
        if self.train.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.train.channels_last and x.ndim == 4 else x

    def _compile(self, fn: Any) -> Any:
        return torch.compile(fn, backend=self.train.compile_backend) if self.train.compile else fn

    # -- trainables --------------------------------------------------------------------------------
    def prepare(
        self, name: str, modules: dict[str, nn.Module], lr: float, optim: OptimConfig, total_steps: int
    ) -> Trainable:
        """Wrap `modules` (already on the device) for training with one Adam + LambdaLR (+ scaler in fp16)."""
        params = [p for m in modules.values() for p in m.parameters()]
        optimizer = torch.optim.Adam(params, lr=lr, betas=optim.betas, weight_decay=optim.weight_decay)
        scheduler = build_scheduler(optimizer, optim, total_steps)
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        nets = {}
        for key, module in modules.items():
            # DDP only when there are several processes; Accelerate returns the module itself otherwise.
            wrapped = self.accelerator.prepare_model(module) if self.world_size > 1 else module
            nets[key] = self._compile(wrapped)
        return Trainable(name, nets, dict(modules), optimizer, scheduler, scaler)

    def frozen_callable(self, module: nn.Module) -> Any:
        """The unwrapped module as called while frozen (the discriminators in the generator step)."""
        return self._compile(module)

    @contextlib.contextmanager
    def frozen(self, t: Trainable) -> Iterator[None]:
        """requires_grad False on `t`'s parameters inside the block (D during the generator step)."""
        params = [p for m in t.raw.values() for p in m.parameters()]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)

    def accumulate(self, trainables: list[Trainable], boundary: bool) -> contextlib.AbstractContextManager:
        """Around forward+backward of a micro-batch: skip DDP's all-reduce unless it is the window's last."""
        stack = contextlib.ExitStack()
        if not boundary and self.world_size > 1:
            for t in trainables:
                for net in t.nets.values():
                    inner = getattr(net, "_orig_mod", net)
                    if hasattr(inner, "no_sync"):
                        stack.enter_context(inner.no_sync())
        return stack

    def backward(self, t: Trainable, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's mean loss, averaged over the accumulation window."""
        loss = loss / self.train.grad_accum
        if t.scaler is not None:
            t.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self, t: Trainable, boundary: bool) -> None:
        """After each micro-batch's backward; updates the weights and the schedule at the window's end."""
        if not boundary:
            return
        if t.scaler is not None:
            t.scaler.step(t.optimizer)
            t.scaler.update()
        else:
            t.optimizer.step()
        t.optimizer.zero_grad(set_to_none=True)
        t.scheduler.step()

    def skip(self, t: Trainable) -> None:
        """Drop the accumulated gradients without updating (a skipped non-finite step); the schedule advances."""
        t.optimizer.zero_grad(set_to_none=True)
        t.scheduler.step()

    # -- checkpoint state --------------------------------------------------------------------------
    def state_dict(self, t: Trainable) -> dict:
        """Replicated training state of `t` (identical on all ranks; rank 0 writes it)."""
        return {
            "nets": {k: m.state_dict() for k, m in t.raw.items()},
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(),
            "scaler": t.scaler.state_dict() if t.scaler is not None else {},
        }

    def load_state_dict(self, t: Trainable, state: dict, checkpoint: Path) -> None:
        if "nets" not in state:
            raise DistributedError(f"{checkpoint} was written by train.backend=deepspeed; resume it with that backend")
        for k, m in t.raw.items():
            m.load_state_dict(state["nets"][k])
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        if t.scaler is not None and state.get("scaler"):
            t.scaler.load_state_dict(state["scaler"])

    def collective_writers(self, trainables: list[Trainable]) -> tuple:
        """Savers every rank runs into the temporary checkpoint folder (none for DDP: rank 0 writes state.pt)."""
        return ()

    def close(self) -> None:
        """Tear down the process group (so a next run in the same process starts clean)."""
        # No barrier: after an error on one rank a barrier would hang; the launcher reaps the others.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        for key in self._exported:
            os.environ.pop(key, None)


def setup(train: TrainConfig, batch_size: int) -> Backend:
    """Start (or join) the process group for this run and return its backend."""
    env = distenv.detect_env()
    if train.backend == "deepspeed":
        # Imported here: the DeepSpeed backend subclasses Backend (a top-level import would be circular).
        from cmgan.train.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(train, batch_size, env)
    return Backend(train, batch_size, env)
