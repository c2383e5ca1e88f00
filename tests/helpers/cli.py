"""The ``mechmon`` command in a fresh interpreter, with this checkout importable."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def mechmon_command(*args, cwd=None, wait=True):
    """``mechmon ARGS`` in a fresh interpreter (from ``cwd``, with this checkout importable); ``wait=False``: Popen."""
    code = "import sys; from mechmon.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = [sys.executable, "-c", code, *args]
    if not wait:
        return subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd, env=env)
    return subprocess.run(run, capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
