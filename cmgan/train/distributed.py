"""The one seam between the trainer and the distributed runtime: processes, devices, precision, DDP or DeepSpeed.

The rest of the trainer calls `setup(train_cfg, batch_size)` and then only the methods of the returned
`Backend`; it never knows whether gradients are synchronized by DDP (Accelerate) or by DeepSpeed engines.

Processes and devices come from `cmgan.distenv` (torchrun, SLURM tasks or one process; one GPU per local rank,
or one GPU per task). A job that was given GPUs but whose torch cannot use them stops at start-up; tasks are
checked against the GPUs before NCCL starts. On a machine without CUDA the process group uses gloo (and
`Accelerator(cpu=True)`). The world size that the runtime reports is checked against the environment at start-up
(`accelerate launch --cpu --num_processes 2` silently starts one process: that is caught here).

Backends (`train.backend`):
- ddp: Accelerate prepares G, F, Dx, Dy separately (DDP each). Optimizers, schedulers and loss scalers stay
  plain torch objects: Accelerate's scheduler wrapper steps once per process and it keeps a single scaler,
  while a GAN needs two. Accumulation uses `no_sync` on the non-final micro-batches.
- deepspeed: plain `deepspeed.initialize` twice, one engine for the generators (G, F) and one for the
  discriminators (Dx, Dy), each with its own Adam and LambdaLR; each engine's own `backward`/`step`, ZeRO stage
  0-2; save/load are collective, each engine in its own folder. (Accelerate's multi-model DeepSpeed is
  experimental and imports transformers.) The discriminators must be frozen during the generator step
  (`Backend.frozen`): otherwise ZeRO-2 crashes and ZeRO-0/1 silently leak generator-loss gradients into D.
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
from types import SimpleNamespace
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


class ModuleGroup(nn.Module):
    """Networks that share one optimizer (G+F or Dx+Dy); `forward(name, *args)` calls the named one.

    A DeepSpeed engine wraps exactly one module, so the pair is one module whose forward dispatches.
    `compiled` holds optional torch.compile'd callables without registering them (state-dict keys stay clean).
    """

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.compiled: dict[str, Any] = {}

    def forward(self, name: str, *args: Any, **kwargs: Any) -> Any:
        fn = self.compiled.get(name) or getattr(self, name)
        return fn(*args, **kwargs)


class EngineCall:
    """`engine(name, ...)` as a callable for one network; `.module` is the network (as DDP's attribute is)."""

    def __init__(self, engine: Any, name: str, module: nn.Module) -> None:
        self.engine, self.name, self.module = engine, name, module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.engine(self.name, *args, **kwargs)


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
        return torch.compile(fn) if self.train.compile else fn

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


class DeepSpeedBackend(Backend):
    """Two DeepSpeed engines (generators, discriminators); ZeRO stage `train.zero_stage`."""

    name = "deepspeed"

    def __init__(self, train: TrainConfig, batch_size: int, env: DistEnv) -> None:
        if train.precision == "fp16":
            raise DistributedError("train.precision=fp16 is not supported with train.backend=deepspeed; use bf16")
        super().__init__(train, batch_size, env)
        import deepspeed

        self.deepspeed = deepspeed
        # DeepSpeed reuses the process group Accelerate created (gloo or NCCL); with one process Accelerate made
        # none, and DeepSpeed starts a one-rank group from the variables export_env published.
        backend = dist.get_backend() if dist.is_initialized() else "nccl" if self.device.type == "cuda" else "gloo"
        deepspeed.init_distributed(dist_backend=backend)

    def _amp_dtype(self) -> torch.dtype | None:
        dtype = super()._amp_dtype()
        if dtype == torch.float16:  # only reached by bf16 on a GPU without native bf16 (fp16 is refused above)
            log.warning("train.backend=deepspeed runs fp32 on %s: fp16 autocast would need a loss scaler per ZeRO "
                        "stage; use train.backend=ddp for fp16", self.device)
            return None
        return dtype

    def place(self, module: nn.Module) -> nn.Module:
        # Weights stay contiguous: DeepSpeed broadcasts and flattens parameters as raw bytes, which a
        # channels_last weight cannot be viewed as. Inputs are still channels_last (to_device), and the CPU and
        # cuDNN convolutions then run in channels_last, reordering the small weights on the fly.
        return module.to(self.device)

    def ds_config(self) -> dict:
        return {
            "train_micro_batch_size_per_gpu": self.batch_size,
            "gradient_accumulation_steps": self.train.grad_accum,
            "train_batch_size": self.global_batch,
            "zero_optimization": {"stage": self.train.zero_stage},
            # The client Adam is torch's; ZeRO wraps it (partitioned states) without DeepSpeed's fused kernels.
            "zero_allow_untested_optimizer": True,
            # fp32 weights, gradients and optimizer states, as with ddp; bf16 only as autocast around forwards.
            "bf16": {"enabled": False},
            "fp16": {"enabled": False},
            # The engine switches an outer autocast off inside its forward unless asked here; no module is listed
            # as lower-precision safe, so gradients are still reduced in float32 (same numerics as ddp).
            "torch_autocast": {
                "enabled": self.amp_dtype is not None,
                "dtype": "bfloat16" if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch."),
                "lower_precision_safe_modules": [],
            },
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }

    def prepare(
        self, name: str, modules: dict[str, nn.Module], lr: float, optim: OptimConfig, total_steps: int
    ) -> Trainable:
        group = ModuleGroup(modules)
        optimizer = torch.optim.Adam(group.parameters(), lr=lr, betas=optim.betas, weight_decay=optim.weight_decay)
        engine, ds_optimizer, _, scheduler = self.deepspeed.initialize(
            # The engine otherwise takes cuda:LOCAL_RANK, which does not exist with one GPU per task.
            args=SimpleNamespace(device_rank=self.device.index) if self.device.type == "cuda" else None,
            model=group,
            optimizer=optimizer,
            # A callable: the schedule is built on the optimizer DeepSpeed actually steps (ZeRO's wrapper).
            lr_scheduler=lambda opt: build_scheduler(opt, optim, total_steps),
            config=self.ds_config(),
        )
        if self.train.compile:
            group.compiled = {k: torch.compile(m) for k, m in modules.items()}
        nets = {k: EngineCall(engine, k, m) for k, m in modules.items()}
        return Trainable(name, nets, dict(modules), ds_optimizer, scheduler, None, engine)

    def accumulate(self, trainables: list[Trainable], boundary: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the engines know the accumulation window from their config

    def backward(self, t: Trainable, loss: torch.Tensor) -> None:
        t.engine.backward(loss)  # scales by 1 / gradient_accumulation_steps itself

    def step(self, t: Trainable, boundary: bool) -> None:
        t.engine.step()  # every micro-batch: the engine updates (and steps the schedule) at the boundary

    def skip(self, t: Trainable) -> None:
        raise DistributedError("train.nonfinite=skip is not supported with train.backend=deepspeed")

    def state_dict(self, t: Trainable) -> dict:
        return {"engine": f"ds_{t.name}"}  # the weights and optimizer shards are in the engine's folder

    def load_state_dict(self, t: Trainable, state: dict, checkpoint: Path) -> None:
        if "engine" not in state:
            raise DistributedError(f"{checkpoint} was written by train.backend=ddp; resume it with that backend")
        folder = checkpoint / state["engine"]
        # DeepSpeed's own loader unpickles with weights_only=False; route it through weights_only=True with the
        # four plain-data DeepSpeed classes its ZeRO optimizer files contain allow-listed.
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        safe = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]

        def weights_only_load(path: str, map_location: Any = None) -> Any:
            with torch.serialization.safe_globals(safe):
                return torch.load(path, map_location=map_location, weights_only=True)

        ckpt_engine = t.engine.checkpoint_engine
        ckpt_engine.load = weights_only_load
        try:
            path, _ = t.engine.load_checkpoint(str(folder), tag="engine", load_optimizer_states=True)
        finally:
            del ckpt_engine.load  # back to the class's method
        if path is None:
            raise DistributedError(f"DeepSpeed could not load its checkpoint from {folder}")

    def close(self) -> None:
        # Through DeepSpeed, which also drops its cached groups (a clone of the world group): a next run in this
        # process would otherwise hand the new engines a group of the destroyed one.
        if self.deepspeed.comm.is_initialized():
            self.deepspeed.comm.destroy_process_group()
        super().close()

    def collective_writers(self, trainables: list[Trainable]) -> tuple:
        def writer(t: Trainable):
            return lambda tmp: t.engine.save_checkpoint(str(tmp / f"ds_{t.name}"), tag="engine", save_latest=False)

        return tuple(writer(t) for t in trainables)


def setup(train: TrainConfig, batch_size: int) -> Backend:
    """Start (or join) the process group for this run and return its backend."""
    env = distenv.detect_env()
    cls = DeepSpeedBackend if train.backend == "deepspeed" else Backend
    return cls(train, batch_size, env)
