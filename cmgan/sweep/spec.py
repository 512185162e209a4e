"""Sweep descriptions (TOML): a base run config plus a list and/or a grid of overrides, as named runs.

    name = "ablation-fusion"                # the sweep's name (default: the file's stem)
    base = "../base.toml"                   # run config every run starts from (relative to this file)
    overrides = ["train.steps=20000"]       # dotted overrides applied to every run
    # sweep_dir = "runs/sweeps/ablation-fusion"   # state, logs and run directories (default shown)
    # entry = "cmgan.train.trainer:train"   # the function each job calls with the run's RunConfig
    # max_attempts = 3                      # submissions per run before it stays failed
    # profile = "gpu"                       # cluster profile when --profile is not given
    # seeds = [0, 1, 2]                     # repeat every run once per seed (`<run>-s<seed>`, train.seed set)
    # reference = "sigmoid"                 # the run the others are compared with (default: the first)
    [resources]                             # overrides of the cluster profile for every run
    tasks_per_node = 1

    [[runs]]                                # explicit runs ...
    name = "sigmoid"
    overrides = ["model.fusion=sigmoid"]
    # resources = { tasks_per_node = 2 }    # ... each may override resources

    [grid]                                  # ... and/or the cross product of value lists
    "loss.edge" = [0.0, 10.0]

With both `runs` and `grid`, every run is crossed with every grid point (`<run>_<grid point>`); with neither,
the sweep is the single run `base`. A run whose config is invalid is kept, with its error, so the sweep can
report it as failed while the others go on.

Seeds: with `seeds` (or `--seeds` on the command line, which wins) each of those runs is a *configuration*
repeated once per seed, as its own job named `<config>-s<seed>` (own run directory, own state, `train.seed`
set last among its overrides); the results table gives mean, std and n per configuration and its difference
from the `reference` configuration paired by seed. Without seeds a run is its own configuration with the
config's `train.seed`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmgan import files
from cmgan.config import ConfigError, RunConfig, load_config

DEFAULT_ENTRY = "cmgan.train.trainer:train"
_KEYS = {"name", "base", "overrides", "sweep_dir", "entry", "max_attempts", "profile", "resources", "runs", "grid",
         "seeds", "reference"}
_RUN_KEYS = {"name", "overrides", "resources"}
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its name, overrides, resource overrides and resolved config (or the config error)."""

    name: str
    overrides: tuple[str, ...]
    """All dotted overrides applied to the base config (sweep-wide first, then the run's own, then run_dir)."""
    resources: dict[str, Any]
    """Cluster-profile fields this run overrides (sweep-wide `[resources]` merged with the run's)."""
    run_dir: Path
    """The run's directory (`<sweep_dir>/runs/<name>`), set as `train.run_dir`: checkpoints, logs, metrics."""
    cfg: RunConfig | None
    """The validated run config; None when `error` says why it is invalid."""
    error: str | None = None
    variant: tuple[str, ...] = ()
    """The run's own overrides (its `runs` entry and grid point), without the sweep-wide ones."""
    config: str = ""
    """The configuration this run repeats (its name without the seed suffix); the run's name without seeds."""
    seed: int | None = None
    """The seed of this repetition (set as `train.seed`); None when the sweep has no seeds."""


@dataclass(frozen=True)
class Sweep:
    """A loaded sweep: where its state lives and its runs in file order."""

    name: str
    path: Path | None
    """The sweep file (None for sweeps built in code)."""
    sweep_dir: Path
    entry: str
    max_attempts: int
    profile: str | None
    runs: tuple[RunSpec, ...] = field(default_factory=tuple)
    seeds: tuple[int, ...] = ()
    """The seeds every configuration is repeated with (empty: one run per configuration, no seed suffix)."""
    reference: str = ""
    """The configuration the others are compared with (default: the first)."""

    @property
    def configs(self) -> tuple[str, ...]:
        """The configurations in file order."""
        return tuple(dict.fromkeys(r.config for r in self.runs))

    def run(self, name: str) -> RunSpec:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(f"sweep {self.name} has no run {name!r}; runs: {[r.name for r in self.runs]}")


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _toml_literal(value: Any) -> str:
    """A grid value as an override's right-hand side (TOML literal), so `model.fusion=concat` stays a string."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    raise ConfigError(f"grid value {value!r} must be a string, number, boolean or list")


def grid_points(grid: dict[str, list[Any]]) -> list[tuple[str, list[str]]]:
    """Cross product of a grid -> [(point name, overrides)]; names use the last key part (`edge-10_cycle-5`)
    unless two keys share it, then the full dotted key."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} must be a non-empty list of values, got {values!r}")
    keys = list(grid)
    short = [k.rsplit(".", 1)[-1] for k in keys]
    labels = short if len(set(short)) == len(short) else keys
    points = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        name = "_".join(f"{label}-{_fmt(v)}" for label, v in zip(labels, combo))
        points.append((name, [f"{k}={_toml_literal(v)}" for k, v in zip(keys, combo)]))
    return points


def _check_name(name: str, where: str) -> str:
    if not isinstance(name, str) or not _NAME_OK.match(name):
        raise ConfigError(
            f"{where}: run name {name!r} must start with a letter or digit and use only letters, digits and ._=+-"
        )
    return name


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings like \"loss.cycle=5\", got {value!r}")
    return list(value)


