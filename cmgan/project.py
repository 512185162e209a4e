"""Where a project's data files are found: its configs (`configs/`) and cluster profiles (`slurm/profiles/`).

cmgan installed as a package holds code only; the TOML files belong to the user's project. A directory is taken
from, in this order:

1. the environment variable (`CMGAN_CONFIGS`, `CMGAN_PROFILES`), which must name an existing directory;
2. the directory below the working directory (`./configs`, `./slurm/profiles`): running from a project's root;
3. the directory of the source checkout cmgan was imported from, when there is one (running from a clone
   anywhere).

Files named by path on a command line (`--config`, a sweep file, `--profile path.toml`) are read as given.
"""

from __future__ import annotations

import os
from pathlib import Path

from cmgan.config import ConfigError

CONFIGS_ENV = "CMGAN_CONFIGS"
PROFILES_ENV = "CMGAN_PROFILES"
CONFIGS = Path("configs")
PROFILES = Path("slurm") / "profiles"

_CHECKOUT = Path(__file__).resolve().parents[1]  # the clone's root when cmgan is not an installed package


def _find(env: str, relative: Path) -> Path:
    value = os.environ.get(env, "").strip()
    if value:
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{env}={value!r} is not a directory")
        return path
    for root in (Path.cwd(), _CHECKOUT):
        if (root / relative).is_dir():
            return root / relative
    raise ConfigError(f"no {relative}/ below the working directory {Path.cwd()}: run from your project's root, or "
                      f"set {env} to the directory")


def configs_dir() -> Path:
    """The project's `configs/` directory (see the module docstring); ConfigError when none is found."""
    return _find(CONFIGS_ENV, CONFIGS)


def profiles_dir() -> Path:
    """The project's cluster-profile directory `slurm/profiles/`; ConfigError when none is found."""
    return _find(PROFILES_ENV, PROFILES)
