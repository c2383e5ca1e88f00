"""Every benchmark script imports and parses its arguments (``--help``): a refactor that breaks one fails here.

The benchmarks print figures and are run by hand; this only keeps them runnable. One subprocess for all of them.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if "def main" in p.read_text())

RUN_ALL = """
import contextlib, io, runpy, sys
sys.path.insert(0, {bench!r})
for path in {paths!r}:
    sys.argv = [path, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as done:
        assert done.code in (0, None), (path, done.code)
    assert "usage:" in out.getvalue(), path
    print("ok", path)
"""


def test_every_benchmark_shows_its_help():
    assert len(SCRIPTS) >= 13
    code = RUN_ALL.format(bench=str(ROOT / "benchmarks"), paths=[str(p) for p in SCRIPTS])
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("ok ") == len(SCRIPTS), done.stdout
