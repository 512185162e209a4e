"""The one seam between the trainer and the distributed runtime: processes, devices, precision, DDP or DeepSpeed.

The rest of the trainer calls `setup(train_cfg, batch_size)` and then only the methods of the returned
`Backend`; it never knows whether gradients are synchronized by DDP (Accelerate) or by DeepSpeed engines.

Launchers (the environment decides; the command is the same on a laptop and on 64 GPUs):
- `torchrun` / `accelerate launch`: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are set.
- SLURM tasks (`srun python launch/train.py ...`, or submitit with `tasks_per_node`), no wrapper: the rank
  comes from SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID, MASTER_ADDR is the first node of the step's
  node list, and MASTER_PORT is derived from the job id (so concurrent jobs on one node do not collide).
  Only inside an `srun` step (SLURM_STEP_NUM_TASKS set): a batch script's own shell is one process.
- Anything else: one process.
On a machine without CUDA the process group uses gloo (and `Accelerator(cpu=True)`); with CUDA, NCCL and one GPU
per local rank. The world size that the runtime reports is checked against the environment at start-up
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

Precision (`train.precision`): fp32; bf16 autocast (CPU and GPU, no scaler); fp16 autocast with one GradScaler
per optimizer (CUDA + ddp only). Autocast covers network forwards only; the losses are computed in float32
(step.py casts outputs up), and master weights, optimizer states, EMA and pools stay float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cmgan import precision
from cmgan.config import OptimConfig, TrainConfig
from cmgan.train.schedule import build_scheduler

log = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """The distributed setup is inconsistent; the message says what to change."""


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


def _tasks_per_node(text: str) -> list[int]:
    """SLURM_STEP_TASKS_PER_NODE "2(x3),1" -> [2, 2, 2, 1]."""
    out: list[int] = []
    for item in text.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if m:
            out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


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
    """torchrun (also accelerate launch), slurm, or single."""


def detect_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables (torchrun first, then an srun step of SLURM, else one process)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun",
        )
    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        world = int(env["SLURM_STEP_NUM_TASKS"])
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        per_node = _tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "")))
        node = int(env.get("SLURM_NODEID", 0))
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=world,
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            local_world_size=per_node[node] if node < len(per_node) else 1,
            master_addr=env.get("MASTER_ADDR") or expand_hostlist(nodelist)[0],
            # Derived from the job id: every task of the job computes the same port without talking, and two
            # jobs sharing a node do not collide (unless their ids are 20000 apart, which the scheduler spreads).
            master_port=int(env.get("MASTER_PORT") or 20000 + job % 20000),
            launcher="slurm",
        )
    return DistEnv()


def export_env(env: DistEnv) -> None:
    """Publish `env` in the variables that torch.distributed's env:// rendezvous (and Accelerate) read."""
    if env.world_size <= 1 or env.launcher == "torchrun":
        return
    os.environ.update(
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(env.local_rank),
        LOCAL_WORLD_SIZE=str(env.local_world_size),
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
    )


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

        cuda = torch.cuda.is_available()
        # `auto` becomes the concrete precision of this hardware here, once; everything after reads train.precision.
        train = dataclasses.replace(train, precision=precision.resolve(
            train.precision, "cuda" if cuda else "cpu", fp16_ok=self.name != "deepspeed"))
        if train.precision == "fp16" and not cuda:
            raise DistributedError(
                "train.precision=fp16 needs a CUDA device (autocast fp16 with a loss scaler); on the CPU use "
                "train.precision=bf16"
            )
        self.train = train
        self.batch_size = batch_size
        self.env = env
        export_env(env)
        # Accelerate owns the process group (gloo on CPU, NCCL on GPU) and the device; mixed precision is ours.
        self.accelerator = Accelerator(cpu=not cuda, mixed_precision="no")
        state = self.accelerator.state
        self.rank = state.process_index
        self.world_size = state.num_processes
        self.local_rank = state.local_process_index
        self.device = self.accelerator.device
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
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[train.precision]

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
            f"precision {self.train.precision}, global batch {self.global_batch}"
        )

    # -- collectives -------------------------------------------------------------------------------
    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_reduce_max(self, values: list[int]) -> list[int]:
        """Element-wise MAX over ranks (the agreement on stop / checkpoint / non-finite flags)."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(v) for v in t.tolist()]

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over ranks of a float tensor (for logging)."""
        values = values.detach().float().to(self.device)
        if self.world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values = values / self.world_size
        return values

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

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
        scaler = torch.amp.GradScaler("cuda") if self.train.precision == "fp16" else None
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


class DeepSpeedBackend(Backend):
    """Two DeepSpeed engines (generators, discriminators); ZeRO stage `train.zero_stage`."""

    name = "deepspeed"

    def __init__(self, train: TrainConfig, batch_size: int, env: DistEnv) -> None:
        if train.precision == "fp16":
            raise DistributedError("train.precision=fp16 is not supported with train.backend=deepspeed; use bf16")
        super().__init__(train, batch_size, env)
        import deepspeed

        self.deepspeed = deepspeed
        # DeepSpeed reuses the process group Accelerate created (gloo or NCCL).
        deepspeed.init_distributed(dist_backend=dist.get_backend() if dist.is_initialized() else None)

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
            # fp32 engine: bf16 comes from our autocast around forwards, so both backends run the same numerics.
            "bf16": {"enabled": False},
            "fp16": {"enabled": False},
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }

    def prepare(
        self, name: str, modules: dict[str, nn.Module], lr: float, optim: OptimConfig, total_steps: int
    ) -> Trainable:
        group = ModuleGroup(modules)
        optimizer = torch.optim.Adam(group.parameters(), lr=lr, betas=optim.betas, weight_decay=optim.weight_decay)
        engine, ds_optimizer, _, scheduler = self.deepspeed.initialize(
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

    def collective_writers(self, trainables: list[Trainable]) -> tuple:
        def writer(t: Trainable):
            return lambda tmp: t.engine.save_checkpoint(str(tmp / f"ds_{t.name}"), tag="engine", save_latest=False)

        return tuple(writer(t) for t in trainables)


def setup(train: TrainConfig, batch_size: int) -> Backend:
    """Start (or join) the process group for this run and return its backend."""
    env = detect_env()
    cls = DeepSpeedBackend if train.backend == "deepspeed" else Backend
    return cls(train, batch_size, env)
