"""Fault campaign: real training processes stopped at random steps by random signals, resumed in new processes,
compared with an uninterrupted run.

    python bench/faults.py                 # 20 trials (1 and 2 ranks alternating) + 2 trials in reseed mode
    python bench/faults.py --trials 4 --reseed-trials 0 --steps 6

Each trial trains the same tiny CycleGAN (demo shards, 32x32, width 8, fusion off) with `launch/train.py`, one
rank or two (`ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2`, gloo), in a fresh run directory. It is
interrupted 2 or 3 times; each interruption picks at random:
- the signal: SIGTERM, SIGUSR1, SIGUSR2 (sent to every rank, as SLURM does; the ranks agree at a step
  boundary, save and exit 75) or SIGKILL (the whole process tree, as a node failure: no save);
- the moment: when the run has logged a random step (metrics.jsonl), or in the middle of a checkpoint write
  (the run starts with `CMGAN_CKPT_PAUSE_S`, the test hook that sleeps after each checkpoint file; the signal
  lands once the step's temporary checkpoint folder exists).
Then the same command starts again as a new process, resuming from the newest complete checkpoint, until the
run completes. Its final checkpoint (all parameters, Adam moments and step counts, scheduler, per-rank image
pools, RNG, data position) is compared with the uninterrupted run of the same world size, run once at the start
with the same command and environment.

Deterministic trials (`train.deterministic=true`, `data.resume=exact`, one thread per rank, same world size) must
be bit-exact; reseed trials (`data.resume=reseed`: a restart draws a new data order) are not expected to be, and
the campaign reports how far they end up.

Prints ONE JSON line: trials, bit_exact (of the deterministic trials), largest difference (max |a - b| over
every tensor of the state, deterministic trials; and reseed trials apart), wall seconds, and per-trial details
(world size, interruptions with signal / moment / step reached / exit status, result).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "launch" / "train.py"
DEMO = Path(os.environ.get("CMGAN_DEMO_DIR", REPO / "demo"))

SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGKILL")
TIMEOUT_S = float(os.environ.get("CMGAN_FAULTS_TIMEOUT_S", 900))  # per process; a busy 2-core host is slow


@dataclass(frozen=True)
class Setup:
    """What every run of the campaign shares."""

    mr_shards: Path
    color_shards: Path
    steps: int = 8
    ckpt_every: int = 2
    image_size: int = 32
    width: int = 8
    ckpt_pause_s: float = 0.4  # per checkpoint file, for the "during a checkpoint write" interruptions
    extra: tuple[str, ...] = field(default_factory=tuple)

    def overrides(self, run_dir: Path, exact: bool) -> list[str]:
        return [
            f"model.image_size={self.image_size}", f"model.width={self.width}", "model.depth=2",
            f"model.disc_width={self.width}", "model.fusion=none", "data.batch_size=2", "data.num_workers=1",
            "data.shuffle_buffer=8", f"data.mr_shards='{self.mr_shards}'", f"data.color_shards='{self.color_shards}'",
            f"train.run_dir='{run_dir}'", f"train.steps={self.steps}", f"train.ckpt_every_steps={self.ckpt_every}",
            "train.ckpt_every_minutes=0", "train.keep_last=100", "train.log_every=1", "train.sample_every=0",
            "train.deterministic=true", f"data.resume={'exact' if exact else 'reseed'}", *self.extra,
        ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(world_size: int, overrides: list[str]) -> list[str]:
    if world_size == 1:
        return [sys.executable, str(TRAIN_SCRIPT), *overrides]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world_size),
            "--master_port", str(free_port()), str(TRAIN_SCRIPT), *overrides]


def environment(**extra: str) -> dict[str, str]:
    """One thread per rank (bit-exactness needs identical thread counts), no inherited rank/SLURM variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "CMGAN_TEST",
                                "CMGAN_CKPT"))}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "ACCELERATE_USE_CPU": "true", "PYTHONPATH": os.pathsep.join(
                    p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)})
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------- processes


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc; Linux)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def rank_processes(proc: subprocess.Popen, world_size: int) -> list[int]:
    """The training processes (ranks): the process itself, or torchrun's worker children."""
    if world_size == 1:
        return [proc.pid]
    return _children(proc.pid)


