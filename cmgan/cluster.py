"""Cluster profiles: where and with what resources jobs run (sweeps, colorization), as data (slurm/profiles/).

A profile names the submitit backend (`cluster = "slurm"` for SLURM, `"local"` for subprocesses on this
machine) and, for SLURM, the partition, account, QoS, nodes, tasks and GPUs per node, CPUs, memory, time
limit, the preemption/time-limit signal with its lead time, and setup lines (module loads). A sweep or one of
its runs may override resource fields (`[resources]` in the sweep file), e.g. `tasks_per_node = 2`.

    profile = load_profile("local")                  # slurm/profiles/local.toml
    executor = make_executor(profile, folder)        # a submitit executor, cluster chosen explicitly
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit import JobEnvironment

from cmgan import files
from cmgan.config import ConfigError, from_dict
from cmgan.project import profiles_dir

log = logging.getLogger(__name__)

CLUSTERS = ("slurm", "local")
SIGNALS = ("USR1", "USR2")


@dataclass(frozen=True)
class ClusterProfile:
    """Resources and scheduler settings of one job; every field maps onto an sbatch flag or submitit option."""

    name: str = "unnamed"
    """Shown in logs and the results table."""
    cluster: str = "slurm"
    """slurm (sbatch through submitit) or local (subprocesses on this machine; no SLURM needed)."""
    partition: str = ""
    """SLURM partition (`--partition`); empty: the cluster's default."""
    account: str = ""
    """SLURM account charged (`--account`); empty: the user's default."""
    qos: str = ""
    """SLURM quality of service (`--qos`); empty: none."""
    constraint: str = ""
    """Node feature constraint (`--constraint`, e.g. "a100"); empty: none."""
    nodes: int = 1
    """Nodes per run; ranks = nodes x tasks_per_node."""
    tasks_per_node: int = 1
    """Processes (ranks) per node; one per GPU for multi-GPU training."""
    gpus_per_node: int = 0
    """GPUs per node (`--gpus-per-node`); 0 requests none (CPU clusters, the local test cluster). With
    cluster = "local", 0 means the GPUs this machine has (all those the sweep itself sees)."""
    cpus_per_task: int = 1
    """CPU cores per rank (`--cpus-per-task`); also the rank's torch threads (`cmgan.sweep.job.limit_threads`),
    so runs packed on one node, or the `subprocess` profile's side-by-side runs, do not oversubscribe it."""
    mem_gb: float = 0.0
    """Memory per node in GB (`--mem`); 0: the partition's default."""
    time_min: int = 60
    """Wall-clock limit of one job in minutes; a run longer than this checkpoints and requeues itself."""
    signal: str = "USR2"
    """Signal SLURM sends `signal_delay_s` before the time limit (and at preemption); the run then checkpoints."""
    signal_delay_s: int = 90
    """Lead time of that signal before the limit: must cover finishing a step and writing a checkpoint."""
    max_requeues: int = 10
    """Preemptions/time limits one submission may survive by requeueing itself before it is reported failed."""
    exclusive: bool = False
    """Ask for whole nodes (`--exclusive`)."""
    array_parallelism: int = 64
    """At most this many runs of one job array run at once (`--array=...%N`)."""
    setup: tuple[str, ...] = ()
    """Shell lines run in the batch script before the job starts (e.g. "source ~/venv/bin/activate")."""
    srun_args: tuple[str, ...] = ()
    """Extra flags of the `srun` that starts the job's tasks (e.g. "--kill-on-bad-exit=1": one failed rank ends
    the step at once instead of leaving the others waiting in NCCL until its watchdog fires)."""
    python: str = ""
    """Python interpreter on the compute nodes; empty: the one running the sweep."""
    additional: dict[str, Any] = field(default_factory=dict)
    """Extra sbatch flags verbatim ({"mail-type": "END"}); they override the flags above."""
    poll_s: float = 15.0
    """Seconds between the sweep's status polls (squeue/sacct) while it waits."""

    def __post_init__(self) -> None:
        for key, allowed in (("cluster", CLUSTERS), ("signal", SIGNALS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"profile {self.name}: {key}={getattr(self, key)!r} is not valid; choose one of {list(allowed)}"
                )
        for key in ("nodes", "tasks_per_node", "cpus_per_task", "time_min", "array_parallelism"):
            if getattr(self, key) < 1:
                raise ConfigError(f"profile {self.name}: {key}={getattr(self, key)} must be >= 1")
        for key in ("gpus_per_node", "mem_gb", "signal_delay_s", "max_requeues"):
            if getattr(self, key) < 0:
                raise ConfigError(f"profile {self.name}: {key}={getattr(self, key)} must be >= 0")
        if self.poll_s <= 0:
            raise ConfigError(f"profile {self.name}: poll_s={self.poll_s} must be > 0")
        if self.signal_delay_s >= self.time_min * 60:
            raise ConfigError(
                f"profile {self.name}: signal_delay_s={self.signal_delay_s} must be shorter than the time limit "
                f"({self.time_min} min); lower it or raise time_min"
            )
        if self.gpus_per_node and self.tasks_per_node > self.gpus_per_node:
            raise ConfigError(
                f"profile {self.name}: tasks_per_node={self.tasks_per_node} > gpus_per_node={self.gpus_per_node}: "
                "ranks would share GPUs (NCCL refuses that); use one task per GPU"
            )
        if self.cluster == "local" and self.nodes != 1:
            raise ConfigError(f"profile {self.name}: cluster=local runs on this machine only; set nodes = 1")

    @property
    def num_tasks(self) -> int:
        """Ranks of one run (all nodes)."""
        return self.nodes * self.tasks_per_node

    def with_resources(self, resources: dict[str, Any], where: str = "resources") -> ClusterProfile:
        """A copy with some fields replaced (a sweep's or a run's `resources` table), validated again."""
        names = {f.name for f in dataclasses.fields(self)} - {"name"}
        unknown = set(resources) - names
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(names)}")
        return profile_from_dict({**profile_to_dict(self), **resources})


