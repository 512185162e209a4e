"""Colorize MRI volumes with a generator export: `python launch/colorize.py --checkpoint RUN INPUT... --out DIR`.

See `python launch/colorize.py --help`; the work is `cmgan.colorize.run_colorize` (or, with --profile, a job array).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cmgan.colorize.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