def metrics_lines(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def latest_logged_step(run_dir: Path, skip_lines: int = 0) -> int:
    """The last step in metrics.jsonl among the lines after the first `skip_lines` (those of earlier processes:
    the file is appended to across restarts); 0 when none."""
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()[skip_lines:]
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue  # a line being written
    return 0


def latest_checkpoint_step(run_dir: Path) -> int:
    from cmgan import checkpoint

    path = checkpoint.latest(run_dir / "checkpoints")
    return int(path.name.split("_")[1]) if path is not None else 0


def _writing_checkpoint(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(p.name.startswith(".tmp-") and any(p.iterdir()) for p in ckpts.iterdir())


def interrupt(setup: Setup, run_dir: Path, world_size: int, exact: bool, sig: str, moment: str,
              at_step: int) -> dict[str, Any]:
    """Start the run, wait for the moment, send the signal, wait for the end. Returns what happened."""
    extra = {"CMGAN_CKPT_PAUSE_S": str(setup.ckpt_pause_s)} if moment == "checkpoint_write" else {}
    start = latest_checkpoint_step(run_dir)
    seen = metrics_lines(run_dir)  # only steps logged by this process count
    log_path = run_dir.parent / f"{run_dir.name}.log"
    with open(log_path, "a") as log:  # a file, not a pipe: an unread pipe would block a chatty run
        proc = subprocess.Popen(command(world_size, setup.overrides(run_dir, exact)), env=environment(**extra),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    deadline = time.monotonic() + TIMEOUT_S
    sent_at = None
    while proc.poll() is None and time.monotonic() < deadline:
        # A logged step of this process first: its stop handlers are installed and a stale temporary checkpoint
        # of a killed predecessor has been cleaned up.
        logged = latest_logged_step(run_dir, seen)
        ready = logged > 0 and (_writing_checkpoint(run_dir) if moment == "checkpoint_write" else logged >= at_step)
        ranks = rank_processes(proc, world_size)
        if ready and len(ranks) == world_size:
            sent_at = latest_logged_step(run_dir, seen)
            if sig == "SIGKILL":
                kill_tree(proc)  # a node failure: torchrun, ranks and loader workers die at once
            else:
                for pid in ranks:  # every rank, as SLURM signals every task of a job
                    os.kill(pid, getattr(signal, sig))
            break
        time.sleep(0.02)
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        proc.wait()
        raise RuntimeError(f"run in {run_dir} did not end within {TIMEOUT_S:.0f} s (log: {log_path})") from None
    stderr = log_path.read_text(errors="replace")
    return {"signal": sig, "moment": moment, "target_step": at_step, "started_from": start,
            "signalled_at_step": sent_at, "exit": proc.returncode, "checkpoint_after": latest_checkpoint_step(run_dir),
            "stderr_tail": stderr[-2000:] if proc.returncode not in (0, 75, -9) and world_size == 1 else ""}


def kill_tree(proc: subprocess.Popen) -> None:
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_to_end(setup: Setup, run_dir: Path, world_size: int, exact: bool) -> None:
    proc = subprocess.Popen(command(world_size, setup.overrides(run_dir, exact)), env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=REPO)
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(proc)  # torchrun's ranks too: no orphan keeps running
        proc.communicate()
        raise RuntimeError(f"run in {run_dir} did not end within {TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"run in {run_dir} failed (exit {proc.returncode}):\n{stderr[-4000:]}")


# ---------------------------------------------------------------------------------------------- comparison


def final_state(run_dir: Path, world_size: int, steps: int) -> dict[str, Any]:
    """{"replicated": state.pt, "ranks": [rank_k.pt ...]} of the run's checkpoint at `steps`."""
    from cmgan import checkpoint

    path = run_dir / "checkpoints" / checkpoint.step_name(steps)
    replicated, _ = checkpoint.load(path, 0)
    ranks = [checkpoint.load(path, r)[1] for r in range(world_size)]
    return {"replicated": replicated, "ranks": ranks}


def _tensors(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts/lists to {path: tensor or plain value}."""
    import torch

    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}[{i}]"))
    elif isinstance(obj, torch.Tensor):
        out[prefix] = obj
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Compare the trained state of two runs: parameters and buffers of every network, optimizer states
    (Adam moments and step counts), for both groups; per-rank image pools. Returns {"bit_exact", "max_abs_diff",
    "tensors", "differing" (up to 5 names)}. RNG and data-position states are not compared (a reseeded run
    differs there by design); the replica parameters are."""
    import torch

    def trained(s: dict[str, Any]) -> dict[str, Any]:
        r = s["replicated"]
        picked = {g: {"nets": r[g]["nets"], "optimizer": r[g]["optimizer"].get("state", {})}
                  for g in ("generators", "discriminators")}
        picked["pools"] = [rank["pools"] for rank in s["ranks"]]
        return _tensors(picked)

    ta, tb = trained(a), trained(b)
    if set(ta) != set(tb):
        missing = sorted(set(ta) ^ set(tb))[:5]
        return {"bit_exact": False, "max_abs_diff": float("inf"), "tensors": len(ta), "differing": missing}
    worst, differing = 0.0, []
    for name in sorted(ta):
        x, y = ta[name], tb[name]
        if x.shape != y.shape:
            worst, differing = float("inf"), differing + [name]
            continue
        if not torch.equal(x, y):
            differing.append(name)
            d = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
            worst = max(worst, d)
    return {"bit_exact": not differing, "max_abs_diff": worst, "tensors": len(ta), "differing": differing[:5]}


# ---------------------------------------------------------------------------------------------- campaign


def run_trial(setup: Setup, run_dir: Path, world_size: int, exact: bool, rng: random.Random,
              reference: dict[str, Any], interruptions: int, force_signals: tuple[str, ...] = ()) -> dict[str, Any]:
    """One trial: `interruptions` random stops (signals from `force_signals` first, then random), each in a
    fresh process, then a final process that completes the run; compared with `reference`."""
    events = []
    for i in range(interruptions):
        sig = force_signals[i] if i < len(force_signals) else rng.choice(SIGNALS)
        moment = "checkpoint_write" if rng.random() < 0.3 else "step"
        done = latest_checkpoint_step(run_dir)
        at_step = rng.randint(done + 1, max(done + 1, setup.steps - 2))
        events.append(interrupt(setup, run_dir, world_size, exact, sig, moment, at_step))
        if events[-1]["exit"] == 0:
            break  # it completed before the signal landed; nothing left to interrupt
    run_to_end(setup, run_dir, world_size, exact)
    result = compare(final_state(run_dir, world_size, setup.steps), reference)
    return {"world_size": world_size, "mode": "exact" if exact else "reseed", "interruptions": events, **result}


def campaign(setup: Setup, work: Path, trials: int, reseed_trials: int = 0, seed: int = 0,
             world_sizes: tuple[int, ...] = (1, 2), force_first: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the uninterrupted references, then `trials` deterministic and `reseed_trials` reseed trials; returns
    the summary dict (the JSON line of `main`). World sizes alternate; `force_first` fixes the signals of the
    first trial's interruptions (tests use it to make sure SIGKILL is among them)."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    plan = [(world_sizes[i % len(world_sizes)], True) for i in range(trials)]
    plan += [(world_sizes[i % len(world_sizes)], False) for i in range(reseed_trials)]
    references = {}
    for ws in sorted({ws for ws, _ in plan}):
        ref_dir = work / f"reference_{ws}ranks"
        run_to_end(setup, ref_dir, ws, True)
        references[ws] = final_state(ref_dir, ws, setup.steps)
    details = []
    for i, (ws, exact) in enumerate(plan):
        trial = run_trial(setup, work / f"trial_{i:03d}", ws, exact, rng, references[ws], rng.randint(2, 3),
                          force_first if i == 0 else ())
        details.append({"trial": i, **trial})
    exact_trials = [d for d in details if d["mode"] == "exact"]
    reseed = [d for d in details if d["mode"] == "reseed"]
    interrupts = [e for d in details for e in d["interruptions"]]
    return {
        "bench": "faults",
        "trials": len(exact_trials),
        "bit_exact": sum(d["bit_exact"] for d in exact_trials),
        "max_abs_diff": max((d["max_abs_diff"] for d in exact_trials), default=0.0),
        "reseed_trials": len(reseed),
        "reseed_max_abs_diff": max((d["max_abs_diff"] for d in reseed), default=None),
        "interruptions": len(interrupts),
        "by_signal": {s: sum(e["signal"] == s for e in interrupts) for s in SIGNALS},
        "during_checkpoint_write": sum(e["moment"] == "checkpoint_write" for e in interrupts),
        "world_sizes": sorted({d["world_size"] for d in details}),
        "steps_per_run": setup.steps,
        "threads_per_rank": 1,
        "wall_s": round(time.perf_counter() - t0, 1),
        "details": details,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20, help="deterministic trials (default 20)")
    p.add_argument("--reseed-trials", type=int, default=2, help="extra trials with data.resume=reseed (default 2)")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run (default 8)")
    p.add_argument("--ckpt-every", type=int, default=2, help="checkpoint every N steps (default 2)")
    p.add_argument("--size", type=int, default=32, help="image side (default 32)")
    p.add_argument("--width", type=int, default=8, help="network width (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the campaign's random choices")
    p.add_argument("--world-sizes", default="1,2", help="ranks per trial, alternating (default 1,2)")
    p.add_argument("--mr-shards", type=Path, default=DEMO / "shards" / "mr")
    p.add_argument("--color-shards", type=Path, default=DEMO / "shards" / "color")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    for d in (args.mr_shards, args.color_shards):
        if not (d / "manifest.json").is_file():
            print(f"error: {d}: no shard set (build the demo data: python -m shards demo --out demo)", file=sys.stderr)
            return 2
    setup = Setup(args.mr_shards.resolve(), args.color_shards.resolve(), args.steps, args.ckpt_every, args.size,
                  args.width)
    world_sizes = tuple(int(w) for w in args.world_sizes.split(","))
    if args.work is not None:
        result = campaign(setup, args.work, args.trials, args.reseed_trials, args.seed, world_sizes)
    else:
        with tempfile.TemporaryDirectory(prefix="cmgan-faults-") as tmp:
            result = campaign(setup, Path(tmp), args.trials, args.reseed_trials, args.seed, world_sizes)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["bit_exact"] == result["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
