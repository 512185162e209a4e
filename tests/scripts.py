"""Load a repository script (bench/*.py, launch/*.py) as a module, so that a test calls its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: Path, name: str) -> ModuleType:
    """Execute `path` as the module `name` (registered in sys.modules: dataclasses look their module up while a
    class is created, and a spawned process unpickles functions by module name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