def parse_seeds(value: Any, where: str = "seeds") -> tuple[int, ...]:
    """`[0, 1, 2]` -> (0, 1, 2); a count N (int, or a string of digits as `--seeds 3` gives) -> 0 .. N-1; a
    string "0,3,7" -> (0, 3, 7). Seeds are distinct integers >= 0."""
    if isinstance(value, str):
        text = value.strip()
        value = int(text) if text.isdigit() else [int(v) for v in text.replace(",", " ").split()] if text else []
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"{where}={value} must be a count >= 1 or a list of seeds")
        return tuple(range(value))
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise ConfigError(f"{where}={value!r} must be a non-empty list of integers >= 0 (or a count)")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}={list(value)} repeats a seed")
    return tuple(value)


def load_sweep(
    path: str | Path, sweep_dir: str | Path | None = None, seeds: Any = None
) -> Sweep:
    """Read a sweep file and resolve every run's config; errors in the file itself raise `ConfigError` naming
    it, errors of one run's config are kept in that run (`RunSpec.error`). `seeds` (see `parse_seeds`)
    replaces the file's `seeds`."""
    path = Path(path)
    data = files.read_toml(path, what="sweep file", error=ConfigError)
    try:
        return build_sweep(data, base_dir=path.parent, default_name=path.stem, path=path, sweep_dir=sweep_dir,
                           seeds=seeds)
    except ConfigError as e:
        raise ConfigError(f"sweep file {path}: {e}") from None


def build_sweep(
    data: dict[str, Any],
    base_dir: str | Path = ".",
    default_name: str = "sweep",
    path: Path | None = None,
    sweep_dir: str | Path | None = None,
    seeds: Any = None,
) -> Sweep:
    """A `Sweep` from the parsed TOML table `data`; relative `base` resolves against `base_dir`, relative
    `sweep_dir` against the current directory; `seeds` (see `parse_seeds`) replaces `data["seeds"]`."""
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)}; valid keys: {sorted(_KEYS)}")
    name = _check_name(data.get("name", default_name), "name")
    base = data.get("base")
    base_path = (Path(base_dir) / base) if base else None
    if base_path is not None and not base_path.is_file():
        raise ConfigError(f"base config {base_path} does not exist")
    common = _str_list(data.get("overrides", []), "overrides")
    common_res = data.get("resources", {})
    if not isinstance(common_res, dict):
        raise ConfigError(f"resources must be a table, got {common_res!r}")
    max_attempts = data.get("max_attempts", 3)
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
        raise ConfigError(f"max_attempts={max_attempts!r} must be an integer >= 1")
    entry = data.get("entry", DEFAULT_ENTRY)
    if not isinstance(entry, str) or ":" not in entry:
        raise ConfigError(f"entry={entry!r} must look like 'package.module:function'")
    root = Path(sweep_dir or data.get("sweep_dir") or Path("runs") / "sweeps" / name).absolute()

    explicit = data.get("runs", [])
    if not isinstance(explicit, list):
        raise ConfigError("runs must be an array of tables ([[runs]])")
    variants: list[tuple[str, list[str], dict[str, Any]]] = []
    for i, run in enumerate(explicit):
        if not isinstance(run, dict) or "name" not in run:
            raise ConfigError(f"runs[{i}] must be a table with a name")
        extra = set(run) - _RUN_KEYS
        if extra:
            raise ConfigError(f"runs[{i}] ({run['name']}): unknown key(s) {sorted(extra)}; valid: {sorted(_RUN_KEYS)}")
        res = run.get("resources", {})
        if not isinstance(res, dict):
            raise ConfigError(f"runs[{i}].resources must be a table")
        rname = _check_name(run["name"], f"runs[{i}]")
        variants.append((rname, _str_list(run.get("overrides", []), f"runs[{i}].overrides"), res))
    grid = data.get("grid")
    if grid is not None:
        if not isinstance(grid, dict):
            raise ConfigError("grid must be a table of dotted keys to lists of values")
        points = grid_points(grid)
        if variants:
            variants = [(f"{n}_{p}", o + po, r) for n, o, r in variants for p, po in points]
        else:
            variants = [(p, po, {}) for p, po in points]
    if not variants:
        variants = [("base", [], {})]
    names = [v[0] for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"run names must be unique; repeated: {dupes}")
    seed_list: tuple[int, ...] = ()
    if seeds is not None:
        seed_list = parse_seeds(seeds, "--seeds")
    elif data.get("seeds") is not None:
        seed_list = parse_seeds(data["seeds"])
    reference = data.get("reference", names[0])
    if reference not in names:
        raise ConfigError(f"reference={reference!r} is not one of the sweep's runs {names}")

    runs = []
    # Seed-major order: every configuration's first seed is submitted before any second one, so a sweep cut
    # short still compares all configurations.
    for seed, (cname, overrides, res) in itertools.product(seed_list or (None,), variants):
        rname = cname if seed is None else f"{cname}-s{seed}"
        own = overrides if seed is None else [*overrides, f"train.seed={seed}"]
        run_dir = root / "runs" / rname
        all_overrides = tuple(common + own + [f'train.run_dir="{run_dir}"'])
        cfg, error = None, None
        try:
            cfg = load_config(base_path, list(all_overrides))
        except ConfigError as e:
            error = f"invalid config: {e}"
        runs.append(RunSpec(rname, all_overrides, {**common_res, **res}, run_dir, cfg, error, tuple(own),
                            cname, seed))
    profile = data.get("profile")
    return Sweep(name, path, root, entry, max_attempts, profile, tuple(runs), seed_list, reference)
