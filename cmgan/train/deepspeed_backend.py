"""The deepspeed backend of `cmgan.train.distributed` (`train.backend = "deepspeed"`): two DeepSpeed engines, one
for the generators (G, F) and one for the discriminators (Dx, Dy), behind the same `Backend` methods as DDP.
The module docstring of `cmgan.train.distributed` says how it differs from DDP (freezing D during the generator
step, autocast declared in the engine config, collective save/load per engine folder).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cmgan.config import OptimConfig, TrainConfig
from cmgan.distenv import DistEnv, DistributedError
from cmgan.train.distributed import Backend, Trainable
from cmgan.train.schedule import build_scheduler

log = logging.getLogger(__name__)


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
            group.compiled = {k: torch.compile(m, backend=self.train.compile_backend) for k, m in modules.items()}
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