def profile_from_dict(data: dict[str, Any]) -> ClusterProfile:
    """Build and validate a profile from plain values (TOML); `additional` is a table of sbatch flags."""
    data = dict(data)
    additional = data.pop("additional", {})
    if not isinstance(additional, dict) or not all(
        isinstance(v, (str, int, float, bool)) for v in additional.values()
    ):
        raise ConfigError(f"additional={additional!r} must be a table of sbatch flags to values")
    return dataclasses.replace(from_dict(ClusterProfile, data), additional=dict(additional))


def profile_to_dict(profile: ClusterProfile) -> dict[str, Any]:
    """Plain dict of a profile (tuples as lists), for TOML/JSON."""
    data = dataclasses.asdict(profile)
    data["setup"] = list(profile.setup)
    data["srun_args"] = list(profile.srun_args)
    return data


def load_profile(name_or_path: str | Path) -> ClusterProfile:
    """A profile by name (`<name>.toml` in the project's slurm/profiles/, see `cmgan.project.profiles_dir`) or by
    path to a TOML file; errors name the file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        directory = profiles_dir()
        path = directory / f"{name_or_path}.toml"
    else:
        directory = path.parent
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.toml"))
        raise ConfigError(f"cluster profile {name_or_path!r} not found ({path}); known profiles: {known}")
    data = files.read_toml(path, "cluster profile", ConfigError)
    data.setdefault("name", path.stem)
    try:
        return profile_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"cluster profile {path}: {e}") from None


def slurm_available(timeout_s: float = 10.0) -> bool:
    """True when SLURM's client tools are installed and the controller answers (`sinfo` succeeds)."""
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=timeout_s).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def slurm_cluster_name() -> str:
    """The answering SLURM cluster's `ClusterName` ("" when it cannot be read)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ClusterName":
            return value.strip()
    return ""


def default_profile_name() -> str:
    """The profile named like the SLURM cluster that answers (`slurm/profiles/<ClusterName>.toml`; the local
    test cluster is called `local`), or `subprocess` where no SLURM answers. A SLURM cluster without a profile
    is an error: guessing its partition and account would only fail later, inside sbatch."""
    if not slurm_available():
        return "subprocess"
    name = slurm_cluster_name()
    if name and (profiles_dir() / f"{name}.toml").is_file():
        return name
    raise ConfigError(
        f"SLURM cluster {name or '(unnamed)'!r} has no profile: pass --profile NAME, or copy "
        f"slurm/profiles/example-gpu.toml to slurm/profiles/{name or '<cluster>'}.toml and edit it"
    )


def make_executor(profile: ClusterProfile, folder: str | Path, job_name: str = "cmgan") -> submitit.Executor:
    """A submitit executor for `profile`; the backend is always named explicitly, because AutoExecutor picks
    SLURM whenever `srun` is on PATH, even where no controller runs (docs/cluster.md)."""
    folder = Path(folder)
    if profile.gpus_per_node > profile.tasks_per_node:
        log.warning("profile %s: %d GPUs per node but %d task(s): %d GPU(s) per node stay idle; set tasks_per_node "
                    "= gpus_per_node", profile.name, profile.gpus_per_node, profile.tasks_per_node,
                    profile.gpus_per_node - profile.tasks_per_node)
    if profile.cluster == "local":
        # LocalExecutor directly: AutoExecutor does not pass the signal's lead time through to it.
        local = submitit.LocalExecutor(folder=folder, max_num_timeout=profile.max_requeues)
        setup = list(profile.setup)
        if not profile.gpus_per_node:
            # submitit's local executor sets CUDA_VISIBLE_DEVICES to the GPUs requested, "" for none, which hides
            # every GPU of a workstation from the runs; its setup lines run in the job's shell after that, so
            # this hands on the sweep's own view of the GPUs instead.
            setup.insert(0, inherit_visible_gpus())
        local.update_parameters(
            timeout_min=profile.time_min,
            tasks_per_node=profile.tasks_per_node,
            gpus_per_node=profile.gpus_per_node,
            signal_delay_s=profile.signal_delay_s,
            setup=setup,
        )
        return local
    kwargs: dict[str, Any] = {"slurm_max_num_timeout": profile.max_requeues}
    if profile.python:
        kwargs["slurm_python"] = profile.python
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", **kwargs)
    params: dict[str, Any] = dict(
        name=job_name,
        timeout_min=profile.time_min,
        nodes=profile.nodes,
        tasks_per_node=profile.tasks_per_node,
        cpus_per_task=profile.cpus_per_task,
        slurm_signal_delay_s=profile.signal_delay_s,
        slurm_array_parallelism=profile.array_parallelism,
    )
    # A zero/empty value means "not requested": the local test cluster rejects any --gres, and an empty
    # partition/account must fall back to the cluster's defaults rather than become `--partition=`.
    if profile.gpus_per_node:
        params["gpus_per_node"] = profile.gpus_per_node
    if profile.mem_gb:
        params["mem_gb"] = profile.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(profile, key):
            params[f"slurm_{key}"] = getattr(profile, key)
    if profile.exclusive:
        params["slurm_exclusive"] = True
    setup = list(profile.setup)
    if profile.signal != JobEnvironment.USR_SIG:
        # submitit reads the signal it handles from this variable when the job's Python imports it.
        setup.insert(0, f"export SUBMITIT_PREEMPT_SIGNAL={profile.signal}")
    if setup:
        params["slurm_setup"] = setup
    if profile.srun_args:
        params["slurm_srun_args"] = list(profile.srun_args)
    if profile.additional:
        params["slurm_additional_parameters"] = dict(profile.additional)
    ex.update_parameters(**params)
    return ex


def inherit_visible_gpus() -> str:
    """A shell line that gives a local job the GPUs this process sees (its CUDA_VISIBLE_DEVICES, or all)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return "unset CUDA_VISIBLE_DEVICES"
    return f"export CUDA_VISIBLE_DEVICES={shlex.quote(visible)}"


class preempt_signal:
    """Context: submitit writes `--signal=<profile.signal>@delay` into the sbatch scripts submitted inside it.

    submitit takes the signal name from a class attribute set at import (`SUBMITIT_PREEMPT_SIGNAL`); a profile
    asking for another one swaps it for the duration of the submission only.
    """

    def __init__(self, signal: str) -> None:
        self.signal = signal

    def __enter__(self) -> None:
        self._saved = JobEnvironment.USR_SIG
        JobEnvironment.USR_SIG = self.signal

    def __exit__(self, *exc: object) -> None:
        JobEnvironment.USR_SIG = self._saved
