"""A small, real, checkpointing training function with the trainer's contract, for the sweep tests.

`train(cfg) -> dict` fits a linear model by SGD on data derived from the step index (so a resumed run
ends with exactly the weights of an uninterrupted one), resumes from `<run_dir>/ckpt.pt`, checkpoints every
`train.ckpt_every_steps` steps, and on SIGTERM/SIGUSR1/SIGUSR2 follows `cmgan.train.stop`: ranks agree at a
step boundary, rank 0 saves, the signal is handed to the previous handler (submitit's), and the run returns
{"status": "stopped"}. With WORLD_SIZE > 1 it trains data-parallel over gloo (gradients all-reduced).
The job's sweep sets the environment it needs (RANK, WORLD_SIZE, MASTER_ADDR/PORT).
Step time: env CMGAN_TOY_STEP_S (default 0.1 s), so tests can hit a run mid-training.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from cmgan.config import RunConfig
from cmgan.train.stop import StopFlag

DIM = 4


def _batch(seed: int, step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + rank)
    x = torch.randn(8, DIM, generator=g)
    w_true = torch.arange(1.0, DIM + 1).unsqueeze(1)
    return x, x @ w_true


def _save(path: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"step": step, "model": model.state_dict(), "optim": opt.state_dict()}, tmp)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def train(cfg: RunConfig) -> dict:
    run_dir = Path(cfg.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not Path(cfg.data.mr_shards).is_dir():
        raise FileNotFoundError(f"data.mr_shards={cfg.data.mr_shards!r}: no such shard directory")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(cfg.train.seed)
    model = torch.nn.Linear(DIM, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ckpt = run_dir / "ckpt.pt"
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        step = state["step"]
    start = step
    restart = int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0)
    with open(run_dir / "starts.jsonl", "a") as f:
        f.write(json.dumps({"rank": rank, "world": world, "start_step": step, "restart": restart,
                            "port": os.environ.get("MASTER_PORT"), "job": os.environ.get("SLURM_JOB_ID"),
                            "threads": torch.get_num_threads()}) + "\n")
    step_s = float(os.environ.get("CMGAN_TOY_STEP_S", "0.1"))
    status = "done"
    loss = torch.zeros(())
    with StopFlag() as stop:
        while step < cfg.train.steps:
            flag = torch.tensor([1.0 if stop.requested else 0.0])
            if world > 1:
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0:
                if rank == 0:
                    _save(ckpt, step, model, opt)
                if world > 1:
                    dist.barrier()
                status = "stopped"
                break
            x, y = _batch(cfg.train.seed, step, rank)
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            if world > 1:
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                    p.grad /= world
            opt.step()
            step += 1
            time.sleep(step_s)
            if rank == 0:
                _write_json(run_dir / "progress.json", {"step": step, "restart": restart})
                if cfg.train.ckpt_every_steps and step % cfg.train.ckpt_every_steps == 0:
                    _save(ckpt, step, model, opt)
        else:
            if rank == 0:
                _save(ckpt, step, model, opt)
        if status == "stopped":
            stop.chain_previous()  # submitit's handler: on rank 0 requeues the job and exits
    if world > 1:
        dist.destroy_process_group()
    return {"status": status, "step": step, "start_step": start, "rank": rank, "world_size": world,
            "weights": [round(float(v), 6) for v in model.weight.detach().flatten()], "loss": float(loss.detach())}
