"""Real multi-process training on the CPU (gloo): torchrun, two simulated nodes, srun-style SLURM tasks, DeepSpeed."""

import json
import subprocess
import sys

import pytest

from cmgan import checkpoint

from .conftest import TRAIN_SCRIPT, free_port, subprocess_env, tiny_overrides, torchrun

pytestmark = pytest.mark.slow


def run(cmds: list[list[str]], env: dict, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Start all commands together (the ranks of one job) and wait for all of them."""
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def summaries(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"status"')]


def assert_replicas_identical(run_dir, step):
    meta = checkpoint.read_meta(run_dir / "checkpoints" / checkpoint.step_name(step))
    assert meta["world_size"] == 2 and len(meta["digests"]) == 2
    assert meta["digests"][0] == meta["digests"][1] and meta["replicas_identical"]


def test_two_ranks_keep_identical_parameters_and_reduce_the_loss_on_demo_data(demo_shards, tmp_path):
    steps = 16
    overrides = tiny_overrides(demo_shards, tmp_path, "model.fusion=none", f"train.steps={steps}",
                               "train.ckpt_every_steps=8", "optim.schedule=constant")
    [res] = run([torchrun("--nproc_per_node", "2", "--master_port", str(free_port()), str(TRAIN_SCRIPT), *overrides)],
                subprocess_env(ACCELERATE_USE_CPU="true"))
    assert res.returncode == 0, res.stderr[-4000:]
    assert [s["world_size"] for s in summaries(res)] == [2, 2]
    assert_replicas_identical(tmp_path, 8)
    assert_replicas_identical(tmp_path, steps)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    recon = [r["cycle_x"] + r["cycle_y"] + r["gray_g"] + r["gray_f"] for r in lines]
    assert sum(recon[-5:]) / 5 < 0.85 * sum(recon[:5]) / 5, recon


def test_two_nodes_meeting_by_rendezvous_on_loopback_train_as_one_job_with_accumulation(demo_shards, tmp_path):
    overrides = tiny_overrides(demo_shards, tmp_path, "model.fusion=none", "train.steps=3", "train.grad_accum=2",
                               "train.ckpt_every_steps=0", "train.expect_world_size=2")
    port = str(free_port())
    node = ["--nnodes", "2", "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port]
    results = run([torchrun(*node, "--node_rank", str(r), str(TRAIN_SCRIPT), *overrides) for r in (0, 1)],
                  subprocess_env())
    for res in results:
        assert res.returncode == 0, res.stderr[-4000:]
    assert [s["world_size"] for res in results for s in summaries(res)] == [2, 2]
    assert_replicas_identical(tmp_path, 3)


def slurm_job_id_with_a_free_port() -> str:
    """A job id whose derived master port (20000 + id % 20000) is free on this machine."""
    import random
    import socket

    for _ in range(100):
        job = random.randrange(1, 20000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", 20000 + job))
            except OSError:
                continue
        return str(job)
    raise RuntimeError("no free port in 20000-39999")


def test_srun_style_tasks_find_each_other_from_slurm_variables_alone(demo_shards, tmp_path):
    """Two plain processes with the variables `srun --ntasks 2` sets (no torchrun, no accelerate launch)."""
    overrides = tiny_overrides(demo_shards, tmp_path, "model.fusion=none", "train.steps=2", "train.ckpt_every_steps=0")
    slurm = {"SLURM_JOB_ID": slurm_job_id_with_a_free_port(), "SLURM_STEP_NUM_TASKS": "2",
             "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_NODEID": "0"}
    cmd = [sys.executable, str(TRAIN_SCRIPT), *overrides]
    procs = [subprocess.Popen(cmd, env=subprocess_env(**slurm, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-4000:]
        assert json.loads(stdout.splitlines()[-1])["world_size"] == 2
    assert "2 process(es) via slurm" in outs[0][1]
    assert_replicas_identical(tmp_path, 2)


def test_deepspeed_zero2_trains_and_resumes_from_its_own_checkpoint(demo_shards, tmp_path):
    overrides = tiny_overrides(demo_shards, tmp_path, "model.fusion=none", "train.steps=4", "train.backend=deepspeed",
                               "train.zero_stage=2", "train.ckpt_every_steps=2")
    cmd = torchrun("--nproc_per_node", "2", "--master_port", str(free_port()), str(TRAIN_SCRIPT), *overrides)
    [stopped] = run([cmd], subprocess_env(CMGAN_TEST_SIGNAL_AT_STEP="3"))
    assert stopped.returncode != 0 and "exitcode  : 75" in stopped.stderr  # the ranks' "stopped, resumable"
    assert [s["status"] for s in summaries(stopped)] == ["stopped", "stopped"]
    ckpt = checkpoint.latest(tmp_path / "checkpoints")
    assert ckpt.name == "step_00000003"
    assert (ckpt / "ds_generators" / "engine").is_dir() and (ckpt / "ds_discriminators" / "engine").is_dir()
    assert_replicas_identical(tmp_path, 3)
    cmd = torchrun("--nproc_per_node", "2", "--master_port", str(free_port()), str(TRAIN_SCRIPT), *overrides)
    [resumed] = run([cmd], subprocess_env())
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert [(s["start_step"], s["steps"], s["status"]) for s in summaries(resumed)] == [(3, 4, "completed")] * 2
    assert_replicas_identical(tmp_path, 4)


def test_compiled_networks_train_under_ddp_like_eager_ones_and_compile_only_in_the_first_step(demo_shards, tmp_path):
    """train.compile under DDP with two ranks (the aot_eager backend: dynamo's tracing, DDP's graph splitting and
    AOTAutograd, without inductor's minutes of code generation): the same losses as eager, identical replicas,
    and every (re)compilation inside step 1, none afterwards."""
    losses = {}
    for mode, extra in (("eager", ()), ("compiled", ("train.compile=true", "train.compile_backend=aot_eager"))):
        run_dir = tmp_path / mode
        overrides = tiny_overrides(demo_shards, run_dir, "model.fusion=none", "train.steps=3",
                                   "train.ckpt_every_steps=3", "optim.schedule=constant", *extra)
        cmd = torchrun("--nproc_per_node", "2", "--master_port", str(free_port()), str(TRAIN_SCRIPT), *overrides)
        [res] = run([cmd], subprocess_env(ACCELERATE_USE_CPU="true", TORCH_LOGS="recompiles"))
        assert res.returncode == 0, res.stderr[-4000:]
        assert_replicas_identical(run_dir, 3)
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[mode] = [(r["loss_g"], r["loss_d"]) for r in lines]
        if mode == "compiled":
            log = res.stderr.splitlines()
            recompiles = [i for i, line in enumerate(log) if "[rank0]" in line and "Recompiling function" in line]
            first_step = next(i for i, line in enumerate(log) if "step 1/3" in line)
            # G and F share Generator.forward, Dx and Dy (trainable, frozen) Discriminator.forward: their
            # signatures are compiled as they first appear, all in step 1.
            assert any("generator.py" in log[i] for i in recompiles) and any("discriminator.py" in log[i]
                                                                             for i in recompiles), log[-40:]
            assert max(recompiles) < first_step, [log[i] for i in recompiles if i > first_step]
    assert len(losses["compiled"]) == 3
    for (g_e, d_e), (g_c, d_c) in zip(losses["eager"], losses["compiled"]):
        assert abs(g_c - g_e) <= 1e-5 * abs(g_e) and abs(d_c - d_e) <= 1e-5 * abs(d_e), losses
